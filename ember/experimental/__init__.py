"""Experimental APIs, named as Ray names them: ``ember.experimental.collective``.

Importing this package (``import ember`` does) registers the GPU-object transport as a provider of
tensor transports (Note [value transports]); torch is imported only when a transport is used.
"""

from __future__ import annotations

from typing import Any

from ember.dynamic.core import value_transport


def _load_gpu_objects() -> None:
    """Import the module that registers the "gloo", "nccl", "ipc" and "auto" transports."""
    import ember.gpu.objects  # noqa: F401 - registers itself


value_transport.add_provider(_load_gpu_objects)


def wait_tensor_freed(tensor: Any, timeout: float | None = None) -> None:
    """In an actor: block until every ref to a GPU object holding ``tensor`` is gone, so that
    changing it in place cannot change what a consumer receives (Ray's API)."""
    from ember.gpu.objects import objects
    objects.wait_freed(tensor, timeout)
