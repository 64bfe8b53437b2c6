"""CPU seconds used by a runtime's processes, read from /proc (no psutil needed)."""

from __future__ import annotations

import os
import time

# Note [finding the runtime's processes]: a runtime's processes are the driver's descendants
# (by parent pid) plus any process whose environment carries RUN_MARKER, which the driver sets
# before init and which survives daemonizing (double fork re-parents a process, it keeps its env).
RUN_MARKER = "BENCHMARKS_RUN_ID"

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user+system) of pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def _has_marker(pid: int, marker: bytes) -> bool:
    """Whether pid's environment contains the marker entry."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def runtime_cpu_seconds(root: int | None = None) -> dict[int, float]:
    """CPU seconds per pid for root (default: this process), its descendants and marked peers."""
    root = os.getpid() if root is None else root
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            stats[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    members, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in members:
            members.add(pid)
            todo.extend(children.get(pid, ()))
    value = os.environ.get(RUN_MARKER)
    if value:
        marker = f"{RUN_MARKER}={value}".encode()
        members.update(pid for pid in stats if pid not in members and _has_marker(pid, marker))
    return {pid: stats[pid][1] for pid in members if pid in stats}


def idle_cpu_percent(seconds: float) -> tuple[float, int]:
    """Percent of one core the runtime's processes use over `seconds` of sleep; and their count."""
    before = runtime_cpu_seconds()
    start = time.perf_counter()
    time.sleep(seconds)
    after = runtime_cpu_seconds()
    wall = time.perf_counter() - start
    used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    return 100.0 * used / wall, len(after)


def machine_ticks() -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs since boot, from /proc/stat; steal is the time
    the hypervisor ran something else while a vCPU of this VM had work."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def steal_note(since: tuple[int, int]) -> str:
    """How much CPU time the hypervisor took since ``since`` (machine_ticks), for a row's note:
    a busy host slows memory-bound and CPU-bound rows alike."""
    steal, total = machine_ticks()
    return f"{100 * (steal - since[0]) / max(1, total - since[1]):.1f}% steal"
