"""Compiled-graph workloads (ember.dag / ray.dag): round trip, pipeline, fan-out, compile, idle CPU."""

from __future__ import annotations

import collections
import statistics
import time
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.harness import (
    ACTOR_OPTIONS,
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
from benchmarks.procstat import idle_cpu_percent

SMALL = b"x" * 100


def linear_pipeline(rt: ModuleType, stages: list[Any]) -> Any:
    """InputNode -> stages[0].echo -> ... -> stages[-1].echo (an uncompiled dag)."""
    with dag_module(rt).InputNode() as inp:
        node = inp
        for stage in stages:
            node = stage.echo.bind(node)
    return node


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
    inflight = 4

    def run(cdag: Any, n: int) -> float:
        refs: collections.deque = collections.deque()
        start = time.perf_counter()
        for _ in range(n):
            if len(refs) == inflight:
                rt.get(refs.popleft())
            refs.append(cdag.execute(x))
        while refs:
            rt.get(refs.popleft())
        return n / (time.perf_counter() - start)

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
