"""Tasks of real length spread over the node's CPUs (Note [spreading tasks] in lease_pool.py)."""

from __future__ import annotations

import os
import time

import pytest

import ember
from ember.dynamic.core import lease_pool, submitter


@pytest.fixture(scope="module", autouse=True)
def four_cpus():
    """A running ember with 4 CPUs (on any machine) and its workers up; shut down after."""
    info = ember.init(num_cpus=4, num_gpus=0)
    ember.get([warm.remote() for _ in range(4)], timeout=60)  # the 4 workers are up (timings)
    yield info
    ember.shutdown()


@ember.remote
def warm() -> None:
    time.sleep(0.2)


@ember.remote
def nap(seconds: float) -> tuple[int, float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), start, time.monotonic()


@ember.remote(num_cpus=2)
def burn(cpu_seconds: float) -> tuple[int, float, float]:
    start = time.monotonic()
    end = time.thread_time() + cpu_seconds
    x = 0
    while time.thread_time() < end:
        for i in range(1000):
            x += i * i
    return os.getpid(), start, time.monotonic()


def most_at_once(spans: list[tuple[int, float, float]]) -> int:
    """The largest number of (pid, start, end) spans that overlap in time."""
    edges = sorted([(s, 1) for _, s, _ in spans] + [(e, -1) for _, _, e in spans])
    running = best = 0
    for _, step in edges:
        running += step
        best = max(best, running)
    return best


@pytest.mark.timeout(60)
def test_four_sleeps_on_four_cpus_run_at_once():
    start = time.monotonic()
    spans = ember.get([nap.remote(1.0) for _ in range(4)], timeout=30)
    wall = time.monotonic() - start
    assert len({pid for pid, _, _ in spans}) == 4, spans
    assert most_at_once(spans) == 4, spans
    assert wall < 2.5, f"4 x 1 s of sleep on 4 CPUs took {wall:.2f} s"


@pytest.mark.timeout(60)
def test_cpu_bound_tasks_use_both_cpus_they_may_hold():
    spans = ember.get([burn.remote(0.4) for _ in range(4)], timeout=30)
    assert len({pid for pid, _, _ in spans}) == 2, spans  # 4 CPUs / num_cpus=2
    assert most_at_once(spans) == 2, spans


@pytest.mark.timeout(60)
def test_a_function_seen_short_still_spreads_when_it_runs_long():
    @ember.remote
    def maybe_long(seconds: float) -> tuple[int, float, float]:
        start = time.monotonic()
        time.sleep(seconds)
        return os.getpid(), start, time.monotonic()

    ember.get([maybe_long.remote(0) for _ in range(50)], timeout=30)
    start = time.monotonic()
    spans = ember.get([maybe_long.remote(1.0) for _ in range(4)], timeout=30)
    wall = time.monotonic() - start
    assert most_at_once(spans) == 4, spans
    assert wall < 2.5, f"4 x 1 s of sleep on 4 CPUs took {wall:.2f} s"


@pytest.mark.timeout(60)
def test_short_tasks_do_not_wait_behind_a_long_one_on_a_full_node():
    @ember.remote(num_cpus=2)
    def hold(seconds: float) -> tuple[int, float, float]:
        start = time.monotonic()
        time.sleep(seconds)
        return os.getpid(), start, time.monotonic()

    long_ref = hold.remote(3.0)
    spans = ember.get([hold.remote(0.3) for _ in range(3)], timeout=30)
    long_pid, long_start, long_end = ember.get(long_ref, timeout=30)
    assert long_pid not in {pid for pid, _, _ in spans}, (long_pid, spans)
    assert all(end < long_end for _, _, end in spans), (long_end, spans)


@pytest.mark.timeout(60)
def test_a_flood_of_tiny_tasks_keeps_several_in_flight_per_worker(monkeypatch):
    @ember.remote
    def tiny(i):
        return i

    depths: list[int] = []
    dispatch = submitter.Submitter.dispatch

    def counting(self, call, address, gpu_ids):
        pool = self.pools.get(call.pool_key) if call.kind == "task" else None
        if pool is not None:
            depths.extend(len(l.inflight) for l in pool.leases.values() if l.address == address)
        dispatch(self, call, address, gpu_ids)

    monkeypatch.setattr(submitter.Submitter, "dispatch", counting)
    assert ember.get([tiny.remote(i) for i in range(3000)], timeout=60) == list(range(3000))
    assert max(depths) == lease_pool.PIPELINE_DEPTH - 1, max(depths)


@pytest.mark.timeout(60)
def test_actor_calls_keep_their_order_and_process_while_tasks_fill_the_node():
    @ember.remote(num_cpus=0)
    class Log:
        def __init__(self):
            self.items = []

        def add(self, i):
            self.items.append(i)
            return os.getpid(), len(self.items)

    log = Log.remote()
    ember.get(log.add.remote(-1), timeout=30)
    naps = [nap.remote(1.0) for _ in range(4)]
    start = time.monotonic()
    answers = ember.get([log.add.remote(i) for i in range(200)], timeout=30)
    took = time.monotonic() - start
    assert [n for _, n in answers] == list(range(2, 202))
    assert len({pid for pid, _ in answers}) == 1
    assert took < 0.9, f"200 actor calls took {took:.2f} s behind sleeping tasks"
    ember.get(naps, timeout=30)
