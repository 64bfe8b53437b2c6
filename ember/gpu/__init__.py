"""Tensors on accelerators: communicators, CUDA IPC, streams, device discovery and schedule checks.

Importing this package imports none of its modules (so not torch either): each name loads its
module on first use (Note [lazy exports] in ember/lazy_exports.py).
"""

from __future__ import annotations

from ember.lazy_exports import lazy_exports

_EXPORTS = {name: f"ember.gpu.{module}" for module, names in {
    "devices": ["GpuInfo", "cuda_visible_devices", "gpu_count", "list_gpus", "node_gpu_ids",
                "process_gpu_memory", "visible_devices_env"],
    "schedule_check": ["check_schedules", "format_schedules", "order_schedules"],
    "tensors": ["TensorMeta", "TensorPlaceholder", "TorchTensorType", "check_tensors",
                "merge_tensors", "split_tensors"],
    "communicator": ["Communicator", "CommunicatorRegistry", "TorchCommunicator",
                     "close_stores", "communicator_registry", "connect_store", "host_store"],
    "cuda_ipc": ["CudaIpcReader", "CudaIpcWriter", "IpcMessage"],
    "streams": ["CommStream"],
}.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
