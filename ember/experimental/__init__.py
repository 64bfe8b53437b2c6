"""Experimental APIs, named as Ray names them: ``ember.experimental.collective``.

Importing this package (``import ember`` does) registers the GPU-object transport as a provider of
tensor transports (Note [value transports]); torch is imported only when a transport is used.
"""

from __future__ import annotations

from ember.dynamic import value_transport


def _load_gpu_objects() -> None:
    """Import the module that registers the "gloo", "nccl", "ipc" and "auto" transports."""
    import ember.gpu.objects  # noqa: F401 - registers itself


value_transport.add_provider(_load_gpu_objects)
