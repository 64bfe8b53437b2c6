"""A node's resources (CPU, GPU, memory, custom) and how requests are fitted onto them."""

from __future__ import annotations

import os

EPS = 1e-9


def detect_gpus() -> int:
    """Count GPUs through NVML; 0 when there is no driver or no nvidia-ml-py."""
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - any NVML failure means "no GPUs here"
        return 0


def detect_memory() -> int:
    """Total physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class NodeResources:
    """Total and available resources of one node, with per-GPU fractions."""

    def __init__(self, total: dict[str, float]) -> None:
        self.total = {k: float(v) for k, v in total.items() if v}
        self.available = dict(self.total)
        self.gpu_free = [1.0] * int(self.total.get("GPU", 0))

    def feasible(self, request: dict[str, float]) -> bool:
        """Whether the node could ever hold ``request``."""
        return all(self.total.get(k, 0.0) + EPS >= v for k, v in request.items() if v > 0)

    def try_acquire(self, request: dict[str, float]) -> list[int] | None:
        """Take ``request`` if it fits now; return the GPU ids given (maybe empty), else None."""
        if any(self.available.get(k, 0.0) + EPS < v for k, v in request.items() if v > 0):
            return None
        gpus = self._pick_gpus(request.get("GPU", 0.0))
        if gpus is None:
            return None
        for k, v in request.items():
            if v > 0:
                self.available[k] = self.available.get(k, 0.0) - v
        return gpus

    def release(self, request: dict[str, float], gpu_ids: list[int]) -> None:
        """Give back what ``try_acquire`` took."""
        for k, v in request.items():
            if v > 0:
                self.available[k] = min(self.total.get(k, 0.0), self.available.get(k, 0.0) + v)
        amount = request.get("GPU", 0.0)
        share = amount if amount < 1 else 1.0
        for gid in gpu_ids:
            self.gpu_free[gid] = min(1.0, self.gpu_free[gid] + share)

    def _pick_gpus(self, amount: float) -> list[int] | None:
        if amount <= 0:
            return []
        if amount < 1:
            for gid, free in enumerate(self.gpu_free):
                if free + EPS >= amount:
                    self.gpu_free[gid] = free - amount
                    return [gid]
            return None
        whole = [gid for gid, free in enumerate(self.gpu_free) if free >= 1 - EPS]
        if len(whole) < int(amount):
            return None
        chosen = whole[:int(amount)]
        for gid in chosen:
            self.gpu_free[gid] = 0.0
        return chosen
