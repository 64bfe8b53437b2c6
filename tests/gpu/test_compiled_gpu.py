"""CUDA tensors in compiled graphs over real actors: IPC on one GPU, NCCL across two, the driver's
copy, and GPU memory freed at teardown (NVML). Skips without CUDA."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import ember  # noqa: E402
from ember.dag import InputNode, MultiOutputNode  # noqa: E402
from ember.dag.collective import allreduce  # noqa: E402
from ember.gpu.devices import process_gpu_memory  # noqa: E402

MiB = 1 << 20


@ember.remote
class GpuPeer:
    def pid(self):
        torch.zeros(1, device="cuda")
        return __import__("os").getpid()

    def make(self, nbytes):
        return torch.arange(max(1, nbytes // 4), dtype=torch.float32, device="cuda")

    def check(self, tensor):
        want = torch.arange(tensor.numel(), dtype=torch.float32, device="cuda")
        return bool(tensor.is_cuda and torch.equal(tensor, want))

    def ones(self, n):
        return torch.ones(n, device="cuda") * (1 + torch.cuda.current_device())

    def total(self, tensor):
        return float(tensor.sum())


@pytest.fixture(scope="module")
def cluster():
    info = ember.init(num_cpus=2)
    yield info
    ember.shutdown()


@pytest.mark.timeout(120)
def test_ipc_between_two_actors_on_one_gpu_small_and_100mb(cluster):
    a, b = (GpuPeer.options(num_gpus=0.5).remote() for _ in range(2))
    ember.get([a.pid.remote(), b.pid.remote()])
    with InputNode() as inp:
        dag = b.check.bind(a.make.bind(inp).with_tensor_transport("auto"))
    cdag = dag.compile()
    try:
        transports = [e.transports for e in cdag.plan.tensor_edges.values()]
        if torch.cuda.device_count() == 1:
            assert transports == [("ipc",)]
        for nbytes in (100, 100 * MiB, 400, 100 * MiB):
            assert cdag.execute(nbytes).get(timeout=60) is True
    finally:
        cdag.teardown()
        ember.kill(a)
        ember.kill(b)


@pytest.mark.timeout(120)
def test_cuda_tensor_reaches_the_driver_as_a_cpu_copy(cluster):
    a = GpuPeer.options(num_gpus=0.5).remote()
    with InputNode() as inp:
        dag = a.make.bind(inp).with_tensor_transport("auto")
    cdag = dag.compile()
    try:
        got = cdag.execute(4 * 1000).get(timeout=60)
        assert got.device.type == "cpu" and torch.equal(got, torch.arange(1000.0))
    finally:
        cdag.teardown()
        ember.kill(a)


@pytest.mark.timeout(120)
def test_teardown_frees_the_gpu_buffers(cluster):
    a, b = (GpuPeer.options(num_gpus=0.5).remote() for _ in range(2))
    pids = ember.get([a.pid.remote(), b.pid.remote()])
    before = sum(process_gpu_memory(pid) for pid in pids)
    if before == 0:
        pytest.skip("NVML does not report per-process GPU memory here")
    with InputNode() as inp:
        dag = b.check.bind(a.make.bind(inp).with_tensor_transport("auto"))
    cdag = dag.compile()
    for _ in range(3):
        assert cdag.execute(100 * MiB).get(timeout=60) is True
    during = sum(process_gpu_memory(pid) for pid in pids)
    cdag.teardown()
    deadline = time.monotonic() + 10
    while (after := sum(process_gpu_memory(pid) for pid in pids)) > before + 64 * MiB:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ember.kill(a)
    ember.kill(b)
    assert during >= before + 100 * MiB
    assert after <= before + 64 * MiB, (before, during, after)


@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two GPUs")
def test_allreduce_across_actors_on_two_gpus(cluster):
    a, b = (GpuPeer.options(num_gpus=1).remote() for _ in range(2))
    with InputNode() as inp:
        reduced = allreduce.bind([a.ones.bind(inp), b.ones.bind(inp)])
        dag = MultiOutputNode([a.total.bind(reduced[0]), b.total.bind(reduced[1])])
    cdag = dag.compile()
    try:
        assert [g.backend for g in cdag.plan.groups] == ["nccl"]
        assert cdag.execute(1000).get(timeout=60) == [2000.0, 2000.0]   # each sees its GPU as 0
    finally:
        cdag.teardown()
        ember.kill(a)
        ember.kill(b)
