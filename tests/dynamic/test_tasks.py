"""Remote functions: arguments, refs as arguments, nested tasks, options, placement, retries."""

from __future__ import annotations

import os
import time

import pytest

import ember
from ember.exceptions import SchedulingError, TaskError, WorkerCrashedError

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
def add(x, y=0, *, z=0):
    return x + y + z


@pytest.mark.timeout(30)
def test_args_and_kwargs():
    assert ember.get(add.remote(1)) == 1
    assert ember.get(add.remote(1, 2)) == 3
    assert ember.get(add.remote(1, y=2, z=3)) == 6
    assert ember.get([add.remote(i, i) for i in range(20)]) == [2 * i for i in range(20)]


@pytest.mark.timeout(30)
def test_workers_are_reused_and_capped_by_cpus():
    @ember.remote
    def pid(_):
        time.sleep(0.01)
        return os.getpid()

    pids = set(ember.get([pid.remote(i) for i in range(40)]))
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2  # num_cpus=2
    again = set(ember.get([pid.remote(i) for i in range(10)]))
    assert again & pids, "workers were not reused"
    assert ember.get(add.options(name="a-named-task").remote(1, 1)) == 2


@pytest.mark.timeout(30)
def test_top_level_refs_are_resolved():
    small = ember.put(10)
    big = ember.put(list(range(100_000)))  # > 100 KiB: travels through shared memory

    @ember.remote
    def describe(a, b, *, c):
        return type(a).__name__, a, len(b), b[-1], c

    out = ember.get(describe.remote(small, big, c=add.remote(1, 1)))
    assert out == ("int", 10, 100_000, 99_999, 2)


@pytest.mark.timeout(30)
def test_refs_nested_in_a_list_are_passed_as_refs():
    refs = [ember.put(i) for i in range(3)]

    @ember.remote
    def inspect_refs(items):
        assert all(isinstance(r, ember.ObjectRef) for r in items)
        return sum(ember.get(items))

    assert ember.get(inspect_refs.remote(refs)) == 3
    # The caller's refs still work after a task borrowed them.
    assert ember.get(refs) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_tasks_submit_tasks():
    @ember.remote
    def leaf(x):
        return x * 2

    @ember.remote
    def parent(n):
        return sum(ember.get([leaf.remote(i) for i in range(n)]))

    # More blocked parents than CPUs: a worker waiting in get lends its CPU.
    assert ember.get([parent.remote(4) for _ in range(3)]) == [12, 12, 12]


@pytest.mark.timeout(30)
def test_a_task_returns_a_ref_made_inside_it():
    @ember.remote
    def make():
        return ember.put("inner")

    inner = ember.get(make.remote())
    assert isinstance(inner, ember.ObjectRef)
    assert ember.get(inner) == "inner"


@pytest.mark.timeout(30)
def test_num_returns():
    @ember.remote(num_returns=2)
    def pair(x):
        return x, x + 1

    a, b = pair.remote(1)
    assert ember.get([a, b]) == [1, 2]
    c, d, e = pair.options(num_returns=3).remote(7)  # declared 2, returns 2: a clear error
    with pytest.raises(TaskError, match="num_returns=3"):
        ember.get(c)
    x, y, z = add.options(num_returns=3).remote([7], [8], z=[9])
    assert ember.get([x, y, z]) == [7, 8, 9]


@pytest.mark.timeout(30)
def test_resources_cpu_gpu_custom():
    @ember.remote(num_cpus=2)
    def two_cpus():
        return "two"

    @ember.remote(num_cpus=0.5, resources={"custom": 1})
    def custom():
        return ember.get_gpu_ids()

    assert ember.get(two_cpus.remote()) == "two"
    assert ember.get(custom.remote()) == []
    assert ember.get(add.options(num_gpus=0).remote(1)) == 1


@pytest.mark.timeout(30)
def test_idle_leases_are_all_given_back():
    @ember.remote
    def nap(t):
        time.sleep(t)

    @ember.remote(num_cpus=2)
    def whole_node():
        return "both CPUs"

    for _ in range(3):
        ember.get([nap.remote(0.05) for _ in range(6)])  # two leases that end together
        assert ember.get(whole_node.remote(), timeout=10) == "both CPUs"


@pytest.mark.timeout(30)
def test_custom_resource_limits_concurrency():
    @ember.remote(num_cpus=0, resources={"custom": 1})
    def hold(t):
        start = time.monotonic()
        time.sleep(t)
        return start, time.monotonic()

    spans = sorted(ember.get([hold.remote(0.3) for _ in range(3)]))
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.01, f"tasks needing the only 'custom' overlapped: {spans}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("options, name", [
    ({"num_cpus": 3}, "CPU"), ({"num_gpus": 1}, "GPU"), ({"resources": {"tpu": 1}}, "tpu")])
def test_infeasible_task_fails_at_get(options, name):
    ref = add.options(**options).remote(1)
    start = time.monotonic()
    with pytest.raises(SchedulingError, match=name) as info:
        ember.get(ref, timeout=10)
    assert time.monotonic() - start < 5
    assert "ember.init" in str(info.value)


@ember.remote(max_retries=2)
def crash_until(marker_dir, succeed_on):
    """Exit the worker abruptly on each attempt before attempt ``succeed_on``."""
    attempt = len(os.listdir(marker_dir)) + 1
    open(os.path.join(marker_dir, str(attempt)), "w").close()
    if attempt < succeed_on:
        os._exit(1)
    return attempt


@pytest.mark.timeout(60)
def test_worker_crash_is_retried(tmp_path):
    assert ember.get(crash_until.remote(str(tmp_path), 3), timeout=30) == 3


@pytest.mark.timeout(60)
def test_worker_crash_without_retries_left_is_worker_crashed_error(tmp_path):
    ref = crash_until.options(max_retries=1).remote(str(tmp_path), 10)
    with pytest.raises(WorkerCrashedError, match="max_retries"):
        ember.get(ref, timeout=30)
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # first run plus one retry
    assert ember.get(add.remote(5)) == 5  # the pool recovered


@ember.remote(max_retries=3, retry_exceptions=[KeyError])
def flaky(marker_dir, fail_times, error):
    attempt = len(os.listdir(marker_dir)) + 1
    open(os.path.join(marker_dir, str(attempt)), "w").close()
    if attempt <= fail_times:
        raise error(f"attempt {attempt}")
    return attempt


@pytest.mark.timeout(60)
def test_retry_exceptions(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    assert ember.get(flaky.remote(str(tmp_path / "a"), 2, KeyError)) == 3
    with pytest.raises(ValueError):  # not in retry_exceptions: no retry
        ember.get(flaky.remote(str(tmp_path / "b"), 2, ValueError))
    assert len(os.listdir(tmp_path / "b")) == 1
    with pytest.raises(KeyError):  # retries exhausted
        ember.get(flaky.options(max_retries=1).remote(str(tmp_path / "c"), 5, KeyError))
    assert len(os.listdir(tmp_path / "c")) == 2
    # Application errors are not retried by default.
    with pytest.raises(KeyError):
        ember.get(flaky.options(retry_exceptions=False).remote(str(tmp_path / "b"), 9,
                                                               KeyError))
    assert len(os.listdir(tmp_path / "b")) == 2


@pytest.mark.timeout(30)
def test_retry_exceptions_true_retries_any_error(tmp_path):
    assert ember.get(flaky.options(retry_exceptions=True).remote(
        str(tmp_path), 1, RuntimeError)) == 2
