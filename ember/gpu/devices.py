"""GPU discovery through NVML, and the CUDA_VISIBLE_DEVICES value that gives an actor its GPUs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ember.dynamic.resources import detect_gpus as gpu_count  # the one NVML count

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


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


# Note [NVML absent]
# A machine without the NVIDIA driver has no libnvidia-ml.so, and a container may have the
# library but no device. Every query below turns any NVML failure (and a missing pynvml) into
# "no GPUs" instead of an exception, so that CPU machines and CI see an empty list.
@contextmanager
def _nvml() -> Iterator[object | None]:
    """Yield the initialised pynvml module, or None when NVML cannot start (see Note [NVML absent])."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        yield None
        return
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _text(value: str | bytes) -> str:
    """Decode the bytes older pynvml versions return for strings."""
    return value.decode() if isinstance(value, bytes) else value


def list_gpus() -> list[GpuInfo]:
    """Every GPU of this machine with its name and memory; empty without a driver."""
    with _nvml() as nvml:
        if nvml is None:
            return []
        try:
            gpus = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(GpuInfo(index=index, name=_text(nvml.nvmlDeviceGetName(handle)),
                                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                                    memory_total=int(memory.total), memory_free=int(memory.free)))
            return gpus
        except Exception:
            return []


def process_gpu_memory(pid: int) -> int:
    """Bytes of GPU memory that process ``pid`` holds, summed over all GPUs (0 if unknown)."""
    total = 0
    with _nvml() as nvml:
        if nvml is None:
            return 0
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        total += int(proc.usedGpuMemory)
        except Exception:
            return total
    return total


def node_gpu_ids(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids this node may hand out: its own CUDA_VISIBLE_DEVICES if set, else every NVML GPU."""
    env = os.environ if environ is None else environ
    visible = env.get(CUDA_VISIBLE_DEVICES)
    if visible is not None:
        return [part.strip() for part in visible.split(",") if part.strip()]
    return [str(index) for index in range(gpu_count())]


def cuda_visible_devices(gpu_ids: Sequence[int | str]) -> str:
    """The CUDA_VISIBLE_DEVICES value for a worker given these node GPU ids (order kept, repeats dropped).

    Ids are the node's own (``node_gpu_ids``), so a node started with CUDA_VISIBLE_DEVICES=2,3 that
    gives an actor its second GPU passes ``["3"]``. An empty list yields "" which hides every GPU.
    """
    seen: list[str] = []
    for gpu in gpu_ids:
        text = str(gpu).strip()
        if not text:
            raise ValueError(f"empty GPU id in {list(gpu_ids)!r}")
        if text not in seen:
            seen.append(text)
    return ",".join(seen)


def visible_devices_env(gpu_ids: Sequence[int | str]) -> dict[str, str]:
    """Environment entries that restrict a worker process to ``gpu_ids``."""
    return {CUDA_VISIBLE_DEVICES: cuda_visible_devices(gpu_ids)}


def visible_gpu_uuids(environ: Mapping[str, str] | None = None) -> list[str]:
    """The UUIDs of the GPUs this process may use, in CUDA order (CUDA_VISIBLE_DEVICES applied).

    Entries of CUDA_VISIBLE_DEVICES may be indices or UUIDs; "" or no driver gives [].
    """
    gpus = list_gpus()
    env = os.environ if environ is None else environ
    visible = env.get(CUDA_VISIBLE_DEVICES)
    if visible is None:
        return [gpu.uuid for gpu in gpus]
    by_index = {str(gpu.index): gpu.uuid for gpu in gpus}
    uuids = []
    for part in (p.strip() for p in visible.split(",")):
        uuid = by_index.get(part) or next((g.uuid for g in gpus if part and g.uuid.startswith(part)), None)
        if uuid is None:
            break  # CUDA stops at the first invalid entry
        uuids.append(uuid)
    return uuids
