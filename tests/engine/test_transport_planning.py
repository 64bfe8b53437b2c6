"""GPU transport planning as plain data: the choice per edge, groups, and the communication dry run."""

from __future__ import annotations

import pytest

from ember.dag import InputNode, MultiOutputNode, TorchTensorType
from ember.dag.collective import allgather, allreduce
from ember.engine.comm_schedule import order_communication
from ember.engine.plan import DRIVER, DRIVER_TASKS, make_plan
from ember.engine.schedule import COMPUTE, dry_run, make_schedules
from ember.engine.endpoints import Endpoint
from ember.engine.transports import choose_transport, plan_transports
from ember.gpu.tensors import HANDOFF
from ember.engine.validate import validate
from ember.exceptions import CompileError

from .fakes import FakeActor

pytestmark = pytest.mark.timeout(30)

GPU0, GPU1 = "GPU-aaaa", "GPU-bbbb"
DRIVER_EP = Endpoint(("node", 1), driver=True)


def ep(pid: int, *gpus: str) -> Endpoint:
    return Endpoint(("node", pid), tuple(gpus))


class Worker:
    def fwd(self, x):
        return x

    def add(self, x, y):
        return x + y


@pytest.mark.parametrize("requested, writer, reader, expected", [
    ("auto", ep(5, GPU0), ep(5, GPU0), HANDOFF),          # same process
    ("auto", ep(5, GPU0), ep(6, GPU0), "ipc"),            # same physical GPU
    ("auto", ep(5, GPU0), ep(6, GPU1), "nccl"),           # different GPUs
    ("auto", ep(5), ep(6), "cpu"),                        # CPU tensors: shared memory
    ("auto", ep(5, GPU0), ep(6), "cpu"),                  # the reader has no GPU
    ("auto", ep(5, GPU0), DRIVER_EP, "cpu"),              # the driver gets host copies
    ("nccl", ep(5, GPU0), DRIVER_EP, "cpu"),
    ("nccl", ep(5), ep(6), "nccl"),                       # gloo on CPU
    ("nccl", ep(5, GPU0), ep(6, GPU1), "nccl"),
    ("ipc", ep(5, GPU0), ep(6, GPU0), "ipc"),
    ("cpu", ep(5, GPU0), ep(6, GPU0), "cpu"),
    ("auto", DRIVER_EP, ep(6, GPU0), "cpu"),
])
def test_choose_transport(requested, writer, reader, expected):
    assert choose_transport(requested, writer, reader) == expected


def test_across_nodes_gpus_take_nccl_cpus_gloo_or_serialized_and_ipc_is_refused():
    """Between nodes: NCCL when both ends have a GPU (or NCCL is asked: gloo on CPUs), the
    serialized TCP message otherwise; CUDA IPC cannot cross nodes."""
    gpu_a = Endpoint(("host", 5), (GPU0,), node="node-a")
    gpu_b = Endpoint(("host", 6), (GPU1,), node="node-b")
    cpu_b = Endpoint(("host", 7), (), node="node-b")
    assert choose_transport("auto", gpu_a, gpu_b) == "nccl"
    assert choose_transport("auto", gpu_a, cpu_b) == "cpu"
    assert choose_transport("nccl", gpu_a, cpu_b) == "nccl"
    assert choose_transport("cpu", gpu_a, gpu_b) == "cpu"
    with pytest.raises(CompileError, match="CUDA IPC needs both actors on one GPU"):
        choose_transport("ipc", gpu_a, gpu_b, "node x")


@pytest.mark.parametrize("requested, writer, reader, message", [
    ("ipc", ep(5, GPU0), ep(6, GPU1), "needs both actors on one GPU"),
    ("ipc", ep(5), ep(6), "needs both actors on one GPU"),
    ("nccl", ep(5, GPU0), ep(6, GPU0), "cannot put two ranks on one GPU"),
    ("nccl", DRIVER_EP, ep(6, GPU0), "written by the driver"),
])
def test_impossible_transports_are_compile_errors(requested, writer, reader, message):
    with pytest.raises(CompileError, match=message):
        choose_transport(requested, writer, reader, "node x")


def _plan(dag, endpoints):
    plan = make_plan(validate(dag))
    everyone = {DRIVER: DRIVER_EP, DRIVER_TASKS: DRIVER_EP, **endpoints}
    plan_transports(plan, everyone, "g")
    return plan


def test_edges_groups_and_ranks_follow_the_devices():
    a, b, c = (FakeActor(Worker()) for _ in range(3))
    with InputNode() as inp:
        x = a.fwd.bind(inp).with_type_hint(TorchTensorType(shape=(2,), transport="auto"))
        dag = MultiOutputNode([b.fwd.bind(x), c.fwd.bind(x), x])
    ids = sorted([a._actor_id, b._actor_id])
    plan = _plan(dag, {a._actor_id: ep(10, GPU0), b._actor_id: ep(11, GPU1),
                       c._actor_id: ep(12, GPU0)})
    (cid, edge), = plan.tensor_edges.items()
    assert plan.channels[cid].readers == (b._actor_id, c._actor_id, DRIVER)
    assert edge.transports == ("nccl", "ipc", "cpu") and edge.device == "cuda"
    assert edge.group == ("nccl", *ids)
    assert edge.writer_rank == ids.index(a._actor_id)
    assert edge.reader_ranks == (ids.index(b._actor_id), -1, -1)
    assert [g.key for g in plan.groups] == [edge.group]


def test_collectives_share_one_group_per_actor_list_and_gloo_without_gpus():
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        xs = [w.fwd.bind(inp) for w in (a, b)]
        summed = allreduce.bind(xs)
        gathered = allgather.bind(summed)
        dag = MultiOutputNode(gathered)
    plan = _plan(dag, {a._actor_id: ep(10), b._actor_id: ep(11)})
    assert [g.key for g in plan.groups] == [("gloo", a._actor_id, b._actor_id)]
    first, second = sorted({cid for cid, _ in plan.collectives.values()})
    assert plan.collectives[first] == (first, plan.groups[0].key)
    assert second > first


def _crossing_graph():
    """a and b each send one tensor to the other: a deadlock unless ordered."""
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        f = a.fwd.bind(inp).with_tensor_transport("nccl")
        g = b.fwd.bind(inp).with_tensor_transport("nccl")
        dag = MultiOutputNode([a.fwd.bind(g), b.fwd.bind(f)])
    return _plan(dag, {a._actor_id: ep(10), b._actor_id: ep(11)})


def test_dry_run_catches_a_deadlocking_order_and_the_global_order_fixes_it():
    plan = _crossing_graph()
    unordered = make_schedules(plan)   # each actor sends before it receives
    with pytest.raises(CompileError, match="deadlock"):
        dry_run(plan, unordered)
    ordered = order_communication(plan, unordered)
    dry_run(plan, ordered)
    assert ordered != unordered


def test_dry_run_catches_collectives_in_different_orders():
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        xs = [w.fwd.bind(inp) for w in (a, b)]
        first = allreduce.bind(xs)
        second = allreduce.bind(xs)
        dag = MultiOutputNode(first + second)
    plan = _plan(dag, {a._actor_id: ep(10), b._actor_id: ep(11)})
    schedules = order_communication(plan, make_schedules(plan))
    dry_run(plan, schedules)
    ops = schedules[b._actor_id].ops
    collectives = [i for i, op in enumerate(ops) if op.kind == COMPUTE and op.node in plan.collectives]
    i, j = collectives[0], collectives[1]
    ops[i], ops[j] = ops[j], ops[i]   # b runs the second allreduce first
    with pytest.raises(CompileError, match="deadlock"):
        dry_run(plan, schedules)


def test_an_nccl_collective_over_actors_sharing_a_gpu_is_a_compile_error():
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        dag = MultiOutputNode(allreduce.bind([a.fwd.bind(inp), b.fwd.bind(inp)]))
    with pytest.raises(CompileError, match="cannot put two ranks on one GPU"):
        _plan(dag, {a._actor_id: ep(10, GPU0), b._actor_id: ep(11, GPU0)})


def test_dry_run_sees_an_nccl_send_stuck_behind_a_buffered_read():
    """a sends x over NCCL, then writes y to shared memory; b reads y before it receives x.
    Neither a replay of the channels alone nor of the communication alone hangs; together, a
    waits in its send for b, b waits in its read for a. The global order fixes it."""
    a, b = FakeActor(Worker()), FakeActor(Worker())
    with InputNode() as inp:
        x = a.fwd.bind(inp).with_tensor_transport("nccl")
        y = a.fwd.bind(inp)
        dag = b.add.bind(y, x)
    plan = _plan(dag, {a._actor_id: ep(10), b._actor_id: ep(11)})
    unordered = make_schedules(plan)
    assert [op.kind for op in unordered[b._actor_id].ops][:2] == ["READ", "READ"]
    with pytest.raises(CompileError, match=r"deadlock.*blocked: .*W\(n1"):
        dry_run(plan, unordered)
    dry_run(plan, order_communication(plan, unordered))


def test_dry_run_finds_a_three_party_nccl_cycle():
    a, b, c = (FakeActor(Worker()) for _ in range(3))
    with InputNode() as inp:
        f = a.fwd.bind(inp).with_tensor_transport("nccl")
        g = b.fwd.bind(f).with_tensor_transport("nccl")
        h = c.fwd.bind(g).with_tensor_transport("nccl")
        dag = a.fwd.bind(h)
    plan = _plan(dag, {a._actor_id: ep(10), b._actor_id: ep(11), c._actor_id: ep(12)})
    schedules = make_schedules(plan)
    dry_run(plan, schedules)
    ops = schedules[a._actor_id].ops   # a now receives h before it sends f: a cycle of three
    write_f = next(i for i, op in enumerate(ops) if op.kind == "WRITE")
    read_h = next(i for i, op in enumerate(ops) if op.kind == "READ" and i > write_f)
    ops.insert(write_f, ops.pop(read_h))
    with pytest.raises(CompileError, match="deadlock") as err:
        dry_run(plan, schedules)
    assert all(actor._actor_id in str(err.value) for actor in (a, b, c))
