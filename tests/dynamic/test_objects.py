"""get, put, wait, cancel, ``await ref``, and zero-copy reads of arrays and tensors."""

from __future__ import annotations

import asyncio
import mmap
import time

import numpy as np
import pytest

import ember
from ember.exceptions import EmberError, GetTimeoutError, TaskCancelledError

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
def sleep_then(t, value=None):
    time.sleep(t)
    return value


@ember.remote
def echo(x):
    return x


@pytest.mark.timeout(30)
def test_put_get_values():
    values = [None, 1, "text", {"a": [1, 2]}, b"x" * 300_000, list(range(50_000))]
    refs = [ember.put(v) for v in values]
    assert ember.get(refs) == values
    assert ember.get(tuple(refs[:2])) == [None, 1]
    with pytest.raises(TypeError):
        ember.put(refs[0])
    with pytest.raises(TypeError):
        ember.get("not a ref")


@pytest.mark.timeout(30)
def test_get_timeout():
    ref = sleep_then.remote(3, "late")
    start = time.monotonic()
    with pytest.raises(GetTimeoutError) as info:
        ember.get(ref, timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, EmberError)
    with pytest.raises(TimeoutError):
        ember.get([ember.put(1), ref], timeout=0.1)
    ember.cancel(ref)


@pytest.mark.timeout(30)
def test_wait_num_returns_and_timeout():
    fast = [sleep_then.remote(0, i) for i in range(2)]
    slow = sleep_then.remote(5)
    refs = fast + [slow]
    ready, rest = ember.wait(refs, num_returns=2, timeout=10)
    assert set(ready) == set(fast) and rest == [slow]
    ready, rest = ember.wait(refs)  # num_returns=1
    assert len(ready) == 1 and len(rest) == 2 and ready[0] in fast
    start = time.monotonic()
    ready, rest = ember.wait(refs, num_returns=3, timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2
    assert set(ready) == set(fast) and rest == [slow]
    ready, rest = ember.wait(refs, num_returns=0)
    assert ready == [] and rest == refs
    ready, rest = ember.wait(refs, num_returns=2, fetch_local=False)
    assert set(ready) == set(fast)
    ready, rest = ember.wait([slow], timeout=0)
    assert ready == [] and rest == [slow]
    with pytest.raises(ValueError):
        ember.wait(refs, num_returns=4)
    with pytest.raises(TypeError):
        ember.wait(fast[0])
    ember.cancel(slow)


@pytest.mark.timeout(30)
def test_cancel_queued_task():
    # Fill both CPUs, then queue one more: it never starts.
    blockers = [sleep_then.remote(1.0) for _ in range(2)]
    queued = sleep_then.remote(0, "never")
    ember.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ember.get(queued, timeout=10)
    ember.get(blockers)


@pytest.mark.timeout(30)
def test_cancel_running_task():
    @ember.remote
    def spin():
        while True:
            time.sleep(0.01)

    ref = spin.remote()
    time.sleep(1.0)  # running by now
    start = time.monotonic()
    ember.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=10)
    assert time.monotonic() - start < 2
    assert ember.get(echo.remote("after")) == "after"


@pytest.mark.timeout(30)
def test_cancel_force_kills_the_worker():
    @ember.remote(max_retries=3)
    def block():
        time.sleep(60)

    ref = block.remote()
    time.sleep(1.0)
    ember.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=10)  # not retried
    assert ember.get(echo.remote("after")) == "after"


@pytest.mark.timeout(30)
def test_await_ref_in_asyncio():
    async def main():
        a = echo.remote(1)
        b = sleep_then.remote(0.2, 2)
        values = await asyncio.gather(a, b, ember.put(3))
        with pytest.raises(ZeroDivisionError):
            await boom.remote()
        return values

    @ember.remote
    def boom():
        return 1 / 0

    assert asyncio.run(main()) == [1, 2, 3]


def _owner_of_memory(array: np.ndarray):
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


@pytest.mark.timeout(30)
def test_numpy_arrays_are_zero_copy_and_read_only():
    array = np.arange(1 << 18, dtype=np.float64)  # 2 MiB
    out = ember.get(ember.put(array))
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable is False
    assert isinstance(_owner_of_memory(out), (memoryview, mmap.mmap))
    with pytest.raises(ValueError):
        out[0] = 1
    from_task = ember.get(echo.remote(array))
    np.testing.assert_array_equal(from_task, array)
    assert from_task.flags.writeable is False
    assert isinstance(_owner_of_memory(from_task), (memoryview, mmap.mmap))
    # Nested in a container as well.
    box = ember.get(ember.put({"a": array, "b": [array[:10]]}))
    assert box["a"].flags.writeable is False
    np.testing.assert_array_equal(box["b"][0], array[:10])


@pytest.mark.timeout(30)
def test_numpy_arrays_survive_their_ref():
    ref = ember.put(np.full(1 << 17, 7, dtype=np.int64))
    out = ember.get(ref)
    del ref
    ember.get([ember.put(np.zeros(1 << 17)) for _ in range(5)])
    assert int(out.sum()) == 7 * (1 << 17)


@pytest.mark.timeout(60)
def test_torch_cpu_tensors_roundtrip():
    torch = pytest.importorskip("torch")
    tensor = torch.arange(1 << 18, dtype=torch.float32).reshape(512, 512)
    out = ember.get(ember.put(tensor))
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, tensor)

    @ember.remote
    def double(t):
        return t * 2

    assert torch.equal(ember.get(double.remote(tensor)), tensor * 2)
    small = torch.tensor([1, 2, 3])
    assert torch.equal(ember.get(ember.put(small)), small)


@pytest.mark.timeout(30)
def test_cancel_interrupts_a_blocking_call():
    @ember.remote(retry_exceptions=True)
    def nap():
        time.sleep(60)

    ref = nap.remote()
    time.sleep(1.0)
    start = time.monotonic()
    ember.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=10)  # cancelled tasks are not retried
    assert time.monotonic() - start < 2
