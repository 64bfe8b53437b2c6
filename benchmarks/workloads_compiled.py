"""Compiled-graph workloads (ember.dag / ray.dag): round trip, pipeline, fan-out, compile, idle CPU,
large values, and a pipeline of CPU-bound stages."""

from __future__ import annotations

import collections
import itertools
import statistics
import time
from types import ModuleType
from typing import Any, Iterable

import numpy as np

from benchmarks.harness import (
    ACTOR_OPTIONS,
    GB,
    MiB,
    Config,
    Echo,
    Row,
    compiled,
    dag_module,
    latency_row,
    sample_latencies,
    spawned,
    workload,
)
from benchmarks.procstat import idle_cpu_percent, machine_ticks, steal_note

SMALL = b"x" * 100


def linear_pipeline(rt: ModuleType, stages: list[Any]) -> Any:
    """InputNode -> stages[0].echo -> ... -> stages[-1].echo (an uncompiled dag)."""
    with dag_module(rt).InputNode() as inp:
        node = inp
        for stage in stages:
            node = stage.echo.bind(node)
    return node


def run_in_flight(rt: ModuleType, cdag: Any, values: Iterable[Any], inflight: int,
                  **get_options: Any) -> float:
    """Seconds to execute the graph on each of ``values`` keeping ``inflight`` executions
    pending (get the oldest, then execute a new one), and to get every result."""
    refs: collections.deque = collections.deque()
    start = time.perf_counter()
    for value in values:
        if len(refs) == inflight:
            rt.get(refs.popleft(), **get_options)
        refs.append(cdag.execute(value))
    while refs:
        rt.get(refs.popleft(), **get_options)
    return time.perf_counter() - start


@workload()
def cg_roundtrip_small(rt: ModuleType, cfg: Config) -> list[Row]:
    """One actor echoing 100 bytes through a compiled graph; p50/p99 µs of execute+get."""
    with spawned(rt, Echo, 1, **ACTOR_OPTIONS) as actors, compiled(
        linear_pipeline(rt, actors)
    ) as cdag:
        assert rt.get(cdag.execute(SMALL)) == SMALL
        samples = sample_latencies(
            lambda: rt.get(cdag.execute(SMALL)), cfg.n(500, 50), cfg.n(5000, 500)
        )
    return [latency_row("cg_roundtrip_small", samples)]


@workload()
def cg_pipeline_1mb(rt: ModuleType, cfg: Config) -> list[Row]:
    """4-actor linear pipeline, 1 MiB numpy input, 4 executions in flight; executions/s."""
    x = np.ones(MiB, dtype=np.uint8)

    def run(cdag: Any, n: int) -> float:
        return n / run_in_flight(rt, cdag, itertools.repeat(x, n), 4)

    with spawned(rt, Echo, 4, **ACTOR_OPTIONS) as actors, compiled(
        linear_pipeline(rt, actors)
    ) as cdag:
        assert np.array_equal(rt.get(cdag.execute(x)), x)
        run(cdag, cfg.n(50, 10))
        rates = [run(cdag, cfg.n(500, 50)) for _ in range(cfg.n(3, 1))]
    return [Row("cg_pipeline_1mb", "executions/s", round(statistics.median(rates), 1))]


@workload()
def cg_fanout_4(rt: ModuleType, cfg: Config) -> list[Row]:
    """One input to 4 actors gathered by a MultiOutputNode; p50/p99 µs of execute+get."""
    dag_mod = dag_module(rt)
    with spawned(rt, Echo, 4, **ACTOR_OPTIONS) as actors:
        with dag_mod.InputNode() as inp:
            dag = dag_mod.MultiOutputNode([a.echo.bind(inp) for a in actors])
        with compiled(dag) as cdag:
            assert list(rt.get(cdag.execute(SMALL))) == [SMALL] * 4
            samples = sample_latencies(
                lambda: rt.get(cdag.execute(SMALL)), cfg.n(200, 20), cfg.n(2000, 200)
            )
    return [latency_row("cg_fanout_4", samples)]


@workload()
def cg_compile_4stage(rt: ModuleType, cfg: Config) -> list[Row]:
    """experimental_compile() of a 4-actor linear pipeline on freshly started actors; ms, median."""
    times = []
    for _ in range(cfg.n(5, 2)):
        with spawned(rt, Echo, 4, **ACTOR_OPTIONS) as actors:
            dag = linear_pipeline(rt, actors)
            start = time.perf_counter()
            cdag = dag.experimental_compile()
            times.append(time.perf_counter() - start)
            try:
                rt.get(cdag.execute(SMALL))  # prove that it runs
            finally:
                cdag.teardown()
    return [Row("cg_compile_4stage", "ms", round(statistics.median(times) * 1e3, 2),
                note=f"actors up before timing; first compile {times[0] * 1e3:.0f} ms")]


@workload("cg_idle_cpu", "idle_cpu_4actors")
def cg_idle_cpu(rt: ModuleType, cfg: Config) -> list[Row]:
    """CPU of all runtime processes over ~2 s idle: 4 actors alone, then with a compiled graph."""
    seconds = 2.0
    with spawned(rt, Echo, 4, **ACTOR_OPTIONS) as actors:
        rt.get([a.echo.remote(None) for a in actors])
        time.sleep(0.5)
        base, base_procs = idle_cpu_percent(seconds)
        with compiled(linear_pipeline(rt, actors)) as cdag:
            for _ in range(10):
                rt.get(cdag.execute(SMALL))
            time.sleep(0.5)
            idle, procs = idle_cpu_percent(seconds)
    return [
        Row("cg_idle_cpu", "%core", round(idle, 2),
            note=f"4-stage compiled pipeline idle; {procs} processes"),
        Row("idle_cpu_4actors", "%core", round(base, 2),
            note=f"reference: same 4 actors, no graph; {base_procs} processes"),
    ]


# Note [large values]: a 256 MiB value goes to one actor and back (two channel hops, so at least
# four copies for bytes: into each channel and out of it into a new bytes object; two for a
# numpy array, which is read zero-copy), timed as execute + get after two warm-up round trips;
# median of the timed ones. np.copy of the same array, interleaved in the same loop, is the
# memory-speed reference. Ray's channels cannot grow past their first size without teardown
# hanging (Note [ray channel buffer] in run.py), so Ray compiles with a buffer that fits the
# value (its documented knob for large values); ember grows its channels on demand.
LARGE = 256 * MiB
GET_TIMEOUT_S = 300.0   # Ray's default of 10 s is too short for 1 GiB on a busy machine


def _compile_for(rt: ModuleType, dag: Any, nbytes: int) -> Any:
    """Compile ``dag`` for values of ``nbytes`` (Note [large values])."""
    if rt.__name__ == "ray":
        return dag.experimental_compile(_buffer_size_bytes=nbytes + MiB)
    return dag.experimental_compile()


def _round_trip_s(rt: ModuleType, cdag: Any, value: Any, reps: int) -> list[float]:
    """Seconds of each of ``reps`` timed round trips of ``value``, after two warm-up ones."""
    times = []
    for rep in range(2 + reps):
        start = time.perf_counter()
        out = rt.get(cdag.execute(value), timeout=GET_TIMEOUT_S)
        elapsed = time.perf_counter() - start
        assert len(out) == len(value)
        del out
        if rep >= 2:
            times.append(elapsed)
    return times


@workload("cg_bytes_256mb", "cg_array_256mb", "numpy_copy_256mb", "cg_bytes_1gb")
def cg_large_values(rt: ModuleType, cfg: Config) -> list[Row]:
    """256 MiB of bytes, then a 256 MiB uint8 array, through one actor and back (GB/s), beside
    np.copy of the array; then 1 GiB of bytes, whose time should be ~4x that of 256 MiB."""
    since = machine_ticks()
    array = np.random.default_rng(0).integers(0, 255, LARGE, dtype=np.uint8)
    data = array.tobytes()
    reps = cfg.n(5, 2)
    copies = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        copy = np.copy(array)
        copies.append(time.perf_counter() - start)
        del copy
    with spawned(rt, Echo, 1, **ACTOR_OPTIONS) as actors:
        with dag_module(rt).InputNode() as inp:
            dag = actors[0].echo.bind(inp)
        cdag = _compile_for(rt, dag, LARGE + MiB)
        try:
            bytes_s = _round_trip_s(rt, cdag, data, reps)
            array_s = _round_trip_s(rt, cdag, array, reps)
        finally:
            cdag.teardown()
        del array
        big = data * 4
        del data
        with dag_module(rt).InputNode() as inp:
            dag = actors[0].echo.bind(inp)
        cdag = _compile_for(rt, dag, len(big) + MiB)
        try:
            big_s = _round_trip_s(rt, cdag, big, cfg.n(3, 1))
        finally:
            cdag.teardown()

    def gbps(nbytes: int, times: list[float]) -> float:
        return round(nbytes / GB / statistics.median(times), 2)

    ratio = statistics.median(big_s) / statistics.median(bytes_s)
    best_ratio = min(big_s) / min(bytes_s)     # the least disturbed samples of each
    copy_gbps = gbps(LARGE, copies[1:])
    steal = steal_note(since)
    return [
        Row("cg_bytes_256mb", "GB/s", gbps(LARGE, bytes_s),
            note=f"{gbps(LARGE, bytes_s) / copy_gbps:.2f} of np.copy; round trip, 1 actor"),
        Row("cg_array_256mb", "GB/s", gbps(LARGE, array_s),
            note=f"{gbps(LARGE, array_s) / copy_gbps:.2f} of np.copy; uint8 array"),
        Row("numpy_copy_256mb", "GB/s", copy_gbps, note=f"reference: np.copy, same run; {steal}"),
        Row("cg_bytes_1gb", "GB/s", gbps(len(big), big_s),
            note=f"1 GiB takes {ratio:.2f}x the time of 256 MiB, best of each "
                 f"{best_ratio:.2f}x (4x is linear)"),
    ]


COMPUTE_S = 0.005


class Busy:
    """A stage that spends 5 ms of its thread's CPU time on each value."""

    def ready(self) -> bool:
        """Answer once the actor is up."""
        return True

    def work(self, x: Any) -> Any:
        """Spin for 5 ms of CPU (time.thread_time), then return x."""
        end = time.thread_time() + COMPUTE_S
        while time.thread_time() < end:
            pass
        return x


@workload()
def cg_pipeline_compute(rt: ModuleType, cfg: Config) -> list[Row]:
    """2 actors in a line, each spending 5 ms of CPU per value, 4 executions in flight;
    efficiency = ideal wall time ((n + 1) x 5 ms: the stages overlap) / measured, median of 3."""
    n = cfg.n(200, 40)

    def run(cdag: Any, count: int) -> float:
        return (count + 1) * COMPUTE_S / run_in_flight(rt, cdag, range(count), 4,
                                                       timeout=GET_TIMEOUT_S)

    with spawned(rt, Busy, 2, **ACTOR_OPTIONS) as actors:
        with dag_module(rt).InputNode() as inp:
            dag = actors[1].work.bind(actors[0].work.bind(inp))
        with compiled(dag) as cdag:
            run(cdag, 10)
            since = machine_ticks()
            efficiency = [run(cdag, n) for _ in range(cfg.n(3, 1))]
            steal = steal_note(since)
    return [Row("cg_pipeline_compute", "efficiency", round(statistics.median(efficiency), 3),
                note=f"ideal / wall; 2 stages x 5 ms CPU, 4 in flight; {steal}")]
