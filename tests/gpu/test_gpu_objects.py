"""GPU objects with CUDA tensors (Note [GPU objects]): CUDA IPC between actors sharing one GPU,
"auto" choosing IPC there, NCCL across two GPUs, the driver's host copy, device errors, and the
producer freeing its tensors. Skips without CUDA."""

from __future__ import annotations

import gc
import time

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import ember  # noqa: E402
from ember.exceptions import TensorTransportError  # noqa: E402
from ember.experimental.collective import (create_collective_group,  # noqa: E402
                                           destroy_collective_group)

MiB = 1 << 20


@ember.remote
class GpuHolder:
    def ready(self):
        torch.zeros(1, device="cuda")
        return True

    @ember.method(tensor_transport="ipc")
    def produce_ipc(self, nbytes):
        return torch.arange(max(1, nbytes // 4), dtype=torch.float32, device="cuda")

    @ember.method(tensor_transport="auto")
    def produce_auto(self, n):
        return {"x": torch.arange(n, dtype=torch.float32, device="cuda"), "tag": "t"}

    @ember.method(tensor_transport="nccl")
    def produce_nccl(self, nbytes):
        return torch.arange(max(1, nbytes // 4), dtype=torch.float32, device="cuda")

    @ember.method(tensor_transport="gloo")
    def produce_cuda_for_gloo(self):
        return torch.ones(4, device="cuda")

    def check(self, tensor):
        want = torch.arange(tensor.numel(), dtype=torch.float32, device="cuda")
        return bool(tensor.is_cuda and torch.equal(tensor, want))

    def check_auto(self, value):
        return value["tag"] == "t" and self.check(value["x"])

    def stats(self):
        from ember.gpu.objects import objects
        return objects.stats()


@pytest.fixture(scope="module")
def cluster():
    info = ember.init(num_cpus=2)
    yield info
    ember.shutdown()


@pytest.fixture(scope="module")
def shared_gpu(cluster):
    holders = [GpuHolder.options(num_gpus=0.5).remote() for _ in range(2)]
    ember.get([h.ready.remote() for h in holders], timeout=120)
    return holders


@pytest.mark.timeout(180)
def test_ipc_between_actors_on_one_gpu_small_and_100mb(shared_gpu):
    a, b = shared_gpu
    for nbytes in (1024, 100 * MiB, 1024):
        assert ember.get(b.check.remote(a.produce_ipc.remote(nbytes)), timeout=60) is True
    assert ember.get(b.stats.remote(), timeout=30)["received:ipc"] == 3


@pytest.mark.timeout(120)
def test_auto_picks_ipc_on_one_gpu(shared_gpu):
    a, b = shared_gpu
    before = ember.get(b.stats.remote(), timeout=30).get("received:ipc", 0)
    assert ember.get(b.check_auto.remote(a.produce_auto.remote(1000)), timeout=60) is True
    assert ember.get(b.stats.remote(), timeout=30)["received:ipc"] == before + 1


@pytest.mark.timeout(120)
def test_driver_gets_a_host_copy_of_cuda_tensors(shared_gpu):
    value = ember.get(shared_gpu[0].produce_ipc.remote(4 * MiB), timeout=60)
    assert value.device.type == "cpu"
    assert torch.equal(value, torch.arange(MiB, dtype=torch.float32))


@pytest.mark.timeout(120)
def test_gloo_refuses_cuda_tensors(shared_gpu):
    with pytest.raises(TensorTransportError, match="carries CPU tensors"):
        ember.get(shared_gpu[0].produce_cuda_for_gloo.remote(), timeout=60)


@pytest.mark.timeout(120)
def test_producer_frees_cuda_tensors_when_the_last_ref_is_gone(shared_gpu):
    a, b = shared_gpu
    ref = a.produce_ipc.remote(16 * MiB)
    assert ember.get(b.check.remote(ref), timeout=60) is True
    assert ember.get(a.stats.remote(), timeout=30)["kept"] >= 1
    del ref
    gc.collect()
    deadline = time.monotonic() + 10
    while ember.get(a.stats.remote(), timeout=30)["kept"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ember.get(a.stats.remote(), timeout=30)["kept"] == 0


@pytest.mark.timeout(180)
def test_nccl_between_actors_on_two_gpus(cluster):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (NCCL cannot put two ranks on one GPU)")
    a, b = (GpuHolder.options(num_gpus=1).remote() for _ in range(2))
    ember.get([a.ready.remote(), b.ready.remote()], timeout=120)
    group = create_collective_group([a, b], backend="nccl")
    try:
        for nbytes in (1024, 100 * MiB):
            assert ember.get(b.check.remote(a.produce_nccl.remote(nbytes)), timeout=60) is True
        assert ember.get(b.stats.remote(), timeout=30)["received:nccl"] == 2
    finally:
        destroy_collective_group(group)
