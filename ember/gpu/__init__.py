"""Tensors on accelerators: communicators, CUDA IPC, streams and device discovery.

The package exports what a user names: ``TorchTensorType`` (a node's tensor hint),
``Communicator`` (the base of a custom communicator for ``with_tensor_transport``) and
``list_gpus`` / ``GpuInfo``; the rest is the engine's, in the modules. Importing this package
imports none of its modules (so not torch either): each name loads its module on first use
(Note [lazy exports] in ember/lazy_exports.py).
"""

from __future__ import annotations

from ember.lazy_exports import lazy_exports

_EXPORTS = {name: f"ember.gpu.{module}" for module, names in {
    "devices": ["GpuInfo", "list_gpus"],
    "tensors": ["TorchTensorType"],
    "communicator": ["Communicator"],
}.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
