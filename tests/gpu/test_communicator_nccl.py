"""TorchCommunicator over NCCL between processes on two GPUs (skipped with fewer than two)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ember.gpu.communicator import TorchCommunicator  # noqa: E402
from ember.gpu.tensors import TensorMeta  # noqa: E402

from .ranks import Ranks  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def _nccl_ops(rank: int, world: int, store) -> dict:
    """Allreduce, allgather, reducescatter and a send/recv on GPU tensors, results moved to the CPU."""
    device = torch.device("cuda", rank)
    comm = TorchCommunicator("nccl-ops", rank, world, store, device=device, timeout_s=60)
    x = torch.full((4, 2), float(rank + 1), device=device)
    out = {"backend": comm.backend, "sum": comm.allreduce(x), "avg": comm.allreduce(x, "avg"),
           "allgather": comm.allgather(x), "reducescatter": comm.reducescatter(x)}
    if rank == 0:
        comm.send(torch.arange(1 << 20, device=device, dtype=torch.float32), 1)
    else:
        out["recv"] = comm.recv(TensorMeta((1 << 20,), torch.float32, "cuda:0"), 0)
    torch.cuda.synchronize(device)
    comm.destroy()
    return {key: value.cpu() if isinstance(value, torch.Tensor) else value
            for key, value in out.items()}


@pytest.mark.timeout(180)
def test_nccl_collectives_and_p2p():
    pool = Ranks(2)
    try:
        first, second = pool.run(_nccl_ops, timeout_s=150)
    finally:
        pool.close()
    for got in (first, second):
        assert got["backend"] == "nccl"
        assert torch.equal(got["sum"], torch.full((4, 2), 3.0))
        assert torch.equal(got["avg"], torch.full((4, 2), 1.5))
        assert torch.equal(got["allgather"], torch.cat([torch.full((4, 2), 1.0), torch.full((4, 2), 2.0)]))
        assert torch.equal(got["reducescatter"], torch.full((2, 2), 3.0))
    assert torch.equal(second["recv"], torch.arange(1 << 20, dtype=torch.float32))
