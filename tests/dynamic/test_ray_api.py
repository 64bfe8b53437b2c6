"""Ray's API as a ported program uses it: runtime context, ids, argument checks, options.

Several cases follow tests of ray-project/ray (python/ray/tests/test_basic*.py, test_actor.py,
test_wait.py, test_get_or_create_actor.py), rewritten for ember; each names its model.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

import ember
from ember.exceptions import (ActorClassInheritanceException, ActorDiedError,
                              AuthenticationError, EmberError, GetTimeoutError)


@pytest.fixture(scope="module", autouse=True)
def labelled_cluster():
    """A cluster with 2 CPUs, a custom resource, a user node label and a job env var."""
    info = ember.init(num_cpus=2, num_gpus=0, resources={"custom": 1}, labels={"zone": "z1"},
                      runtime_env={"env_vars": {"EMBER_JOB_VAR": "job"}})
    yield info
    ember.shutdown()


@ember.remote
def context_of_task():
    ctx = ember.get_runtime_context()
    return {"task": ctx.get_task_id(), "actor": ctx.get_actor_id(), "job": ctx.get_job_id(),
            "node": ctx.get_node_id(), "worker": ctx.get_worker_id(),
            "resources": ctx.get_assigned_resources(), "namespace": ctx.namespace,
            "gpus": ctx.get_accelerator_ids(), "pid": os.getpid()}


@ember.remote
class Probe:
    def __init__(self, start=0):
        self.value = start

    def context(self):
        ctx = ember.get_runtime_context()
        return {"task": ctx.get_task_id(), "actor": ctx.get_actor_id(),
                "name": ctx.get_actor_name(), "resources": ctx.get_assigned_resources(),
                "reconstructed": ctx.was_current_actor_reconstructed, "pid": os.getpid()}

    def add(self, n):
        self.value += n
        return self.value

    def myself(self):
        return ember.get_runtime_context().current_actor


# ---- runtime context ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_runtime_context_in_driver_task_and_actor():
    ctx = ember.get_runtime_context()
    assert ctx.get_task_id() is None and ctx.get_actor_id() is None
    assert ctx.get_actor_name() is None
    with pytest.raises(RuntimeError):
        ctx.current_actor
    with pytest.raises(RuntimeError):
        ctx.get_assigned_resources()
    ref = context_of_task.remote()
    seen = ember.get(ref)
    assert seen["task"] == ref.task_id().hex()  # after Ray's test_basic_2 task id checks
    assert seen["actor"] is None
    assert seen["job"] == ctx.get_job_id() and seen["namespace"] == ctx.namespace
    assert seen["node"] == ctx.get_node_id() == ember.nodes()[0]["NodeID"]
    assert seen["worker"] != ctx.get_worker_id()
    assert seen["resources"] == {"CPU": 1.0}
    assert seen["gpus"] == {"GPU": []}
    half = ember.get(context_of_task.options(num_cpus=0.5, resources={"custom": 1}).remote())
    assert half["resources"] == {"CPU": 0.5, "custom": 1.0}
    assert ctx.get()["job_id"].hex() == ctx.get_job_id()

    probe = Probe.options(name="probe-ctx", num_cpus=1).remote()
    ref = probe.context.remote()
    inside = ember.get(ref)
    assert inside["actor"] == probe._actor_id and inside["name"] == "probe-ctx"
    assert inside["task"] == ref.task_id().hex() != seen["task"]
    assert inside["resources"] == {"CPU": 1.0}
    assert inside["reconstructed"] is False
    assert ember.get(Probe.remote().context.remote())["resources"] == {}  # Ray: {} for actors
    myself = ember.get(probe.myself.remote())  # current_actor is a live handle
    assert myself == probe and ember.get(myself.add.remote(3)) == 3
    assert ember.get(probe.add.remote(1)) == 4


@pytest.mark.timeout(60)
def test_concurrent_calls_see_their_own_task_id():
    @ember.remote(max_concurrency=2)
    class Threaded:
        def __init__(self):
            self.barrier = threading.Barrier(2)

        def both(self):
            before = ember.get_runtime_context().get_task_id()
            self.barrier.wait(timeout=10)  # both calls are inside at once
            return before, ember.get_runtime_context().get_task_id()

    t = Threaded.remote()
    refs = [t.both.remote(), t.both.remote()]
    for ref, (before, after) in zip(refs, ember.get(refs, timeout=30)):
        assert before == after == ref.task_id().hex()


@pytest.mark.timeout(90)
def test_restarted_actor_knows_it_was_reconstructed():
    probe = Probe.options(max_restarts=1, max_task_retries=1).remote()
    first = ember.get(probe.context.remote())
    assert first["reconstructed"] is False
    os.kill(first["pid"], signal.SIGKILL)
    second = ember.get(probe.context.remote(), timeout=30)
    assert second["pid"] != first["pid"] and second["reconstructed"] is True


# ---- ids, helpers, small API points ------------------------------------------------------------

@pytest.mark.timeout(30)
def test_object_ref_ids_and_node_ip():
    ref = ember.put(1)
    assert ref.binary() == ref.hex().encode()
    assert ref.task_id().hex() and ref.task_id().binary() == ref.task_id().hex().encode()
    two = context_of_task.options(num_returns=1).remote()
    assert two.task_id() == two.task_id() and two.task_id() != ref.task_id()
    ip = ember.util.get_node_ip_address()
    assert len(ip.split(".")) == 4 and all(part.isdigit() for part in ip.split("."))
    ember.get(two)


@pytest.mark.timeout(30)
def test_wait_on_nothing_and_init_address_forms():
    assert ember.wait([]) == ([], [])  # after Ray's test_wait
    assert ember.wait([], num_returns=0, timeout=0) == ([], [])
    with pytest.raises(ember.exceptions.ReinitError):   # joining a cluster: tests/cluster
        ember.init("auto")
    assert ember.init("local", ignore_reinit_error=True)["session"]
    assert ember.init(None, ignore_reinit_error=True)["session"]


@pytest.mark.timeout(10)
def test_authentication_error_is_an_ember_error():
    assert issubclass(AuthenticationError, EmberError)
    assert AuthenticationError.__doc__
    assert ember.exceptions.AuthenticationError is AuthenticationError


# ---- argument checks at .remote() --------------------------------------------------------------

@pytest.mark.timeout(30)
def test_arguments_are_checked_at_remote():
    @ember.remote
    def two(a, b=2, *, c):
        return a + b + c

    with pytest.raises(TypeError, match=r"two\(a, b=2, \*, c\).*'c'"):
        two.remote(1)
    with pytest.raises(TypeError, match="too many positional"):
        two.remote(1, 2, 3, c=4)
    assert ember.get(two.remote(1, c=3)) == 6

    # After Ray's test_actor.py::test_keyword_args: constructor and methods are checked too.
    @ember.remote
    class Keywords:
        def __init__(self, arg0, arg1=1, arg2="a"):
            self.args = (arg0, arg1, arg2)

        def get_values(self, arg0, arg1=2, arg2="b"):
            return self.args[0] + arg0, self.args[1] + arg1, self.args[2] + arg2

        @staticmethod
        def static(x):
            return x

        @classmethod
        def klass(cls, x):
            return x

    for bad_args, bad_kwargs in (((), {}), ((0, 1, 2), {"arg3": 3}), ((0,), {"arg0": 1})):
        with pytest.raises(TypeError, match="constructor of Keywords"):
            Keywords.remote(*bad_args, **bad_kwargs)
    actor = Keywords.remote(1, arg2="c")
    with pytest.raises(TypeError, match=r"Keywords.get_values\(arg0"):
        actor.get_values.remote()
    assert ember.get(actor.get_values.remote(0, arg2="d", arg1=0)) == (1, 1, "cd")
    assert ember.get(actor.static.remote(5)) == 5 and ember.get(actor.klass.remote(6)) == 6
    with pytest.raises(TypeError):
        actor.static.remote()


@pytest.mark.timeout(30)
def test_variable_arguments_bind():
    # After Ray's test_actor.py::test_variable_number_of_args.
    @ember.remote
    class Varargs:
        def __init__(self, arg0, arg1=1, *args):
            self.state = (arg0, arg1, args)

        def get_values(self, arg0, arg1=2, *args):
            return self.state[0] + arg0, self.state[1] + arg1, self.state[2], args

    a = Varargs.remote(1, 2, "a", "b")
    assert ember.get(a.get_values.remote(2, 3, 1, 2)) == (3, 5, ("a", "b"), (1, 2))


# ---- actor classes keep their class ------------------------------------------------------------

class Grandparent:
    GRANDPARENT = 2

    @staticmethod
    def grandparent_static():
        return 1


class Parent(Grandparent):
    PARENT = 6


@ember.remote
class Family(Parent):
    X = 3

    @classmethod
    def f(cls):
        assert Family.GRANDPARENT == 2 and Family.PARENT == 6 and Family.X == 3
        return 4

    def g(self):
        assert Family.f() == 4 and Family.grandparent_static() == 1
        return Family.X


@pytest.mark.timeout(30)
def test_actor_class_keeps_attributes_and_bases():
    # After Ray's test_actor.py::test_actor_class_attributes / test_actor_static_attributes.
    assert Family.X == 3 and Family.GRANDPARENT == 2 and Family.f() == 4
    assert isinstance(Family, Parent) and isinstance(Family, Grandparent)
    assert ember.get(Family.remote().g.remote()) == 3
    assert ember.get(Family.options(name="family-1").remote().g.remote()) == 3
    with pytest.raises(TypeError, match="instantiated directly"):
        Family()

    # After Ray's test_actor.py::test_actor_inheritance: inherit from the original class.
    with pytest.raises(ActorClassInheritanceException, match="not currently supported"):
        class Derived(Family):  # noqa: F841
            pass

    @ember.remote
    class Child(Parent):
        def both(self):
            return self.PARENT + self.GRANDPARENT

    assert ember.get(Child.remote().both.remote()) == 8


@pytest.mark.timeout(30)
def test_builtin_ready_and_call_methods():
    p = Probe.remote(5)
    assert ember.get(p.__ray_ready__.remote(), timeout=20) is True
    assert ember.get(p.__ray_call__.remote(lambda self, n: self.value + n, 10)) == 15
    assert ember.get(p.__ray_call__.remote(lambda self: os.getpid())) == \
        ember.get(p.context.remote())["pid"]


# ---- options -----------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_max_calls_gives_each_call_budget_a_fresh_worker(procs):
    @ember.remote(max_calls=1)
    def once():
        return os.getpid()

    pids = [ember.get(once.remote()) for _ in range(3)]
    assert len(set(pids)) == 3
    procs.wait_gone(pids[0])  # after Ray's test_basic.py::test_max_call_tasks

    @ember.remote(max_calls=2)
    def twice():
        return os.getpid()

    first, second, third = (ember.get(twice.remote()) for _ in range(3))
    assert first == second != third
    procs.wait_gone(first)
    flood = ember.get([twice.options(max_retries=0).remote() for _ in range(6)], timeout=30)
    assert len(set(flood)) >= 3 and all(flood.count(pid) <= 2 for pid in flood)


@pytest.mark.timeout(60)
def test_runtime_env_vars_reach_tasks_and_actors_only():
    @ember.remote
    def read(name):
        return os.environ.get(name), os.getpid()

    env = {"env_vars": {"EMBER_TEST_VAR": "on"}}
    value, pid = ember.get(read.options(runtime_env=env).remote("EMBER_TEST_VAR"))
    assert value == "on"
    assert [ember.get(read.remote("EMBER_TEST_VAR"))[0] for _ in range(4)] == [None] * 4
    other = ember.get(read.options(runtime_env={"env_vars": {"EMBER_TEST_VAR": "off"}})
                      .remote("EMBER_TEST_VAR"))
    assert other[0] == "off"

    @ember.remote(runtime_env={"env_vars": {"EMBER_ACTOR_VAR": "yes"}})
    class EnvActor:
        def read(self):
            ctx = ember.get_runtime_context()
            return os.environ.get("EMBER_ACTOR_VAR"), ctx.runtime_env

    assert ember.get(EnvActor.remote().read.remote()) == (
        "yes", {"env_vars": {"EMBER_ACTOR_VAR": "yes"}})
    # the job's env (ember.init(runtime_env=...)) reaches every worker, not the driver
    assert ember.get(read.remote("EMBER_JOB_VAR"))[0] == "job"
    assert "EMBER_JOB_VAR" not in os.environ
    assert ember.get(read.options(runtime_env={"env_vars": {"EMBER_JOB_VAR": "task"}})
                     .remote("EMBER_JOB_VAR"))[0] == "task"
    with pytest.raises(ValueError, match="pip"):
        read.options(runtime_env={"pip": ["requests"]})
    with pytest.raises(TypeError):
        EnvActor.options(runtime_env={"env_vars": {"A": 1}})


@pytest.mark.timeout(60)
def test_label_selectors_against_the_node_labels():
    node_id = ember.get_runtime_context().get_node_id()
    labels = ember.nodes()[0]["Labels"]
    assert labels == {"zone": "z1", "ray.io/node-id": node_id}
    assert ember.get(context_of_task.options(label_selector={"zone": "z1"}).remote())["task"]
    assert ember.get(context_of_task.options(
        label_selector={"zone": "in(z0,z1)", "ray.io/node-id": node_id}).remote())["task"]
    with pytest.warns(UserWarning, match="pending"):
        pending = context_of_task.options(label_selector={"zone": "!z1"}).remote()
    with pytest.raises(GetTimeoutError):
        ember.get(pending, timeout=0.5)
    assert ember.get(context_of_task.options(
        label_selector={"zone": "z9"},
        fallback_strategy=[{"label_selector": {"zone": "z8"}},
                           {"label_selector": {"zone": "z1"}}]).remote())["task"]
    assert ember.get(Probe.options(label_selector={"zone": "!in(z2,z3)"}).remote()
                     .add.remote(2)) == 2
    with pytest.warns(UserWarning, match="pending"):
        waiting = Probe.options(label_selector={"gpu": "h100"}).remote()
    queued = waiting.add.remote(1)
    assert ember.wait([queued], timeout=0.5)[0] == []
    ember.kill(waiting)  # at once: it was placed nowhere
    with pytest.raises(ActorDiedError):
        ember.get(queued, timeout=5)
    for bad in ({"zone": "in()"}, {"-bad": "x"}, {"zone": "a b"}):
        with pytest.raises(ValueError):
            context_of_task.options(label_selector=bad)
    with pytest.raises(ValueError, match="fallback_strategy"):
        context_of_task.options(fallback_strategy=[{"resources": {}}])
    with pytest.raises(ValueError, match="reserved"):
        ember.init(labels={"ray.io/zone": "x"}, ignore_reinit_error=True)


@pytest.mark.timeout(60)
def test_concurrency_groups_limit_each_group_apart():
    @ember.remote(concurrency_groups={"io": 2, "compute": 1})
    class Grouped:
        def __init__(self):
            self.io_barrier = threading.Barrier(2)
            self.gate = threading.Event()

        @ember.method(concurrency_group="io")
        def io_pair(self):
            self.io_barrier.wait(timeout=10)  # only returns if two io calls run at once
            return "io"

        @ember.method(concurrency_group="compute")
        def blocked(self):
            return self.gate.wait(timeout=20)

        def open_gate(self):
            self.gate.set()
            return "opened"

    g = Grouped.remote()
    stuck = g.blocked.remote()  # holds the one compute slot until the gate opens
    assert ember.get([g.io_pair.remote(), g.io_pair.remote()], timeout=20) == ["io", "io"]
    assert ember.get(g.open_gate.remote(), timeout=20) == "opened"  # the default group
    assert ember.get(stuck, timeout=20) is True
    # .options(concurrency_group=...) moves one call into another group: here behind `stuck`
    ember.get(g.__ray_call__.remote(lambda self: self.gate.clear()))
    stuck = g.blocked.remote()
    queued = g.open_gate.options(concurrency_group="compute").remote()
    assert ember.wait([queued], timeout=0.5)[0] == []
    assert ember.get(g.open_gate.remote(), timeout=20) == "opened"
    assert ember.get([stuck, queued], timeout=20) == [True, "opened"]
    with pytest.raises(ValueError, match="nope"):
        ember.get(g.open_gate.options(concurrency_group="nope").remote(), timeout=20)
    with pytest.raises(ValueError, match="concurrency group 'io'"):
        Grouped.options(concurrency_groups={"compute": 1})


@pytest.mark.timeout(60)
def test_concurrency_groups_of_an_async_actor():
    @ember.remote(concurrency_groups={"io": 2})
    class AsyncGrouped:
        def __init__(self):
            import asyncio
            self.both = asyncio.Event()
            self.count = 0

        @ember.method(concurrency_group="io")
        async def meet(self):
            import asyncio
            self.count += 1
            if self.count == 2:
                self.both.set()
            await asyncio.wait_for(self.both.wait(), 10)
            return self.count

        async def ping(self):
            return "pong"

    a = AsyncGrouped.remote()
    refs = [a.meet.remote(), a.meet.remote()]
    assert ember.get(a.ping.remote(), timeout=20) == "pong"
    assert ember.get(refs, timeout=20) == [2, 2]


@pytest.mark.timeout(30)
def test_actor_option_checks_of_ray():
    # After Ray's test_get_or_create_actor.py::test_simple.
    with pytest.raises(TypeError):
        Probe.options(name=object(), get_if_exists=True).remote()
    with pytest.raises(TypeError):
        Probe.options(name="x", namespace=object(), get_if_exists=True).remote()
    with pytest.raises(ValueError):
        Probe.options(num_cpus=1, get_if_exists=True).remote()
    for ns in (None, "test"):
        a = Probe.options(name="shared", namespace=ns, get_if_exists=True).remote()
        b = Probe.options(name="shared", namespace=ns, get_if_exists=True).remote()
        assert ember.get(b.context.remote())["pid"] == ember.get(a.context.remote())["pid"]
