"""TorchCommunicator over gloo between real processes, checked against a single-process reference."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from ember.exceptions import ChannelTimeoutError, TensorTransportError  # noqa: E402
from ember.gpu.communicator import (REDUCE_OPS, CommunicatorRegistry, TorchCommunicator,  # noqa: E402
                                    host_store, reduce_op)
from ember.gpu.tensors import TensorMeta  # noqa: E402

from .ranks import Ranks  # noqa: E402

WORLD = 3


def _rank_input(rank: int) -> "torch.Tensor":
    """The deterministic input of one rank; the reference rebuilds it the same way."""
    return torch.randn((6, 4), generator=torch.Generator().manual_seed(rank))


def _collectives(rank: int, world: int, store) -> dict:
    """Every op once on a fresh group."""
    comm = TorchCommunicator("collectives", rank, world, store, timeout_s=30)
    x = _rank_input(rank)
    out = {op: comm.allreduce(x, op) for op in REDUCE_OPS}
    out["inplace"] = x.clone()
    comm.allreduce(out["inplace"], "sum", out=out["inplace"])
    out["allgather"] = comm.allgather(x)
    out["reducescatter"] = comm.reducescatter(x, "sum")
    out["reducescatter_max"] = comm.reducescatter(x, "max")
    # a ring: send to the next rank (a non-contiguous view), receive from the previous one
    nxt, prev = (rank + 1) % world, (rank - 1) % world
    if rank % 2 == 0:
        comm.send(x.t(), nxt)
        got = comm.recv(TensorMeta((4, 6), x.dtype, "cpu"), prev)
    else:
        got = comm.recv(TensorMeta((4, 6), x.dtype, "cpu"), prev)
        comm.send(x.t(), nxt)
    out["recv"] = got
    into = torch.empty(4, 6).t()  # a non-contiguous receive buffer is filled too
    if rank == 0:
        comm.send(x, 1)
    elif rank == 1:
        comm.recv(into, 0)
    out["recv_into"] = into
    out["unchanged_input"] = torch.equal(x, _rank_input(rank))
    comm.destroy()
    return out


def _reuse_and_destroy(rank: int, world: int, store) -> dict:
    """Two groups on one store; a registry handing the same group to two graphs; destroy."""
    registry = CommunicatorRegistry()
    made = []

    def create(name: str):
        def make():
            made.append(name)
            return TorchCommunicator(name, rank, world, store, timeout_s=30)
        return make

    key = tuple(range(world))
    first = registry.acquire(key, create("graph-a"))
    second = registry.acquire(key, create("graph-b"))
    other = TorchCommunicator("side-group", rank, world, store, timeout_s=30)
    one = torch.ones(3)
    result = {"same": first is second, "made": list(made),
              "sum_first": first.allreduce(one).tolist(),
              "sum_other": other.allreduce(one * 2).tolist()}
    registry.release(key)
    result["alive_after_one_release"] = registry.get(key) is first
    result["sum_still"] = first.allreduce(one).tolist()
    registry.release(key)
    result["gone"] = registry.get(key) is None
    try:
        first.allreduce(one)
        result["error"] = None
    except TensorTransportError as exc:
        result["error"] = str(exc)
    first.destroy()  # idempotent
    again = registry.acquire(key, create("graph-c"))
    result["sum_new"] = again.allreduce(one).tolist()
    result["made_after"] = list(made)
    registry.clear()
    other.destroy()
    return result


def _peer_dies(rank: int, world: int, store) -> str:
    """The other ranks leave (shut their group down) after joining; rank 0's receive fails at once."""
    comm = TorchCommunicator("dies", rank, world, store, timeout_s=20)
    if rank != 0:
        comm.destroy()
        return "left"
    start = time.monotonic()
    try:
        comm.recv(torch.empty(4), 1)
    except (TensorTransportError, ChannelTimeoutError) as exc:
        return f"{type(exc).__name__} {time.monotonic() - start:.1f}"
    return "no error"


def _timeout(rank: int, world: int, store) -> str:
    """A receive nobody sends to times out, and the group is broken afterwards."""
    comm = TorchCommunicator("timeout", rank, world, store, timeout_s=1)
    result = "waited"
    if rank == 0:
        try:
            comm.recv(torch.empty(1), 1)
            result = "no error"
        except ChannelTimeoutError:
            try:
                comm.allreduce(torch.ones(1))
                result = "usable after timeout"
            except TensorTransportError as exc:
                result = "timeout, then " + str(exc)
        store.set("timeout-done", "1")
    else:
        store.wait(["timeout-done"])
    comm.destroy()
    return result


@pytest.fixture(scope="module")
def ranks():
    pool = Ranks(WORLD)
    yield pool
    pool.close()


@pytest.mark.timeout(90)
def test_collectives_match_single_process_reference(ranks):
    results = ranks.run(_collectives)
    inputs = torch.stack([_rank_input(rank) for rank in range(WORLD)])
    reference = {"sum": inputs.sum(0), "product": inputs.prod(0), "min": inputs.min(0).values,
                 "max": inputs.max(0).values, "avg": inputs.mean(0)}
    chunks = inputs.shape[1] // WORLD
    for rank, got in enumerate(results):
        for op, want in reference.items():
            torch.testing.assert_close(got[op], want, msg=f"allreduce {op} on rank {rank}")
        torch.testing.assert_close(got["inplace"], reference["sum"])
        assert torch.equal(got["allgather"], inputs.reshape(-1, 4))
        part = slice(rank * chunks, (rank + 1) * chunks)
        torch.testing.assert_close(got["reducescatter"], reference["sum"][part])
        assert torch.equal(got["reducescatter_max"], reference["max"][part])
        assert torch.equal(got["recv"], inputs[(rank - 1) % WORLD].t())
        assert got["unchanged_input"]
    assert torch.equal(results[1]["recv_into"], inputs[0])


@pytest.mark.timeout(90)
def test_groups_share_a_store_and_are_reused_until_released(ranks):
    for got in ranks.run(_reuse_and_destroy):
        assert got["same"] and got["made"] == ["graph-a"]
        assert got["sum_first"] == [3.0] * 3 and got["sum_other"] == [6.0] * 3
        assert got["alive_after_one_release"] and got["sum_still"] == [3.0] * 3
        assert got["gone"] and "destroyed" in got["error"]
        assert got["sum_new"] == [3.0] * 3 and got["made_after"] == ["graph-a", "graph-c"]


@pytest.mark.timeout(60)
def test_peer_leaving_is_an_error_not_a_hang(ranks):
    error, *left = ranks.run(_peer_dies)
    assert left == ["left"] * (WORLD - 1)
    assert error.startswith("TensorTransportError")
    assert float(error.split()[1]) < 5  # not the 20 s timeout


@pytest.mark.timeout(60)
def test_recv_timeout_raises_channel_timeout_and_breaks_the_group(ranks):
    first = ranks.run(_timeout)[0]
    assert first.startswith("timeout, then") and "broken" in first


@pytest.mark.timeout(10)
def test_reduce_op_names():
    assert reduce_op("avg") == torch.distributed.ReduceOp.AVG
    with pytest.raises(ValueError, match="median"):
        reduce_op("median")


@pytest.mark.timeout(30)
def test_single_rank_group_and_argument_errors():
    store, _ = host_store()
    comm = TorchCommunicator("solo", 0, 1, store, timeout_s=5)
    x = torch.arange(4.0)
    assert torch.equal(comm.allreduce(x, "max"), x)
    assert torch.equal(comm.allgather(x), x)
    with pytest.raises(ValueError, match="floating"):
        comm.allreduce(torch.arange(4), "avg")
    with pytest.raises(ValueError, match="peer 0"):
        comm.send(x, 0)
    comm.destroy()
    with pytest.raises(ValueError, match="out of range"):
        TorchCommunicator("bad", 2, 2, store)


@pytest.mark.timeout(10)
def test_a_user_communicator_is_an_abc_to_fill_in():
    from ember.gpu.communicator import Communicator
    from ember.gpu.tensors import TorchTensorType

    class Partial(Communicator):
        rank = world_size = 0

    with pytest.raises(TypeError, match="abstract"):
        Partial()

    class Loopback(Communicator):
        """One rank; every collective is the identity."""

        rank, world_size, backend = 0, 1, "loopback"

        def send(self, tensor, peer): raise ValueError("no peers")
        def recv(self, like, peer): raise ValueError("no peers")
        def allreduce(self, tensor, op="sum", out=None): return tensor.clone()
        def allgather(self, tensor, out=None): return tensor.clone()
        def reducescatter(self, tensor, op="sum", out=None): return tensor.clone()
        def destroy(self): pass

    hint = TorchTensorType(transport=Loopback())
    assert hint.transport.allreduce(torch.ones(2)).tolist() == [1.0, 1.0]
    assert "Loopback" in repr(hint)
