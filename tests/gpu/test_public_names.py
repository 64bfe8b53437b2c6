"""ember.gpu exports exactly its public names, and importing it does not need torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ember.gpu

PUBLIC = {
    "GpuInfo", "cuda_visible_devices", "gpu_count", "list_gpus", "node_gpu_ids",
    "process_gpu_memory", "visible_devices_env",
    "check_schedules", "format_schedules", "order_schedules",
    "TensorMeta", "TensorPlaceholder", "TorchTensorType", "check_tensors", "merge_tensors",
    "split_tensors",
    "Communicator", "CommunicatorRegistry", "close_stores", "TorchCommunicator", "communicator_registry",
    "connect_store", "host_store", "CudaIpcReader", "CudaIpcWriter", "IpcMessage", "CommStream",
}


@pytest.mark.timeout(10)
def test_all_is_exactly_the_public_names():
    assert set(ember.gpu.__all__) == PUBLIC


@pytest.mark.timeout(60)
def test_torch_backed_names_resolve():
    pytest.importorskip("torch")
    for name in PUBLIC:
        assert getattr(ember.gpu, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ember.gpu.nope  # noqa: B018


@pytest.mark.timeout(60)
def test_import_does_not_load_torch():
    code = "import sys, ember.gpu; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(ember.gpu.__file__).parents[2])
