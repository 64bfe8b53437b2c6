"""An actor lives while a handle to it exists (Note [actor lifetime] in ember/dynamic/api/actor.py).

Handles in the creator, handles pickled into tasks and other actors (borrowers) keep it alive;
when the last one goes, the calls already submitted finish, then the process exits and its
resources return. ``lifetime="detached"`` actors live until killed.
"""

from __future__ import annotations

import os
import time

import pytest

import ember
from ember.exceptions import ActorNotFoundError

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote(num_cpus=1)
class Worker:
    def __init__(self, value=0):
        self.value = value

    def pid(self):
        return os.getpid()

    def slow(self, t, value):
        time.sleep(t)
        return value

    def add(self, n):
        self.value += n
        return self.value


@ember.remote
class Keeper:
    """Holds a handle it was given, and uses it later."""

    def __init__(self):
        self.kept = None

    def keep(self, handles):
        self.kept = handles[0]
        return True

    def use(self, n):
        return ember.get(self.kept.add.remote(n))

    def drop(self):
        self.kept = None
        return True


@ember.remote
def add_through(handles, n):
    return ember.get(handles[0].add.remote(n))


@pytest.mark.timeout(60)
def test_last_handle_gone_ends_the_actor_and_frees_its_cpu(procs):
    w = Worker.remote()
    pid = ember.get(w.pid.remote())
    assert ember.available_resources().get("CPU", 0) <= 1
    del w
    procs.wait_gone(pid)
    procs.wait_until(lambda: ember.available_resources().get("CPU") == 2)


@pytest.mark.timeout(60)
def test_calls_submitted_before_the_handle_went_still_finish():
    # after Ray's test_actor.py::test_actor_exit_from_task: a temporary handle's call returns
    ref = Worker.remote().slow.remote(0.5, "done")
    assert ember.get(ref, timeout=20) == "done"
    refs = [Worker.remote(10).add.remote(i) for i in range(3)]
    assert ember.get(refs, timeout=20) == [10, 11, 12]


@pytest.mark.timeout(60)
def test_running_calls_of_threaded_and_async_actors_finish_first(procs):
    @ember.remote(max_concurrency=2)
    class Threaded:
        def slow(self, t):
            time.sleep(t)
            return os.getpid()

    @ember.remote
    class Async:
        async def slow(self, t):
            import asyncio
            await asyncio.sleep(t)
            return os.getpid()

    for cls in (Threaded, Async):
        actor = cls.remote()
        refs = [actor.slow.remote(0.5), actor.slow.remote(0.2)]
        del actor
        pids = ember.get(refs, timeout=20)
        assert pids[0] == pids[1]
        procs.wait_gone(pids[0])


@pytest.mark.timeout(60)
def test_borrowed_handles_keep_the_actor_alive(procs):
    w = Worker.remote()
    pid = ember.get(w.pid.remote())
    keeper = Keeper.remote()
    assert ember.get(keeper.keep.remote([w]))  # nested in a list: the keeper borrows it
    assert ember.get(add_through.remote([w], 1)) == 1  # a task borrowed it and let it go
    del w
    time.sleep(0.5)
    assert procs.alive(pid)
    assert ember.get(keeper.use.remote(2)) == 3
    assert ember.get(keeper.drop.remote())
    procs.wait_gone(pid)


@pytest.mark.timeout(60)
def test_detached_and_named_actors(procs):
    named = Worker.options(name="short-lived").remote()
    pid = ember.get(named.pid.remote())
    del named  # named but not detached: it ends with its last handle, as in Ray
    procs.wait_gone(pid)
    procs.wait_until(lambda: _missing("short-lived"))

    detached = Worker.options(name="long-lived", lifetime="detached").remote(7)
    pid = ember.get(detached.pid.remote())
    del detached
    time.sleep(0.5)
    again = ember.get_actor("long-lived")
    assert ember.get(again.add.remote(1)) == 8 and procs.alive(pid)
    ember.kill(again)
    procs.wait_gone(pid)


@pytest.mark.timeout(60)
def test_restartable_actor_out_of_scope_is_not_restarted(procs):
    w = Worker.options(max_restarts=-1).remote()
    pid = ember.get(w.pid.remote())
    del w
    procs.wait_gone(pid)
    time.sleep(0.5)
    procs.wait_until(lambda: ember.available_resources().get("CPU") == 2)


@pytest.mark.timeout(60)
def test_get_or_create_with_handles_dropped_at_once(procs):
    # after Ray's test_get_or_create_actor.py::test_get_or_create_named_actor
    for _ in range(20):
        Worker.options(name="churn", get_if_exists=True, max_restarts=-1, num_cpus=0).remote()
    procs.wait_until(lambda: _missing("churn"))
    procs.wait_until(lambda: ember.available_resources().get("CPU") == 2)


@pytest.mark.timeout(60)
def test_an_actor_created_in_a_task_ends_with_that_task(procs):
    @ember.remote
    def make():
        w = Worker.options(num_cpus=0).remote()
        return ember.get(w.pid.remote())

    procs.wait_gone(ember.get(make.remote()))


def _missing(name: str) -> bool:
    try:
        ember.get_actor(name, timeout=0)
    except ActorNotFoundError:
        return True
    return False
