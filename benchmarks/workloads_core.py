"""Dynamic-layer workloads: init, tasks, actor calls, put/get — the same code for ember and ray."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from types import ModuleType

import numpy as np

from benchmarks.harness import (
    ACTOR_OPTIONS,
    GB,
    MiB,
    Config,
    Echo,
    Row,
    latency_row,
    rate_row,
    sample_latencies,
    spawned,
    workload,
)

SMALL = b"x" * 100  # the 100-byte value of every "small" row

_INIT_SNIPPET = """
import importlib, time
rt = importlib.import_module({name!r})
start = time.perf_counter()
rt.init()
elapsed = time.perf_counter() - start
print("INIT_S=%r" % elapsed, flush=True)
rt.shutdown()
"""


def noop() -> None:
    """The task body of the core_tasks rows."""
    return None


@workload("init_s", needs_init=False)
def init_s(rt: ModuleType, cfg: Config) -> list[Row]:
    """Seconds of rt.init() in a fresh interpreter (median of a few runs; import not counted)."""
    times = []
    for _ in range(cfg.n(3, 1)):
        proc = subprocess.run(
            [sys.executable, "-c", _INIT_SNIPPET.format(name=rt.__name__)],
            capture_output=True, text=True, timeout=120, env=os.environ.copy(),
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("INIT_S=")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"init subprocess exited {proc.returncode}: {' | '.join(tail)}")
        times.append(float(lines[-1].split("=", 1)[1]))
    return [Row("init_s", "s", round(statistics.median(times), 3))]


@workload()
def core_tasks_sync(rt: ModuleType, cfg: Config) -> list[Row]:
    """No-op tasks submitted and awaited one at a time; tasks/s."""
    task = rt.remote(noop)
    n = cfg.n(1000, 100)

    def run() -> None:
        for _ in range(n):
            rt.get(task.remote())

    return [rate_row("core_tasks_sync", "tasks/s", n, run, reps=cfg.n(3, 1))]


@workload()
def core_tasks_async(rt: ModuleType, cfg: Config) -> list[Row]:
    """10k no-op tasks submitted, then gathered with one get; tasks/s."""
    task = rt.remote(noop)
    n = cfg.n(10_000, 1000)

    def run() -> None:
        rt.get([task.remote() for _ in range(n)])

    return [rate_row("core_tasks_async", "tasks/s", n, run, reps=cfg.n(3, 1))]


@workload()
def core_actor_calls_async(rt: ModuleType, cfg: Config) -> list[Row]:
    """10k calls on one actor submitted, then gathered; calls/s."""
    n = cfg.n(10_000, 1000)
    with spawned(rt, Echo, 1, **ACTOR_OPTIONS) as [actor]:

        def run() -> None:
            rt.get([actor.echo.remote(None) for _ in range(n)])

        return [rate_row("core_actor_calls_async", "calls/s", n, run, reps=cfg.n(3, 1))]


@workload()
def dyn_actor_echo_small(rt: ModuleType, cfg: Config) -> list[Row]:
    """get(a.echo.remote(100 bytes)) one at a time; p50/p99 µs."""
    with spawned(rt, Echo, 1, **ACTOR_OPTIONS) as [actor]:
        assert rt.get(actor.echo.remote(SMALL)) == SMALL
        samples = sample_latencies(
            lambda: rt.get(actor.echo.remote(SMALL)), cfg.n(200, 20), cfg.n(2000, 200)
        )
    return [latency_row("dyn_actor_echo_small", samples)]


@workload()
def core_put_small(rt: ModuleType, cfg: Config) -> list[Row]:
    """rt.put of a 100-byte value; calls/s."""
    n = cfg.n(10_000, 1000)

    def run() -> None:
        for _ in range(n):
            rt.put(SMALL)

    return [rate_row("core_put_small", "calls/s", n, run, reps=cfg.n(3, 1))]


@workload()
def core_get_small(rt: ModuleType, cfg: Config) -> list[Row]:
    """rt.get of one put 100-byte value, repeatedly; calls/s."""
    n = cfg.n(10_000, 1000)
    ref = rt.put(SMALL)
    assert rt.get(ref) == SMALL

    def run() -> None:
        for _ in range(n):
            rt.get(ref)

    return [rate_row("core_get_small", "calls/s", n, run, reps=cfg.n(3, 1))]


@workload("core_put_get_100mb.put", "core_put_get_100mb.get", "numpy_copy_100mb")
def core_put_get_100mb(rt: ModuleType, cfg: Config) -> list[Row]:
    """put then get of a 100 MiB numpy array (GB/s each), beside a plain np.copy of it."""
    arr = np.arange(100 * MiB // 8, dtype=np.float64)
    put_s, get_s, copy_s = [], [], []
    for rep in range(1 + cfg.n(5, 2)):  # the first rep is warmup
        start = time.perf_counter()
        ref = rt.put(arr)
        mid = time.perf_counter()
        out = rt.get(ref)
        end = time.perf_counter()
        assert out.shape == arr.shape and out[-1] == arr[-1]
        del out, ref
        start_copy = time.perf_counter()
        copy = np.copy(arr)
        end_copy = time.perf_counter()
        del copy
        if rep:
            put_s.append(mid - start)
            get_s.append(end - mid)
            copy_s.append(end_copy - start_copy)

    def gbps(times: list[float]) -> float:
        return round(arr.nbytes / GB / statistics.median(times), 2)

    return [
        Row("core_put_get_100mb.put", "GB/s", gbps(put_s)),
        Row("core_put_get_100mb.get", "GB/s", gbps(get_s), note="zero-copy read expected"),
        Row("numpy_copy_100mb", "GB/s", gbps(copy_s), note="reference: np.copy, same run"),
    ]


# --- real work: tasks that take time, so that only parallelism can make them fast ---------------

CPU_TASK_S = 0.4  # CPU seconds of each core_tasks_parallel_cpu task
SLEEP_TASK_S = 1.0  # seconds each core_tasks_parallel_sleep task sleeps


def burn_cpu(seconds: float) -> int:
    """Pure-Python work until this thread has used `seconds` of CPU; returns the worker's pid."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for i in range(1000):
            x += i * i
    return os.getpid()


def nap(seconds: float) -> int:
    """Sleep `seconds`; returns the worker's pid."""
    time.sleep(seconds)
    return os.getpid()


def efficiency_row(rt: ModuleType, name: str, task: object, arg: float, n: int, ideal_s: float,
                   reps: int) -> Row:
    """Run n tasks at once `reps` times (after a warmup); value = ideal wall / median wall."""
    walls, pids = [], set()
    for rep in range(1 + reps):
        start = time.perf_counter()
        pids.update(rt.get([task.remote(arg) for _ in range(n)]))
        if rep:
            walls.append(time.perf_counter() - start)
    wall = statistics.median(walls)
    return Row(name, "efficiency", round(ideal_s / wall, 3),
               note=f"median wall {wall:.3f} s (ideal {ideal_s:.2f} s), {len(pids)} workers")


@workload("core_tasks_parallel_cpu", "bare_processes_parallel_cpu", init={"num_cpus": 2})
def core_tasks_parallel_cpu(rt: ModuleType, cfg: Config) -> list[Row]:
    """4 tasks x 400 ms of pure-Python CPU on 2 CPUs; efficiency = ideal wall / actual wall.
    Beside it the same work on a pool of 2 bare processes: what this machine allows right now."""
    task = rt.remote(burn_cpu)
    ideal, reps = 4 * CPU_TASK_S / 2, cfg.n(3, 1)
    row = efficiency_row(rt, "core_tasks_parallel_cpu", task, CPU_TASK_S, 4, ideal, reps)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(burn_cpu, [0.0, 0.0], chunksize=1)  # warmup: both processes up
        walls = []
        for _ in range(reps):
            start = time.perf_counter()
            pool.map(burn_cpu, [CPU_TASK_S] * 4, chunksize=1)
            walls.append(time.perf_counter() - start)
    wall = statistics.median(walls)
    return [row, Row("bare_processes_parallel_cpu", "efficiency", round(ideal / wall, 3),
                     note=f"reference: multiprocessing pool of 2, median wall {wall:.3f} s")]


@workload(init={"num_cpus": 4})
def core_tasks_parallel_sleep(rt: ModuleType, cfg: Config) -> list[Row]:
    """4 tasks x 1 s of sleep with num_cpus=4; efficiency = ideal wall (1 s) / actual wall."""
    task = rt.remote(nap)
    return [efficiency_row(rt, "core_tasks_parallel_sleep", task, SLEEP_TASK_S, 4,
                           SLEEP_TASK_S, reps=cfg.n(3, 1))]


def rss_bytes() -> int:
    """This process's resident memory, from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@workload("core_tasks_scaling.1k", "core_tasks_scaling.10k", "core_tasks_scaling.100k",
          "core_tasks_scaling.driver_bytes_per_task")
def core_tasks_scaling(rt: ModuleType, cfg: Config) -> list[Row]:
    """core_tasks_async at 1k, 10k and 100k tasks (tasks/s); driver RSS growth per task at 100k."""
    task = rt.remote(noop)
    rt.get([task.remote() for _ in range(1000)])  # warmup: workers, leases, function export
    rows = []
    growth = 0
    for label, n, reps in (("1k", 1000, cfg.n(5, 1)), ("10k", 10_000, cfg.n(3, 1)),
                           ("100k", cfg.n(100_000, 20_000), 1)):
        rates = []
        for _ in range(reps):
            before = rss_bytes()
            start = time.perf_counter()
            refs = [task.remote() for _ in range(n)]
            growth = rss_bytes() - before
            rt.get(refs)
            rates.append(n / (time.perf_counter() - start))
            del refs
        rows.append(Row(f"core_tasks_scaling.{label}", "tasks/s",
                        round(float(statistics.median(rates)), 1)))
    rows.append(Row("core_tasks_scaling.driver_bytes_per_task", "bytes", round(growth / n),
                    note=f"driver RSS growth while submitting {n} tasks, per task"))
    return rows
