"""Shared pieces of every workload: the Row record, the registry, timing and runtime helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import time
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import numpy as np

GB = 1e9  # GB/s rows use decimal gigabytes: bytes / 1e9 / seconds.
MiB = 1 << 20


@dataclasses.dataclass
class Row:
    """One result line: a named measurement in one unit, for one runtime."""

    name: str
    unit: str
    value: float | None
    p50_us: float | None = None
    p99_us: float | None = None
    runtime: str = ""
    note: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The contract's JSON object; optional keys appear only when set."""
        out: dict[str, Any] = {"name": self.name, "unit": self.unit, "value": self.value}
        for key in ("p50_us", "p99_us", "note", "error"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["runtime"] = self.runtime
        return out


@dataclasses.dataclass(frozen=True)
class Config:
    """Knobs every workload reads: iteration counts shrink under --quick."""

    quick: bool = False

    def n(self, full: int, quick: int) -> int:
        """Pick an iteration count for the current mode."""
        return quick if self.quick else full


Workload = Callable[[ModuleType, Config], list[Row]]


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered workload: its function, the rows it emits, whether it needs rt.init(), and
    the init() keywords it needs (workloads with the same keywords share one init)."""

    name: str
    fn: Workload
    rows: tuple[str, ...]
    needs_init: bool = True
    init: tuple[tuple[str, Any], ...] = ()


REGISTRY: list[Entry] = []


def workload(*rows: str, needs_init: bool = True,
             init: dict[str, Any] | None = None) -> Callable[[Workload], Workload]:
    """Register a workload; `rows` defaults to the function name; `init`: rt.init() keywords."""

    def register(fn: Workload) -> Workload:
        REGISTRY.append(Entry(fn.__name__, fn, rows or (fn.__name__,), needs_init,
                              tuple(sorted((init or {}).items()))))
        return fn

    return register


# --- timing -----------------------------------------------------------------------------------


def sample_latencies(fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
    """Call fn warmup+iters times; return the timed iterations' durations in seconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def interleaved_latencies(fns: dict[str, Callable[[], Any]], warmup: int, iters: int,
                          blocks: int = 10) -> dict[str, list[float]]:
    """sample_latencies of several functions in alternating blocks, so that a row and its
    reference see the same machine (a noisy VM drifts between blocks); seconds per call."""
    for fn in fns.values():
        sample_latencies(fn, warmup, 0)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            samples[name] += sample_latencies(fn, 0, max(1, iters // blocks))
    return samples


def percentile_us(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of samples given in seconds, in microseconds."""
    return float(np.percentile(np.asarray(samples), q) * 1e6)


def latency_row(name: str, samples: Sequence[float]) -> Row:
    """A latency row: value is p50 in µs, with p50/p99 alongside."""
    p50 = round(percentile_us(samples, 50), 2)
    return Row(name, "us", p50, p50_us=p50, p99_us=round(percentile_us(samples, 99), 2))


def rate_row(name: str, unit: str, count: int, fn: Callable[[], Any], reps: int) -> Row:
    """A throughput row: run fn (which does `count` operations) reps times; median ops/s."""
    fn()  # warmup rep
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - start))
    return Row(name, unit, round(float(np.median(rates)), 1))


# --- runtime helpers --------------------------------------------------------------------------


def dag_module(rt: ModuleType) -> ModuleType:
    """`<rt>.dag`, where InputNode and MultiOutputNode live for both ember and ray."""
    return importlib.import_module(f"{rt.__name__}.dag")


@contextlib.contextmanager
def spawned(rt: ModuleType, cls: type, n: int, **options: Any) -> Iterator[list[Any]]:
    """Start n actors of cls (options as in rt.remote), wait until ready, kill them on exit."""
    actor_cls = rt.remote(**options)(cls) if options else rt.remote(cls)
    actors = [actor_cls.remote() for _ in range(n)]
    try:
        rt.get([a.ready.remote() for a in actors])
        yield actors
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                rt.kill(actor)


@contextlib.contextmanager
def compiled(dag: Any) -> Iterator[Any]:
    """Compile dag with experimental_compile() and tear it down on exit."""
    cdag = dag.experimental_compile()
    try:
        yield cdag
    finally:
        cdag.teardown()


class Echo:
    """An actor that returns what it is given (every workload's basic stage)."""

    def ready(self) -> bool:
        """Answer once the actor is up."""
        return True

    def echo(self, x: Any) -> Any:
        """Return x unchanged."""
        return x


# Note [actor CPUs]: benchmark actors ask for num_cpus=0 so that four of them (plus tasks) fit on
# a 2-core machine under both runtimes; Ray's default actor also holds no CPU once placed.
ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0}
