"""ember.util: Ray's ray.util helpers (ActorPool, get_node_ip_address)."""

from __future__ import annotations

import time

import pytest

import ember
from ember.util import ActorPool

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
class Doubler:
    def double(self, x):
        time.sleep(1.0 if x == 0 else 0.0)  # the first value finishes last
        return 2 * x


@pytest.mark.timeout(60)
def test_actor_pool_map_keeps_order_and_unordered_does_not():
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(6))) == [0, 2, 4, 6, 8, 10]
    unordered = list(pool.map_unordered(lambda a, v: a.double.remote(v), range(6)))
    assert sorted(unordered) == [0, 2, 4, 6, 8, 10] and unordered[-1] == 0


@pytest.mark.timeout(60)
def test_actor_pool_submit_queue_and_membership():
    a, b = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a])
    pool.submit(lambda actor, v: actor.double.remote(v), 0)
    pool.submit(lambda actor, v: actor.double.remote(v), 5)  # waits for the only actor
    assert not pool.has_free() and pool.pop_idle() is None
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.01)
    assert pool.get_next() == 0 and pool.get_next() == 10
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    pool.push(b)
    with pytest.raises(ValueError, match="already"):
        pool.push(a)
    assert pool.pop_idle() in (a, b) and pool.has_free()


@pytest.mark.timeout(30)
def test_list_named_actors():
    kept = [Doubler.options(name="listed-a").remote(),
            Doubler.options(name="listed-b", namespace="elsewhere").remote()]
    ember.get([k.__ray_ready__.remote() for k in kept])
    assert "listed-a" in ember.util.list_named_actors()
    assert "listed-b" not in ember.util.list_named_actors()
    everywhere = ember.util.list_named_actors(all_namespaces=True)
    assert {"name": "listed-b", "namespace": "elsewhere"} in everywhere
    ember.kill(kept[0])
    deadline = time.monotonic() + 10
    while "listed-a" in ember.util.list_named_actors():
        assert time.monotonic() < deadline
        time.sleep(0.02)
