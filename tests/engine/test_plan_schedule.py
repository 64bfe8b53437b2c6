"""Plans and schedules as plain data: transports per edge, READ/COMPUTE/WRITE order, dry run."""

from __future__ import annotations

import pickle

import pytest

from ember.dag import InputNode, MultiOutputNode
from ember.engine.plan import DRIVER, DRIVER_TASKS, make_plan
from ember.engine.schedule import (COMPUTE, READ, WRITE, Op, Schedule, driver_schedule, dry_run,
                                   make_schedules)
from ember.engine.validate import validate
from ember.exceptions import CompileError

from .fakes import FakeActor, FakeRemoteFunction, returns

pytestmark = pytest.mark.timeout(30)


class Worker:
    def fwd(self, x):
        return x

    def add(self, x, y):
        return x + y

    def const(self, k):
        return k

    @returns(2)
    def split(self, x):
        return x, x


def plan_of(dag):
    plan = make_plan(validate(dag))
    return plan, make_schedules(plan)


def kinds(schedule: Schedule) -> str:
    return " ".join(op.kind[0] for op in schedule.ops)


def test_linear_pipeline_uses_shared_memory_between_actors():
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    plan, schedules = plan_of(dag)
    assert plan.participants == [a._actor_id, b._actor_id, DRIVER]
    assert [(c.writer, c.readers, c.between_processes) for c in plan.channels] == [
        (DRIVER, (a._actor_id,), True),
        (a._actor_id, (b._actor_id,), True),
        (b._actor_id, (DRIVER,), True)]
    assert repr(schedules[a._actor_id]).endswith("R(c0:n0) C(n1) W(n1:c1)")
    assert repr(schedules[b._actor_id]).endswith("R(c1:n1) C(n2) W(n2:c2)")
    assert repr(driver_schedule(plan)) == "driver: W(n0:c0) R(c2:n2)"
    dry_run(plan, schedules)


def test_same_actor_edges_are_intra_process_and_run_in_bind_order():
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        x = a.fwd.bind(inp)
        y = b.fwd.bind(x)
        z = a.add.bind(x, y)       # a again, after b
    plan, schedules = plan_of(z)
    ax = plan.graph.position(x)
    crossing = {(c.node, c.between_processes) for c in plan.channels}
    assert (ax, False) in crossing and (ax, True) in crossing
    assert kinds(schedules[a._actor_id]) == "R C W R C W"
    ops = schedules[a._actor_id].ops
    assert [op.node for op in ops if op.kind == COMPUTE] == [ax, plan.graph.position(z)]
    dry_run(plan, schedules)


def test_input_is_written_once_and_attributes_are_picked_by_each_reader():
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        dag = MultiOutputNode([a.fwd.bind(inp[0]), b.add.bind(inp[1], inp.k)])
    plan, schedules = plan_of(dag)
    input_channels = [c for c in plan.channels if c.node == plan.graph.input]
    assert len(input_channels) == 1
    assert input_channels[0].readers == (a._actor_id, b._actor_id)
    assert kinds(schedules[b._actor_id]) == "R C C C W"
    assert repr(driver_schedule(plan)).count("R(") == 2
    dry_run(plan, schedules)


def test_a_node_without_upstream_nodes_is_triggered_by_the_input():
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        dag = MultiOutputNode([a.fwd.bind(inp), b.const.bind(7)])
    plan, schedules = plan_of(dag)
    assert kinds(schedules[b._actor_id]) == "R C W"
    assert schedules[b._actor_id].ops[0].node == plan.graph.input


def test_two_output_method_and_function_node_on_the_driver_task_thread():
    a = FakeActor(Worker())
    f = FakeRemoteFunction(lambda x: x)
    with InputNode() as inp:
        x, y = a.split.bind(inp)
        dag = MultiOutputNode([f.bind(x), y])
    plan, schedules = plan_of(dag)
    assert DRIVER_TASKS in plan.participants
    assert kinds(schedules[a._actor_id]) == "R C C W C W"
    assert kinds(schedules[DRIVER_TASKS]) == "R C W"
    dry_run(plan, schedules, num_slots=1)


def test_schedules_are_picklable_plain_data_without_functions():
    a = FakeActor(Worker())
    f = FakeRemoteFunction(lambda x, k: x * k)
    with InputNode() as inp:
        dag = a.fwd.bind(f.bind(inp, 2))
    plan, schedules = plan_of(dag)
    copy = pickle.loads(pickle.dumps(schedules))
    assert repr(copy) == repr(schedules)
    spec = next(iter(copy[DRIVER_TASKS].nodes.values()))
    assert spec.kind == "function" and spec.function is None and spec.args[1] == 2


def test_dry_run_finds_a_deadlocking_order():
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        x = a.fwd.bind(inp)
        y = b.fwd.bind(x)
        z = a.add.bind(x, y)
    plan, schedules = plan_of(z)
    ops = schedules[a._actor_id].ops
    # Read b's result before writing what b needs: a waits for b, b waits for a.
    bad = [ops[0], ops[3], ops[1], ops[2], ops[4], ops[5]]
    assert bad[1].kind == READ and bad[3].kind == WRITE
    schedules[a._actor_id] = Schedule(a._actor_id, bad, schedules[a._actor_id].nodes)
    with pytest.raises(CompileError, match="deadlock"):
        dry_run(plan, schedules)


def test_op_repr_is_compact():
    assert repr(Op(READ, 1, 2, 0)) == "R(c2:n1)"
    assert repr(Op(COMPUTE, 3)) == "C(n3)"
    assert repr(Op(WRITE, 3, 4)) == "W(n3:c4)"
