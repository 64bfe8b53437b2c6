"""Tensors in compiled graphs over real actors on CPU: the "nccl" path (gloo), type hints,
collectives against a local reference, group reuse and release, and a user communicator."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import ember  # noqa: E402
from ember.dag import InputNode, MultiOutputNode, TorchTensorType  # noqa: E402
from ember.dag.collective import allgather, allreduce, reducescatter  # noqa: E402
from ember.engine.compiled_dag import _get, _run_in_actor  # noqa: E402
from ember.exceptions import TaskError, TensorTransportError  # noqa: E402
from ember.gpu.communicator import (Communicator, TorchCommunicator, connect_store,  # noqa: E402
                                    host_store)

pytestmark = pytest.mark.usefixtures("cluster")


@dataclasses.dataclass
class Batch:
    x: Any
    extra: dict


def rank_input(rank: int, n: int) -> "torch.Tensor":
    """The deterministic input of one actor; the reference rebuilds it the same way."""
    return torch.randn((6, 4), generator=torch.Generator().manual_seed(100 * rank + n))


@ember.remote
class Peer:
    def __init__(self, rank: int = 0):
        self.rank = rank

    def make(self, n, dtype="float32"):
        return torch.arange(n, dtype=getattr(torch, dtype))

    def nested(self, n):
        t = torch.arange(n, dtype=torch.float32)
        return {"list": [t, t * 2], "batch": Batch(t + 1, {"w": t.to(torch.int64)}), "s": "text"}

    def rank_input(self, n):
        if n < 0:
            raise ValueError(f"bad input {n}")
        return rank_input(self.rank, n)

    def echo(self, x):
        return x

    def double(self, x):
        return x * 2


@pytest.fixture(scope="module")
def peers(cluster):
    handles = [Peer.remote(rank) for rank in range(3)]
    ember.get([h.echo.remote(0) for h in handles])
    return handles


def expected_nested(n):
    t = torch.arange(n, dtype=torch.float32)
    return {"list": [t, t * 2], "batch": Batch(t + 1, {"w": t.to(torch.int64)}), "s": "text"}


def assert_nested_equal(got, want):
    assert type(got) is type(want)
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and torch.equal(got, want)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_nested_equal(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_nested_equal(g, w)
    elif dataclasses.is_dataclass(want):
        assert_nested_equal(dataclasses.asdict(got), dataclasses.asdict(want))
    else:
        assert got == want


@pytest.mark.timeout(60)
def test_nccl_transport_on_cpu_carries_tensors_and_nested_values(peers):
    a, b = peers[0], peers[1]
    with InputNode() as inp:
        plain = b.echo.bind(a.make.bind(inp).with_tensor_transport("nccl"))
        nested = b.echo.bind(a.nested.bind(inp).with_tensor_transport("nccl"))
        to_driver = b.double.bind(plain).with_tensor_transport("auto")
        dag = MultiOutputNode([plain, nested, to_driver])
    with dag.compile() as cdag:
        assert {e.transports for e in cdag.plan.tensor_edges.values()} == {("nccl",), ("cpu",)}
        assert [g.backend for g in cdag.plan.groups] == ["gloo"]
        for n in (5, 3, 1000, 0):
            got_plain, got_nested, got_driver = cdag.execute(n).get(timeout=30)
            assert torch.equal(got_plain, torch.arange(n, dtype=torch.float32))
            assert_nested_equal(got_nested, expected_nested(n))
            assert torch.equal(got_driver, 2 * torch.arange(n, dtype=torch.float32))


@pytest.mark.timeout(60)
def test_type_hint_mismatch_raises_at_get_and_the_graph_keeps_working(peers):
    a, b = peers[0], peers[1]
    hint = TorchTensorType(shape=(4,), dtype=torch.float32, transport="nccl")
    with InputNode() as inp:
        dag = b.echo.bind(a.make.bind(inp[0], inp[1]).with_type_hint(hint))
    with dag.compile() as cdag:
        assert torch.equal(cdag.execute(4, "float32").get(timeout=30), torch.arange(4.0))
        with pytest.raises(TensorTransportError, match=r"shape \(5,\)"):
            cdag.execute(5, "float32").get(timeout=30)
        with pytest.raises(TensorTransportError, match="dtype torch.int32"):
            cdag.execute(4, "int32").get(timeout=30)
        assert torch.equal(cdag.execute(4, "float32").get(timeout=30), torch.arange(4.0))


@pytest.mark.timeout(60)
def test_collectives_across_three_actors_equal_a_local_reference(peers):
    with InputNode() as inp:
        xs = [p.rank_input.bind(inp) for p in peers]
        summed = allreduce.bind(xs, op="sum")
        biggest = allreduce.bind(xs, op="max")
        gathered = allgather.bind(xs)
        scattered = reducescatter.bind(xs)
        dag = MultiOutputNode(summed + biggest + gathered + scattered)
    cdag = dag.compile(overlap_gpu_communication=True)   # no stream on CPU: a no-op
    try:
        for n in (1, 2):
            inputs = [rank_input(rank, n) for rank in range(3)]
            total = sum(inputs)
            got = cdag.execute(n).get(timeout=30)
            for i in range(3):
                assert torch.allclose(got[i], total)
                assert torch.equal(got[3 + i], torch.stack(inputs).amax(0))
                assert torch.equal(got[6 + i], torch.cat(inputs))
                assert torch.allclose(got[9 + i], total[2 * i:2 * i + 2])
        refs = cdag.execute(-1)   # one member fails: every output is an error, nothing hangs
        for ref in refs:
            with pytest.raises(TaskError):
                ref.get(timeout=30)
        assert torch.allclose(cdag.execute(3).get(timeout=30)[0],
                              sum(rank_input(rank, 3) for rank in range(3)))
    finally:
        cdag.teardown()


def _group_name(instance: Any, key: tuple) -> str | None:
    from ember.gpu.communicator import communicator_registry
    comm = communicator_registry.get(key)
    return None if comm is None else comm.name


@pytest.mark.timeout(60)
def test_groups_are_reused_across_graphs_and_released_at_teardown(peers):
    a, b = peers[0], peers[1]

    def build():
        with InputNode() as inp:
            return b.echo.bind(a.make.bind(inp).with_tensor_transport("nccl")).compile()

    first = build()
    second = build()
    key = first.plan.groups[0].key
    assert second.plan.groups[0].key == key
    assert second.plan.groups[0].name != first.plan.groups[0].name
    try:
        names = [_get(_run_in_actor(h, _group_name, key), 10) for h in (a, b)]
        assert names == [first.plan.groups[0].name] * 2   # the second graph reused it
        assert torch.equal(second.execute(3).get(timeout=30), torch.arange(3.0))
        first.teardown()
        assert torch.equal(second.execute(2).get(timeout=30), torch.arange(2.0))
        assert [_get(_run_in_actor(h, _group_name, key), 10) for h in (a, b)] == names
    finally:
        first.teardown()
        second.teardown()
    assert [_get(_run_in_actor(h, _group_name, key), 10) for h in (a, b)] == [None, None]


class UserGloo(Communicator):
    """A user's communicator: pickled into each actor, it joins a gloo group at initialize."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self._address, self._name = address, name
        self._comm: TorchCommunicator | None = None

    def __getstate__(self) -> dict:
        return {"_address": self._address, "_name": self._name, "_comm": None}

    def initialize(self, rank: int, world_size: int) -> None:
        self._comm = TorchCommunicator(self._name, rank, world_size, connect_store(self._address))

    rank = property(lambda self: self._comm.rank)
    world_size = property(lambda self: self._comm.world_size)
    backend = property(lambda self: "user-gloo")

    def send(self, tensor, peer):
        self._comm.send(tensor, peer)

    def recv(self, like, peer):
        return self._comm.recv(like, peer)

    def allreduce(self, tensor, op="sum", out=None):
        return self._comm.allreduce(tensor, op, out)

    def allgather(self, tensor, out=None):
        return self._comm.allgather(tensor, out)

    def reducescatter(self, tensor, op="sum", out=None):
        return self._comm.reducescatter(tensor, op, out)

    def destroy(self):
        if self._comm is not None:
            self._comm.destroy()


@pytest.mark.timeout(60)
def test_a_user_communicator_carries_an_edge_and_a_collective(peers):
    a, b = peers[0], peers[1]
    comm = UserGloo(host_store()[1], "user-group-test")
    with InputNode() as inp:
        sent = b.echo.bind(a.make.bind(inp).with_tensor_transport(comm))
        summed = allreduce.bind([a.rank_input.bind(inp), b.rank_input.bind(inp)], transport=comm)
        dag = MultiOutputNode([sent, *summed])
    with dag.compile() as cdag:
        assert [g.backend for g in cdag.plan.groups] == ["user"]
        got = cdag.execute(3).get(timeout=30)
        assert torch.equal(got[0], torch.arange(3.0))
        assert torch.allclose(got[1], rank_input(0, 3) + rank_input(1, 3))
