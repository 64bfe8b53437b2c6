"""GPU objects on CPU: tensor_transport="gloo" between real actors over a collective group, the
driver's host copy, nesting, reference counting, errors, and the registry shared with compiled
graphs (Note [GPU objects], Note [one registry])."""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

import ember  # noqa: E402
from ember.exceptions import ObjectLostError, TensorTransportError  # noqa: E402
from ember.experimental.collective import (create_collective_group,  # noqa: E402
                                           destroy_collective_group, get_collective_groups)


@dataclasses.dataclass
class Batch:
    x: "torch.Tensor"
    label: str


@ember.remote
class Worker:
    def __init__(self):
        self.last = None

    @ember.method(tensor_transport="gloo")
    def produce(self, n):
        return torch.arange(n, dtype=torch.float32)

    @ember.method(tensor_transport="gloo")
    def produce_filled(self, n, value):
        return torch.full((n,), value, dtype=torch.float32)

    @ember.method(tensor_transport="gloo")
    def produce_nested(self, n):
        return {"a": torch.ones(n), "b": [torch.zeros(2, 3, dtype=torch.int64), "text", 7],
                "c": Batch(torch.full((n,), 2.0, dtype=torch.float64), "batch")}

    @ember.method(tensor_transport="gloo")
    def produce_kept(self, n):
        self.last = torch.arange(n, dtype=torch.float32)
        return self.last

    def grow_kept(self):
        self.last.resize_(self.last.numel() * 2)

    @ember.method(tensor_transport="nccl")
    def produce_cpu_for_nccl(self):
        return torch.ones(4)

    @ember.method(tensor_transport="auto")
    def produce_auto(self, n):
        return torch.arange(n, dtype=torch.float32)

    @ember.method(tensor_transport="object_store")
    def produce_by_store(self, n):
        return torch.arange(n, dtype=torch.float32)

    @ember.method(num_returns=2, tensor_transport="gloo")
    def produce_two(self, n):
        return torch.ones(n), {"w": torch.zeros(n)}

    def put_tensor(self, n):
        return [ember.put(torch.arange(n, dtype=torch.float32), _tensor_transport="gloo")]

    def consume(self, t):
        return float(t.sum())

    def consume_nested(self, v):
        return (float(v["a"].sum()), tuple(v["b"][0].shape), v["b"][1:], float(v["c"].x.sum()),
                v["c"].label, str(v["c"].x.dtype))

    def consume_ref_list(self, refs):
        return float(ember.get(refs[0]).sum())

    def wait_freed(self, timeout):
        from ember.experimental import wait_tensor_freed
        start = time.monotonic()
        wait_tensor_freed(self.last, timeout=timeout)
        return time.monotonic() - start

    def consume_self(self, t):
        return t is self.last

    def pid(self):
        return os.getpid()

    def stats(self):
        from ember.gpu.objects import objects
        return objects.stats()

    def receive_pool_idle(self):
        from ember.gpu.recv_pool import receive_pool
        return receive_pool.idle_bytes()


def _stats(actor):
    return ember.get(actor.stats.remote(), timeout=30)


def _wait_for(predicate, timeout=10.0):
    """Wait up to ``timeout`` s for ``predicate()`` (state another process changes)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def cluster():
    info = ember.init(num_cpus=2, num_gpus=0)
    yield info
    ember.shutdown()


@pytest.fixture(scope="module")
def actors(cluster):
    """Four actors (each new actor imports torch, seconds on a busy machine): three in a group,
    and an outsider that the last tests put in groups of their own and finally kill."""
    made = [Worker.remote() for _ in range(4)]
    group = create_collective_group(made[:3], backend="torch_gloo")
    yield made
    destroy_collective_group(group)


@pytest.fixture
def trio(actors):
    return actors[:3]


@pytest.fixture
def outsider(actors):
    return actors[3]


@pytest.mark.timeout(180)   # includes the module's actors starting (torch import each)
def test_issue_example_moves_the_tensor_over_gloo(trio):
    a, b, _ = trio
    before = _stats(b).get("received:gloo", 0)
    assert ember.get(b.consume.remote(a.produce.remote(1000)), timeout=30) == 499500.0
    assert _stats(b)["received:gloo"] == before + 1
    assert ember.get(a.produce.remote(8), timeout=30).tolist() == list(range(8))


@pytest.mark.timeout(60)
def test_large_receives_reuse_the_memory_of_dropped_ones(trio):
    """Note [receive pool]: the consumer's block comes back when the tensor is dropped (at once,
    with no GC cycle holding it), and the next receive lands in it with its own bytes."""
    a, b, _ = trio
    n = 1 << 20    # 4 MiB
    idle = ember.get(b.receive_pool_idle.remote(), timeout=30)
    for value in (1.0, 2.0, 3.0):
        assert ember.get(b.consume.remote(a.produce_filled.remote(n, value)), timeout=30) == n * value
        assert ember.get(b.receive_pool_idle.remote(), timeout=30) == max(idle, 4 * n)


@pytest.mark.timeout(60)
def test_driver_get_is_a_host_copy_through_the_object_store(trio):
    a = trio[0]
    big = ember.get(a.produce.remote(1 << 20), timeout=30)    # 4 MiB: a segment, not inline
    assert big.dtype == torch.float32 and big.shape == (1 << 20,)
    assert float(big[-1]) == (1 << 20) - 1
    big[0] = 5.0   # the copy is the driver's own, writable
    assert _stats(a)["sent:host"] >= 1


@pytest.mark.timeout(60)
def test_nested_values_keep_their_structure(trio):
    a, b, _ = trio
    ref = a.produce_nested.remote(5)
    expected = (5.0, (2, 3), ["text", 7], 10.0, "batch", "torch.float64")
    assert ember.get(b.consume_nested.remote(ref), timeout=30) == expected
    at_driver = ember.get(ref, timeout=30)
    assert at_driver["b"][1:] == ["text", 7] and at_driver["c"].label == "batch"
    assert at_driver["b"][0].dtype == torch.int64


@pytest.mark.timeout(60)
def test_one_ref_consumed_many_times_by_several_actors(trio):
    a, b, c = trio
    ref = a.produce.remote(100)
    results = ember.get([b.consume.remote(ref), c.consume.remote(ref), b.consume.remote(ref),
                         c.consume.remote(ref), a.consume.remote(ref)], timeout=30)
    assert results == [4950.0] * 5
    nested = ember.get(b.consume_ref_list.remote([ref]), timeout=30)   # a ref inside a list
    assert nested == 4950.0


@ember.remote
def total_in_a_task(t):
    return float(t.sum())


@pytest.mark.timeout(60)
def test_num_returns_and_a_plain_task_consumer(trio):
    a, b, _ = trio
    first, second = a.produce_two.remote(3)
    assert ember.get(b.consume.remote(first), timeout=30) == 3.0
    assert ember.get(second, timeout=30)["w"].tolist() == [0.0, 0.0, 0.0]
    before = _stats(a).get("sent:host", 0)
    assert ember.get(total_in_a_task.remote(first), timeout=60) == 3.0   # joins no group: host copy
    assert _stats(a)["sent:host"] == before + 1


@pytest.mark.timeout(60)
def test_importing_ember_loads_no_transport_until_one_is_used():
    code = ("import sys, ember, ember.dynamic.worker, ember.experimental.collective; "
            "bad = [m for m in sys.modules if m == 'torch' or m.split('.')[:2] in "
            "(['ember', 'gpu'], ['ember', 'engine'], ['ember', 'dag'], ['ember', 'channels'])]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(60)
def test_the_producer_gets_its_own_tensor_back(trio):
    a = trio[0]
    assert ember.get(a.consume_self.remote(a.produce_kept.remote(3)), timeout=30) is True


@pytest.mark.timeout(60)
def test_producer_frees_the_tensors_when_the_last_ref_is_gone(trio):
    a, b, _ = trio
    assert _wait_for(lambda: _stats(a)["kept"] == 0)
    ref = a.produce.remote(10)
    assert ember.get(b.consume.remote(ref), timeout=30) == 45.0
    assert _stats(a)["kept"] == 1
    del ref
    gc.collect()
    assert _wait_for(lambda: _stats(a)["kept"] == 0)


@pytest.mark.timeout(60)
def test_wait_tensor_freed_returns_once_the_refs_are_gone(trio):
    a = trio[0]
    ref = a.produce_kept.remote(4)
    ember.wait([ref], timeout=30)
    with pytest.raises(TimeoutError):
        ember.get(a.wait_freed.remote(0.2), timeout=30)
    del ref
    gc.collect()
    assert ember.get(a.wait_freed.remote(10), timeout=30) < 10


@pytest.mark.timeout(60)
def test_put_with_tensor_transport_in_an_actor(trio):
    a, b, _ = trio
    [ref] = ember.get(a.put_tensor.remote(6), timeout=30)
    assert ember.get(b.consume.remote(ref), timeout=30) == 15.0
    assert ember.get(ref, timeout=30).tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(TensorTransportError, match="not an actor"):
        ember.put(torch.ones(2), _tensor_transport="gloo")   # the driver keeps no tensors
    assert ember.get(ember.put(torch.ones(2), _tensor_transport="object_store")).tolist() == [1, 1]


@pytest.mark.timeout(60)
def test_auto_uses_gloo_for_cpu_tensors_and_object_store_passes_through(trio):
    a, b, _ = trio
    before = _stats(b).get("received:gloo", 0)
    assert ember.get(b.consume.remote(a.produce_auto.remote(4)), timeout=30) == 6.0
    assert _stats(b)["received:gloo"] == before + 1
    assert ember.get(b.consume.remote(a.produce_by_store.remote(4)), timeout=30) == 6.0
    assert _stats(b)["received:gloo"] == before + 1


@pytest.mark.timeout(60)
def test_consumer_outside_the_group_is_refused(trio, outsider):
    with pytest.raises(TensorTransportError, match="not in a gloo collective group"):
        ember.get(outsider.consume.remote(trio[0].produce.remote(4)), timeout=30)


@pytest.mark.timeout(60)
def test_tensor_on_a_device_the_transport_cannot_carry(trio):
    with pytest.raises(TensorTransportError, match="carries CUDA tensors"):
        ember.get(trio[0].produce_cpu_for_nccl.remote(), timeout=30)


@pytest.mark.timeout(60)
def test_shape_changed_after_return_is_refused_not_hung(trio):
    a, b, _ = trio
    ref = a.produce_kept.remote(4)
    ember.get(a.grow_kept.remote(), timeout=30)
    with pytest.raises(TensorTransportError, match=r"now has shape \(8,\).*declares shape \(4,\)"):
        ember.get(b.consume.remote(ref), timeout=30)


@pytest.mark.timeout(60)
def test_destroyed_group_no_longer_carries(trio, outsider):
    p, q = outsider, trio[1]
    group = create_collective_group([p, q], backend="gloo", name="short-lived")
    assert [g.name for g in get_collective_groups([p, q])] == ["short-lived"]
    assert get_collective_groups([p], backend="nccl") == []
    assert ember.get(q.consume.remote(p.produce.remote(3)), timeout=30) == 3.0
    destroy_collective_group("short-lived")
    with pytest.raises(TensorTransportError, match="not in a gloo collective group"):
        ember.get(q.consume.remote(p.produce.remote(3)), timeout=30)
    with pytest.raises(ValueError):
        destroy_collective_group(group)


@pytest.mark.timeout(90)
def test_producer_death_is_object_lost_within_bounded_time(trio, outsider):
    p, q = outsider, trio[2]
    group = create_collective_group([p, q])
    try:
        ref = p.produce.remote(16)
        ember.wait([ref], timeout=30)
        os.kill(ember.get(p.pid.remote(), timeout=30), signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(ObjectLostError):
            ember.get(q.consume.remote(ref), timeout=30)
        with pytest.raises(ObjectLostError):
            ember.get(ref, timeout=30)
        assert time.monotonic() - start < 10
    finally:
        destroy_collective_group(group)
