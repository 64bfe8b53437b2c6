"""A node's resources (CPU, GPU, memory, custom) and how requests are fitted onto them."""

from __future__ import annotations

import os

EPS = 1e-9


def detect_memory() -> int:
    """Memory this machine (or container: its cgroup's limit) has, in bytes."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as file:
            limit = file.read().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical


def default_object_store_memory() -> int:
    """The object store's default cap: 30 % of memory, and no more than 90 % of /dev/shm (a
    container's /dev/shm is often far smaller than its memory)."""
    cap = int(detect_memory() * 0.3)
    try:
        shm = os.statvfs("/dev/shm")
        cap = min(cap, int(shm.f_blocks * shm.f_frsize * 0.9))
    except OSError:
        pass
    return cap


class NodeResources:
    """Total and available resources of one node, with per-GPU fractions.

    Note [GPU instances]: a GPU-kind resource ("GPU", and a placement group bundle's renamed
    "GPU_group_..." ones, bundles.py) has instances: GPU ids with a free fraction each. A
    request takes the same ids from every GPU-kind name it asks for (a task in bundle 0 asks
    for both the bundle's and the group's name), so it gets the GPUs its bundle reserved.
    """

    def __init__(self, total: dict[str, float]) -> None:
        self.total = {k: float(v) for k, v in total.items() if v}
        self.available = dict(self.total)
        whole = {gid: 1.0 for gid in range(int(self.total.get("GPU", 0)))}
        self.gpu_total: dict[str, dict[int, float]] = {"GPU": whole}
        self.gpu_free: dict[str, dict[int, float]] = {"GPU": dict(whole)}

    def feasible(self, request: dict[str, float]) -> bool:
        """Whether the node could ever hold ``request``."""
        return all(self.total.get(k, 0.0) + EPS >= v for k, v in request.items() if v > 0)

    def try_acquire(self, request: dict[str, float]) -> list[int] | None:
        """Take ``request`` if it fits now; return the GPU ids given (maybe empty), else None."""
        if any(self.available.get(k, 0.0) + EPS < v for k, v in request.items() if v > 0):
            return None
        gpus = self._pick_gpus(request)
        if gpus is None:
            return None
        for k, v in request.items():
            if v > 0:
                self.available[k] = self.available.get(k, 0.0) - v
        return gpus

    def release(self, request: dict[str, float], gpu_ids: list[int]) -> None:
        """Give back what ``try_acquire`` took (resources removed since then are skipped)."""
        for k, v in request.items():
            if v > 0 and k in self.total:
                self.available[k] = min(self.total[k], self.available.get(k, 0.0) + v)
        for name, amount in self._gpu_kinds(request):
            share = amount if amount < 1 else 1.0
            free, cap = self.gpu_free[name], self.gpu_total[name]
            for gid in gpu_ids:
                if gid in cap:
                    free[gid] = min(cap[gid], free[gid] + share)

    def add(self, extra: dict[str, float], gpus: dict[int, float] | None = None) -> None:
        """Add resources to the node (a committed bundle's, bundles.py); ``gpus``: the GPU
        instances (id -> fraction) behind the GPU-kind names among them."""
        for k, v in extra.items():
            self.total[k] = self.total.get(k, 0.0) + v
            self.available[k] = self.available.get(k, 0.0) + v
            if is_gpu_kind(k) and gpus:
                for table in (self.gpu_total, self.gpu_free):
                    pool = table.setdefault(k, {})
                    for gid, share in gpus.items():
                        pool[gid] = pool.get(gid, 0.0) + share

    def remove(self, extra: dict[str, float], gpus: dict[int, float] | None = None) -> None:
        """Undo ``add``: a name left with nothing is gone from the node."""
        for k, v in extra.items():
            left = self.total.get(k, 0.0) - v
            if left <= EPS:
                for table in (self.total, self.available, self.gpu_total, self.gpu_free):
                    table.pop(k, None)
                continue
            self.total[k] = left
            self.available[k] = min(left, self.available.get(k, 0.0) - v)
            if k in self.gpu_total and gpus:
                cap, free = self.gpu_total[k], self.gpu_free[k]
                for gid, share in gpus.items():
                    cap[gid] = cap.get(gid, 0.0) - share
                    free[gid] = free.get(gid, 0.0) - share
                    if cap[gid] <= EPS:
                        del cap[gid]
                        free.pop(gid, None)

    def _gpu_kinds(self, request: dict[str, float]) -> list[tuple[str, float]]:
        return [(k, v) for k, v in request.items() if v > 0 and k in self.gpu_free]

    def _pick_gpus(self, request: dict[str, float]) -> list[int] | None:
        kinds = self._gpu_kinds(request)
        if not kinds:
            return []
        amount = max(v for _, v in kinds)
        pools = [self.gpu_free[name] for name, _ in kinds]
        candidates = sorted(min(pools, key=len))
        need = amount if amount < 1 else 1.0
        fits = [gid for gid in candidates
                if all(pool.get(gid, 0.0) + EPS >= need for pool in pools)]
        count = 1 if amount < 1 else int(amount)
        if len(fits) < count:
            return None
        chosen = fits[:count]
        for pool in pools:
            for gid in chosen:
                pool[gid] -= need
        return chosen


def cpu_part(request: dict[str, float]) -> dict[str, float]:
    """The CPU amounts of a request, plain and bundle-renamed ("CPU_group_..."): what a
    worker blocked in ``get`` lends to others."""
    return {k: v for k, v in request.items() if k == "CPU" or k.startswith("CPU_group_")}


def is_gpu_kind(name: str) -> bool:
    """Whether resource ``name`` counts GPUs ("GPU" or a bundle's renamed "GPU_group_...")."""
    return name == "GPU" or name.startswith("GPU_group_")
