"""Device discovery degrades to zero GPUs without a driver; CUDA_VISIBLE_DEVICES values."""

from __future__ import annotations

import os
import sys

import pytest

from ember._system import gpu_env
from ember.gpu import devices


@pytest.mark.timeout(30)
def test_discovery_never_raises_and_agrees_with_itself():
    gpus = devices.list_gpus()
    assert devices.gpu_count() == len(gpus)
    for gpu in gpus:
        assert gpu.memory_total >= gpu.memory_free >= 0 and gpu.memory_used >= 0 and gpu.name
    assert devices.process_gpu_memory(0) >= 0


@pytest.mark.timeout(30)
def test_missing_nvml_means_zero_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml now raises ImportError
    assert devices.gpu_count() == 0
    assert devices.list_gpus() == []
    assert devices.process_gpu_memory(1) == 0
    assert devices.node_gpu_ids({}) == []


@pytest.mark.timeout(30)
def test_nvml_failure_means_zero_gpus(monkeypatch):
    pynvml = pytest.importorskip("pynvml")

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    assert devices.gpu_count() == 0 and devices.list_gpus() == []


@pytest.mark.timeout(30)
def test_fake_nvml_reports_gpus(monkeypatch):
    class Memory:
        total, free = 80 << 30, 60 << 30

    class Proc:
        pid, usedGpuMemory = 42, 1 << 30

    class FakeNvml:
        def nvmlInit(self): pass
        def nvmlShutdown(self): pass
        def nvmlDeviceGetCount(self): return 2
        def nvmlDeviceGetHandleByIndex(self, index): return index
        def nvmlDeviceGetMemoryInfo(self, handle): return Memory()
        def nvmlDeviceGetName(self, handle): return b"NVIDIA H100"
        def nvmlDeviceGetUUID(self, handle): return f"GPU-{handle}"
        def nvmlDeviceGetComputeRunningProcesses(self, handle): return [Proc()]

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    gpus = devices.list_gpus()
    assert [g.name for g in gpus] == ["NVIDIA H100"] * 2 and gpus[1].uuid == "GPU-1"
    assert gpus[0].memory_used == 20 << 30
    assert devices.gpu_count() == 2
    assert devices.process_gpu_memory(42) == 2 << 30
    assert devices.node_gpu_ids({}) == ["0", "1"]


@pytest.mark.timeout(10)
def test_visible_devices_for_an_assignment(monkeypatch):
    assert devices.node_gpu_ids({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert devices.node_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpu_env.visible_value([3, "1", 3]) == "3,1"  # fractional GPUs repeat an id
    assert gpu_env.visible_value([]) == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    gpu_env.show_gpus(["GPU-abc"])   # what a worker given that GPU does
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-abc"
    with pytest.raises(ValueError, match="empty GPU id"):
        gpu_env.visible_value([" "])
