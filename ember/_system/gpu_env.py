"""The one place that starts NVML and the one that reads and writes CUDA_VISIBLE_DEVICES; the
node's resources, workers and ``ember.gpu`` all use these.

Note [NVML absent]
~~~~~~~~~~~~~~~~~~
A machine without the NVIDIA driver has no libnvidia-ml.so, and a container may have the library
but no device. ``nvml()`` turns any NVML failure (and a missing pynvml) into None instead of an
exception, so every query built on it sees "no GPUs" on CPU machines and in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


@contextmanager
def nvml() -> Iterator[object | None]:
    """Yield the initialised pynvml module, or None when NVML cannot start (Note [NVML absent])."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
        yield None
        return
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a half-broken NVML changes nothing
            pass


def gpu_count() -> int:
    """How many GPUs NVML sees; 0 without a driver or nvidia-ml-py."""
    with nvml() as lib:
        if lib is None:
            return 0
        try:
            return int(lib.nvmlDeviceGetCount())
        except Exception:  # noqa: BLE001 - Note [NVML absent]
            return 0


def visible_ids(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES (indices or UUIDs), or None when it is not set."""
    visible = (os.environ if environ is None else environ).get(CUDA_VISIBLE_DEVICES)
    if visible is None:
        return None
    return [part.strip() for part in visible.split(",") if part.strip()]


def visible_value(gpu_ids: Sequence[int | str]) -> str:
    """The CUDA_VISIBLE_DEVICES value that shows a process ``gpu_ids`` (order kept, repeats
    dropped); an empty list gives "", which hides every GPU."""
    seen: list[str] = []
    for gpu in gpu_ids:
        text = str(gpu).strip()
        if not text:
            raise ValueError(f"empty GPU id in {list(gpu_ids)!r}")
        if text not in seen:
            seen.append(text)
    return ",".join(seen)


def show_gpus(gpu_ids: Sequence[int | str]) -> None:
    """Make ``gpu_ids`` this process's visible GPUs."""
    os.environ[CUDA_VISIBLE_DEVICES] = visible_value(gpu_ids)
