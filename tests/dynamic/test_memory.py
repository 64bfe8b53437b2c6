"""Object memory: values are freed when no reference is left; a capped store spills to disk."""

from __future__ import annotations

import glob
import os
import time

import numpy as np
import pytest

import ember
from ember._system import shm
from ember.dynamic.api.driver import runtime


def _segments() -> list[str]:
    return glob.glob(os.path.join(shm.SHM_DIR, f"ember_{shm.session_id()}_*"))


@pytest.fixture
def small_store():
    ember.init(num_cpus=2, object_store_memory=50 * 1024 * 1024)
    yield
    ember.shutdown()


@pytest.mark.timeout(120)
def test_put_get_loop_does_not_grow_memory(small_store):
    core, _ = runtime()
    array = np.random.default_rng(0).random(1 << 17)  # 1 MiB
    baseline = len(core.objects)
    most_segments = most_objects = 0
    for i in range(10_000):
        out = ember.get(ember.put(array))
        assert out[7] == array[7]
        if i % 100 == 0:
            most_segments = max(most_segments, len(_segments()))
            most_objects = max(most_objects, len(core.objects))
    del out
    assert most_segments <= 5, f"{most_segments} segments alive in /dev/shm"
    assert most_objects <= baseline + 5, f"{most_objects} entries in the object table"
    stats = ember.nodes()[0]["ObjectStore"]
    assert stats["used"] <= 2 * array.nbytes + (1 << 20)
    assert stats["spilled"] == 0


@pytest.mark.timeout(120)
def test_task_results_and_arguments_are_freed(small_store):
    core, _ = runtime()

    @ember.remote
    def twice(x):
        return x * 2

    array = np.ones(1 << 17)
    for _ in range(200):
        out = ember.get(twice.remote(ember.put(array)))
        assert out[0] == 2
    del out
    assert len(core.objects) <= 5
    for _ in range(100):
        if len(_segments()) <= 2:
            break
        time.sleep(0.05)
    assert len(_segments()) <= 2


@pytest.mark.timeout(120)
def test_spilling_over_the_cap_and_restore(small_store):
    arrays = [np.full(20 * 1024 * 1024 // 8, i, dtype=np.float64) for i in range(10)]
    refs = [ember.put(a) for a in arrays]
    stats = ember.nodes()[0]["ObjectStore"]
    assert stats["spilled"] >= 7, stats
    assert stats["used"] <= stats["capacity"]
    for ref, array in zip(refs, arrays):
        np.testing.assert_array_equal(ember.get(ref), array)

    @ember.remote
    def first(x):
        return float(x[0])

    # Readers in several processes restore at once; each restore may spill what another
    # reader has just restored.
    for _ in range(2):
        firsts = [first.remote(r) for r in refs]
        np.testing.assert_array_equal(ember.get(refs[3]), arrays[3])
        assert ember.get(firsts) == [float(i) for i in range(10)]
    from ember._system import shm
    from ember._system.process import session_dir
    spill_dir = os.path.join(session_dir(shm.session_id()), "spill")
    del refs, ref
    deadline = time.monotonic() + 10
    while os.listdir(spill_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(spill_dir) == []


@pytest.mark.timeout(60)
def test_small_values_inline_large_values_in_shared_memory(small_store):
    before = len(_segments())
    small = ember.put(np.zeros(1000))  # 8 KB: inline
    assert len(_segments()) == before
    big = ember.put(np.zeros(1 << 16))  # 512 KiB: its own segment
    assert len(_segments()) == before + 1
    del small, big
    assert len(_segments()) == before


@pytest.mark.timeout(60)
def test_borrowed_ref_keeps_the_value_alive(small_store):
    @ember.remote
    class Keeper:
        def keep(self, refs):
            self.refs = refs

        def total(self):
            return float(ember.get(self.refs[0]).sum())

        def drop(self):
            self.refs = None

    keeper = Keeper.remote()
    ref = ember.put(np.ones(1 << 17))
    ember.get(keeper.keep.remote([ref]))
    del ref
    before = len(_segments())
    assert before == 1
    assert ember.get(keeper.total.remote()) == float(1 << 17)
    ember.get(keeper.drop.remote())
    deadline = time.monotonic() + 5
    while _segments() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _segments() == []


@pytest.mark.timeout(60)
def test_a_killed_actors_objects_and_spare_are_removed(small_store):
    """Objects an actor owned (and the spare segment its large put left) leave /dev/shm when
    the actor is killed, while a task result it made for the driver stays (Note [owner ends])."""

    @ember.remote
    class Maker:
        def make(self):
            self.mine = ember.put(np.ones(2_500_000))   # 20 MB, the actor's own
            return np.full(2_500_000, 2.0)              # a result the driver owns

        def pid(self):
            return os.getpid()

    maker = Maker.remote()
    pid = ember.get(maker.pid.remote())
    result = maker.make.remote()
    assert ember.get(result)[0] == 2.0
    assert len([p for p in _segments() if "_obj_" in p]) == 2
    deadline = time.monotonic() + 10     # the spare is made in the background, at low priority
    while not [p for p in _segments() if f"_spare_{pid:x}_" in p] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p for p in _segments() if f"_spare_{pid:x}_" in p]
    ember.kill(maker)
    deadline = time.monotonic() + 10
    while len([p for p in _segments() if "_obj_" in p]) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    left = _segments()
    assert [p for p in left if "_obj_" in p] == [shm.segment_path("obj", result.hex())], left
    assert not [p for p in left if f"_spare_{pid:x}_" in p], left
    assert ember.get(result)[-1] == 2.0
