"""Actors: state, call order, handles as arguments, names, kill and crashes, async and threaded."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import ember
from ember.exceptions import ActorDiedError, ActorNotFoundError, TaskError

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
class Counter:
    def __init__(self, start=0):
        self.value = start
        self.log = []

    def add(self, n=1):
        self.value += n
        self.log.append(n)
        return self.value

    def get_log(self):
        return self.log

    def pid(self):
        return os.getpid()

    def sleep(self, t):
        time.sleep(t)
        return t

    @ember.method(num_returns=2)
    def split(self):
        return self.value, -self.value


@pytest.mark.timeout(30)
def test_state_is_kept_and_calls_run_in_order():
    c = Counter.remote(10)
    refs = [c.add.remote(i) for i in range(50)]
    assert ember.get(refs[-1]) == 10 + sum(range(50))
    assert ember.get(c.get_log.remote()) == list(range(50))
    assert ember.get(c.pid.remote()) != os.getpid()


@pytest.mark.timeout(30)
def test_ref_arguments_keep_call_order():
    c = Counter.remote()

    @ember.remote
    def slow(x):
        time.sleep(0.3)
        return x

    first = c.add.remote(slow.remote(1))  # waits for its argument
    second = c.add.remote(100)
    assert ember.get([first, second]) == [1, 101]


@pytest.mark.timeout(30)
def test_handle_passed_to_tasks_and_actors():
    c = Counter.remote()

    @ember.remote
    def bump(counter, n):
        return ember.get(counter.add.remote(n))

    @ember.remote
    class Caller:
        def __init__(self, counter):
            self.counter = counter

        def bump(self, n):
            return ember.get(self.counter.add.remote(n))

    ember.get([bump.remote(c, 1) for _ in range(3)])
    caller = Caller.remote(c)
    assert ember.get(caller.bump.remote(10)) == 13
    assert ember.get(c.add.remote(0)) == 13


@pytest.mark.timeout(30)
def test_method_num_returns():
    c = Counter.remote(4)
    pos, neg = c.split.remote()
    assert ember.get([pos, neg]) == [4, -4]
    a, b, d = c.add.options(num_returns=3).remote(0)
    with pytest.raises(TaskError, match="num_returns=3"):
        ember.get(a)


@pytest.mark.timeout(30)
def test_named_actor_get_actor_and_get_if_exists():
    c = Counter.options(name="counter-a").remote(5)
    same = ember.get_actor("counter-a")
    assert ember.get(same.add.remote(1)) == 6
    again = Counter.options(name="counter-a", get_if_exists=True).remote(100)
    assert ember.get(again.add.remote(1)) == 7
    with pytest.raises(ValueError, match="counter-a"):
        Counter.options(name="counter-a").remote()
    with pytest.raises(ActorNotFoundError, match="no-such-actor"):
        ember.get_actor("no-such-actor")
    ember.kill(c)
    with pytest.raises(ActorNotFoundError):
        ember.get_actor("counter-a")
    fresh = Counter.options(name="counter-a").remote(1)  # the name is free again
    assert ember.get(fresh.add.remote(1)) == 2
    ember.kill(fresh)


@pytest.mark.timeout(30)
def test_kill_fails_pending_and_later_calls():
    c = Counter.remote()
    ember.get(c.add.remote())
    pending = c.sleep.remote(5)
    time.sleep(0.2)
    ember.kill(c)
    with pytest.raises(ActorDiedError, match="ember.kill"):
        ember.get(pending, timeout=5)
    with pytest.raises(ActorDiedError):
        ember.get(c.add.remote(), timeout=5)


@pytest.mark.timeout(30)
def test_actor_process_killed_with_sigkill():
    c = Counter.remote()
    pid = ember.get(c.pid.remote())
    pending = c.sleep.remote(10)
    time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(ActorDiedError):
        ember.get(pending, timeout=5)
    assert time.monotonic() - start < 2
    with pytest.raises(ActorDiedError):
        ember.get(c.add.remote(), timeout=5)


@pytest.mark.timeout(30)
def test_constructor_error_makes_calls_fail():
    @ember.remote
    class Broken:
        def __init__(self):
            raise ZeroDivisionError("bad constructor")

        def ping(self):
            return "pong"

    b = Broken.remote()
    with pytest.raises(ActorDiedError, match="bad constructor"):
        ember.get(b.ping.remote(), timeout=10)
    with pytest.raises(ActorDiedError):
        ember.get(b.ping.remote(), timeout=10)


@pytest.mark.timeout(30)
def test_exception_in_method_keeps_the_actor_alive():
    @ember.remote
    class Fails:
        def boom(self):
            raise KeyError("missing")

        def ok(self):
            return "ok"

    f = Fails.remote()
    with pytest.raises(KeyError) as info:
        ember.get(f.boom.remote())
    assert isinstance(info.value, TaskError)
    assert "Traceback" in str(info.value) and "boom" in str(info.value)
    assert ember.get(f.ok.remote()) == "ok"


@pytest.mark.timeout(30)
def test_async_actor_runs_coroutines_concurrently():
    @ember.remote
    class AsyncActor:
        def __init__(self):
            self.running = 0
            self.peak = 0

        async def nap(self, t):
            self.running += 1
            self.peak = max(self.peak, self.running)
            await asyncio.sleep(t)
            self.running -= 1
            return t

        async def peak_seen(self):
            return self.peak

    a = AsyncActor.remote()
    ember.get(a.peak_seen.remote())  # started
    start = time.monotonic()
    assert ember.get([a.nap.remote(0.5) for _ in range(4)]) == [0.5] * 4
    assert time.monotonic() - start < 1.5
    assert ember.get(a.peak_seen.remote()) == 4


@pytest.mark.timeout(30)
def test_async_actor_max_concurrency():
    @ember.remote(max_concurrency=2)
    class Limited:
        async def nap(self, t):
            await asyncio.sleep(t)
            return t

    a = Limited.remote()
    ember.get(a.nap.remote(0))
    start = time.monotonic()
    ember.get([a.nap.remote(0.3) for _ in range(4)])
    assert 0.55 < time.monotonic() - start < 1.5


@pytest.mark.timeout(30)
def test_threaded_actor_max_concurrency():
    @ember.remote(max_concurrency=4)
    class Threaded:
        def __init__(self):
            self.lock = threading.Lock()
            self.running = 0
            self.peak = 0

        def work(self, t):
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            time.sleep(t)
            with self.lock:
                self.running -= 1
            return threading.get_ident()

        def peak_seen(self):
            return self.peak

    a = Threaded.remote()
    ember.get(a.peak_seen.remote())
    start = time.monotonic()
    threads = ember.get([a.work.remote(0.4) for _ in range(4)])
    assert time.monotonic() - start < 1.2
    assert len(set(threads)) > 1
    assert ember.get(a.peak_seen.remote()) > 1


@pytest.mark.timeout(30)
def test_ember_run_hook_runs_a_function_on_the_instance():
    c = Counter.remote(3)

    def read_and_add(instance, n):
        instance.value += n
        return instance.value, os.getpid()

    value, pid = ember.get(c._ember_run.remote(read_and_add, 4))
    assert value == 7
    assert pid == ember.get(c.pid.remote())
    assert ember.get(c.add.remote(0)) == 7


@pytest.mark.timeout(30)
def test_actor_needing_missing_resources_fails_clearly():
    g = Counter.options(num_gpus=1).remote()
    with pytest.raises(ActorDiedError, match="GPU"):
        ember.get(g.add.remote(), timeout=10)


@pytest.mark.timeout(30)
def test_actor_with_resources():
    @ember.remote(num_cpus=1, resources={"custom": 1})
    class Holder:
        def gpus(self):
            return ember.get_gpu_ids()

    h = Holder.remote()
    assert ember.get(h.gpus.remote()) == []
    ember.kill(h)


@ember.remote
def add_through_task(handle):
    return ember.get(handle.add.remote(1))


@pytest.mark.timeout(60)
def test_max_restarts_restarts_the_actor_then_gives_up():
    actor = Counter.options(max_restarts=1, max_task_retries=1).remote()
    assert ember.get(actor.add.remote(5)) == 5
    first = ember.get(actor.pid.remote())
    os.kill(first, signal.SIGKILL)
    assert ember.get(actor.add.remote(1), timeout=20) == 1  # a fresh instance
    second = ember.get(actor.pid.remote())
    assert second != first
    os.kill(second, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        ember.get(actor.add.remote(1), timeout=20)


@pytest.mark.timeout(60)
def test_restarted_actor_is_found_by_other_handle_holders():
    actor = Counter.options(max_restarts=2).remote()
    assert ember.get(add_through_task.remote(actor)) == 1
    os.kill(ember.get(actor.pid.remote()), signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:  # the call that meets the dying process fails; later ones reach the new one
        try:
            assert ember.get(add_through_task.remote(actor), timeout=20) == 1
            break
        except TaskError:
            assert time.monotonic() < deadline
