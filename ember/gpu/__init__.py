"""Tensors on accelerators: communicators, CUDA IPC, streams, device discovery and schedule checks.

Importing this package does not import torch; the names that need it (communicators, CUDA IPC,
streams) load their module on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from ember.gpu.devices import (GpuInfo, cuda_visible_devices, gpu_count, list_gpus, node_gpu_ids,
                               process_gpu_memory, visible_devices_env)
from ember.gpu.schedule_check import check_schedules, format_schedules, order_schedules
from ember.gpu.tensors import (TensorMeta, TensorPlaceholder, TorchTensorType, check_tensors,
                               merge_tensors, split_tensors)

_NEEDS_TORCH = {
    "Communicator": "ember.gpu.communicator",
    "CommunicatorRegistry": "ember.gpu.communicator",
    "TorchCommunicator": "ember.gpu.communicator",
    "close_stores": "ember.gpu.communicator",
    "communicator_registry": "ember.gpu.communicator",
    "connect_store": "ember.gpu.communicator",
    "host_store": "ember.gpu.communicator",
    "CudaIpcReader": "ember.gpu.cuda_ipc",
    "CudaIpcWriter": "ember.gpu.cuda_ipc",
    "IpcMessage": "ember.gpu.cuda_ipc",
    "CommStream": "ember.gpu.streams",
}

__all__ = [
    "GpuInfo", "cuda_visible_devices", "gpu_count", "list_gpus", "node_gpu_ids",
    "process_gpu_memory", "visible_devices_env",
    "check_schedules", "format_schedules", "order_schedules",
    "TensorMeta", "TensorPlaceholder", "TorchTensorType", "check_tensors", "merge_tensors",
    "split_tensors",
    *_NEEDS_TORCH,
]


def __getattr__(name: str) -> Any:
    """Load the torch-backed names lazily."""
    module = _NEEDS_TORCH.get(name)
    if module is None:
        raise AttributeError(f"module 'ember.gpu' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
