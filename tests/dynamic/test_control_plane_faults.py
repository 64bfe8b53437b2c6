"""Faults of the control plane fail fast and specifically, never hang: the real processes die.

The node manager or the GCS is killed with SIGKILL (found through the driver's runtime
objects); every wait in these tests has a timeout, and the module's leftover check (conftest)
makes sure no process or shared memory of the sessions remains.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import pytest

import ember
from ember.dynamic.api import driver
from ember.exceptions import (ActorDiedError, ActorNotFoundError, NodeDiedError,
                              ObjectFreedError, OwnerDiedError)

KILL_BOUND_S = 2.0


@ember.remote
def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


@ember.remote
def mark_then_sleep(path, seconds):
    open(path, "w").close()
    time.sleep(seconds)


@ember.remote
def plus_one(x):
    return x + 1


@ember.remote
class Sleeper:
    def __init__(self):
        self.calls = 0

    def nap(self, seconds):
        self.calls += 1
        time.sleep(seconds)
        return self.calls

    def pid(self):
        return os.getpid()

    def borrowed(self):
        return [sleep_for.remote(600)]  # a ref this actor owns, pending for long


def workers_of(nm_pid: int, processes) -> list[int]:
    """Live workers the node manager ``nm_pid`` started (their ids begin with its pid)."""
    tag = f" {nm_pid:x}w"
    return [pid for pid, cmdline in processes({driver._driver.sid})
            if "ember.dynamic.worker" in cmdline and tag in cmdline]


def wait_for(predicate, timeout: float, what: str) -> None:
    """Wait until ``predicate()`` holds, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.02)


def kill_node_manager() -> tuple[int, float]:
    """SIGKILL the driver's node manager; return its pid and the kill time."""
    pid = driver._driver.procs[1].pid
    os.kill(pid, signal.SIGKILL)
    return pid, time.monotonic()


def assert_fails_fast(ref, killed_at: float, error: type) -> BaseException:
    """``get(ref)`` raises ``error`` no later than KILL_BOUND_S after the kill."""
    with pytest.raises(error) as info:
        ember.get(ref, timeout=10)
    late = time.monotonic() - killed_at
    assert late < KILL_BOUND_S, f"{error.__name__} came {late:.2f} s after the kill"
    return info.value


@pytest.mark.timeout(90)
def test_node_manager_killed_fails_pending_calls_then_restarts(processes, tmp_path):
    ember.init(num_cpus=2)
    try:
        actor = Sleeper.remote()
        named = Sleeper.options(name="on-the-node").remote()
        phoenix = Sleeper.options(max_restarts=1).remote()
        assert ember.get([actor.pid.remote(), named.pid.remote(), phoenix.pid.remote()],
                         timeout=30)
        running = mark_then_sleep.remote(str(tmp_path / "running"), 600)
        queued = [sleep_for.remote(600) for _ in range(6)]
        [borrowed] = ember.get(named.borrowed.remote(), timeout=30)
        call = actor.nap.remote(600)
        wait_for((tmp_path / "running").exists, 30, "a task started")
        assert len(workers_of(driver._driver.procs[1].pid, processes)) >= 4  # 3 actors, tasks
        nm_pid, killed_at = kill_node_manager()

        for ref in [running, *queued]:
            assert_fails_fast(ref, killed_at, NodeDiedError)
        error = assert_fails_fast(call, killed_at, ActorDiedError)
        assert isinstance(error, NodeDiedError), error
        assert_fails_fast(borrowed, killed_at, OwnerDiedError)  # its owner died with the node
        with pytest.raises(ActorDiedError):  # later calls on the dead actor fail at once
            ember.get(actor.pid.remote(), timeout=10)

        wait_for(lambda: not workers_of(nm_pid, processes), 10,
                 "the dead node manager's workers exited")
        new_nm = driver._driver.procs[1]
        assert new_nm.pid != nm_pid and new_nm.poll() is None
        # Calls made after the death run on the restarted node manager.
        assert ember.get(plus_one.remote(1), timeout=30) == 2
        assert ember.get(Sleeper.remote().nap.remote(0), timeout=30) == 1
        assert ember.get(phoenix.nap.remote(0), timeout=30) == 1  # restarted: a fresh instance
        with pytest.raises(ActorNotFoundError):
            ember.get_actor("on-the-node")
    finally:
        ember.shutdown()


@pytest.mark.timeout(60)
def test_node_manager_out_of_restarts_fails_later_calls_at_once():
    ember.init(num_cpus=1)
    try:
        assert ember.get(plus_one.remote(1), timeout=30) == 2
        driver._driver.NODE_MANAGER_RESTARTS = 0
        running = sleep_for.remote(600)
        _, killed_at = kill_node_manager()
        assert_fails_fast(running, killed_at, NodeDiedError)
        later = time.monotonic()
        assert_fails_fast(plus_one.remote(1), later, NodeDiedError)
        with pytest.raises(ActorDiedError) as info:
            ember.get(Sleeper.remote().pid.remote(), timeout=10)
        assert isinstance(info.value, NodeDiedError)
        with pytest.raises(NodeDiedError):
            ember.available_resources()
    finally:
        ember.shutdown()


@ember.remote
class Keeper:
    def ping(self):
        return "pong"


@ember.remote
def never_run_before(x):
    return x * 3


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_gcs_killed_keeps_functions_names_kv_and_jobs(tmp_path, backend):
    storage = "memory" if backend == "memory" else f"sqlite://{tmp_path}/gcs.db"
    ember.init(num_cpus=1, _gcs_storage=storage)
    try:
        core, _ = driver.runtime()
        keeper = Keeper.options(name="keeper").remote()
        assert ember.get(keeper.ping.remote(), timeout=30) == "pong"
        never_run_before.function_id(core)  # exported, never run: a worker must fetch it
        assert core.endpoint.call(core.gcs_address, "kv_put", "kv", "answer", 42, True)
        watch = driver._driver
        old_pid = watch.procs[0].pid
        os.kill(old_pid, signal.SIGKILL)
        # At once: a request the dying GCS never reads is asked again of the new one.
        assert ember.get(never_run_before.remote(2), timeout=30) == 6
        wait_for(lambda: watch.procs[0].pid != old_pid and watch.procs[0].poll() is None,
                 20, "the GCS was restarted")
        assert ember.get(Keeper.remote().ping.remote(), timeout=30) == "pong"  # known class
        again = ember.get_actor("keeper")
        assert ember.get(again.ping.remote(), timeout=30) == "pong"
        assert core.endpoint.call(core.gcs_address, "kv_get", "kv", "answer") == 42
        job = core.endpoint.call(core.gcs_address, "kv_get", "jobs", watch.sid)
        assert job["driver_pid"] == os.getpid()

        @ember.remote
        def new_function():
            return "exported after the restart"
        assert ember.get(new_function.remote(), timeout=30) == "exported after the restart"
    finally:
        ember.shutdown()


@pytest.mark.timeout(60)
def test_runtime_started_from_a_thread_outlives_the_thread():
    started = threading.Thread(target=ember.init, kwargs={"num_cpus": 1})
    started.start()
    started.join(timeout=30)
    assert not started.is_alive()
    try:
        procs = list(driver._driver.procs)
        time.sleep(0.5)  # the thread is gone: a parent-death signal would have fired by now
        assert [p.poll() for p in procs] == [None, None]
        began = time.monotonic()
        assert ember.get(plus_one.remote(1), timeout=10) == 2
        assert time.monotonic() - began < 5
        assert driver._driver.procs == procs  # nothing died and was restarted
    finally:
        ember.shutdown()


@pytest.mark.timeout(30)
def test_stale_ref_to_a_freed_object_raises_object_freed_at_once():
    ember.init(num_cpus=1)
    try:
        ref = ember.put("value")
        blob = pickle.dumps(ref)
        assert ember.get(pickle.loads(blob), timeout=10) == "value"  # in transit: still alive
        del ref
        began = time.monotonic()
        stale = pickle.loads(blob)  # the same pickle again: its object is freed by now
        with pytest.raises(ObjectFreedError):
            ember.get(stale, timeout=10)
        with pytest.raises(ObjectFreedError):
            ember.get([stale], timeout=10)
        assert time.monotonic() - began < 1
        ready, _ = ember.wait([stale], timeout=10)
        assert ready == [stale]
    finally:
        ember.shutdown()
