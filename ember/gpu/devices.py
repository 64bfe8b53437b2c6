"""GPU discovery through NVML: the machine's GPUs, a node's GPU ids, a process's visible GPUs
(NVML start-up and CUDA_VISIBLE_DEVICES itself: ember/_system/gpu_env.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ember._system.gpu_env import gpu_count, nvml, visible_ids


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as NVML reports it; memory in bytes."""

    index: int
    name: str
    uuid: str
    memory_total: int
    memory_free: int

    @property
    def memory_used(self) -> int:
        """Bytes in use on the device, by every process."""
        return self.memory_total - self.memory_free


def _text(value: str | bytes) -> str:
    """Decode the bytes older pynvml versions return for strings."""
    return value.decode() if isinstance(value, bytes) else value


def list_gpus() -> list[GpuInfo]:
    """Every GPU of this machine with its name and memory; empty without a driver."""
    with nvml() as lib:
        if lib is None:
            return []
        try:
            gpus = []
            for index in range(lib.nvmlDeviceGetCount()):
                handle = lib.nvmlDeviceGetHandleByIndex(index)
                memory = lib.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(GpuInfo(index=index, name=_text(lib.nvmlDeviceGetName(handle)),
                                    uuid=_text(lib.nvmlDeviceGetUUID(handle)),
                                    memory_total=int(memory.total), memory_free=int(memory.free)))
            return gpus
        except Exception:
            return []


def process_gpu_memory(pid: int) -> int:
    """Bytes of GPU memory that process ``pid`` holds, summed over all GPUs (0 if unknown)."""
    total = 0
    with nvml() as lib:
        if lib is None:
            return 0
        try:
            for index in range(lib.nvmlDeviceGetCount()):
                handle = lib.nvmlDeviceGetHandleByIndex(index)
                for proc in lib.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        total += int(proc.usedGpuMemory)
        except Exception:
            return total
    return total


def node_gpu_ids(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids this node may hand out: its own CUDA_VISIBLE_DEVICES if set, else every NVML GPU."""
    visible = visible_ids(environ)
    if visible is not None:
        return visible
    return [str(index) for index in range(gpu_count())]


def visible_gpu_uuids(environ: Mapping[str, str] | None = None) -> list[str]:
    """The UUIDs of the GPUs this process may use, in CUDA order (CUDA_VISIBLE_DEVICES applied).

    Entries of CUDA_VISIBLE_DEVICES may be indices or UUIDs; "" or no driver gives [].
    """
    gpus = list_gpus()
    visible = visible_ids(environ)
    if visible is None:
        return [gpu.uuid for gpu in gpus]
    by_index = {str(gpu.index): gpu.uuid for gpu in gpus}
    uuids = []
    for part in visible:
        uuid = by_index.get(part) or next((g.uuid for g in gpus if part and g.uuid.startswith(part)), None)
        if uuid is None:
            break  # CUDA stops at the first invalid entry
        uuids.append(uuid)
    return uuids
