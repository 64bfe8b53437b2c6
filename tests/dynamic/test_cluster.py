"""Cluster state: resources, nodes and GPU ids as seen by the driver and by tasks."""

from __future__ import annotations

import time

import pytest

import ember

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.mark.timeout(30)
def test_cluster_resources():
    total = ember.cluster_resources()
    assert total["CPU"] == 2
    assert total["custom"] == 1
    assert total.get("GPU", 0) == 0
    assert total["memory"] > 0


@pytest.mark.timeout(30)
def test_available_resources_follow_running_work():
    @ember.remote(num_cpus=1, resources={"custom": 1})
    def hold(t):
        time.sleep(t)

    def settled(expected_cpu, expected_custom):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            free = ember.available_resources()
            if free.get("CPU", 0) == expected_cpu and free.get("custom", 0) == expected_custom:
                return True
            time.sleep(0.05)
        return False

    assert settled(2, 1)
    ref = hold.remote(1.5)
    assert settled(1, 0)
    ember.get(ref)
    assert settled(2, 1)  # the idle lease is given back


@pytest.mark.timeout(30)
def test_nodes():
    nodes = ember.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert node["Alive"] is True
    assert node["Resources"]["CPU"] == 2
    assert {"used", "capacity", "objects", "spilled"} <= set(node["ObjectStore"])


@pytest.mark.timeout(30)
def test_get_gpu_ids_without_gpus():
    @ember.remote
    def gpus():
        import os
        return ember.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    @ember.remote
    class Actor:
        def gpus(self):
            return ember.get_gpu_ids()

    assert ember.get(gpus.remote()) == ([], "")
    assert ember.get(Actor.remote().gpus.remote()) == []
    assert ember.get_gpu_ids() == []


@pytest.mark.timeout(30)
def test_public_api_names():
    expected = {"ActorHandle", "ObjectRef", "available_resources", "cancel", "cluster_resources",
                "exceptions", "get", "get_actor", "get_gpu_ids", "get_runtime_context", "init",
                "is_initialized", "kill", "method", "nodes", "put", "remote", "shutdown", "util",
                "wait", "__version__"}
    assert set(ember.__all__) == expected
    assert all(hasattr(ember, name) for name in expected)


def _gcs(kind, *fields):
    from ember.dynamic.api.driver import runtime
    core, _ = runtime()
    return core.endpoint.call(core.gcs_address, kind, *fields)


@pytest.mark.timeout(30)
def test_gcs_tables():
    from ember._system import shm
    nodes = dict(_gcs("kv_items", "nodes"))
    assert nodes[shm.session_id()]["resources"]["CPU"] == 2
    jobs = dict(_gcs("kv_items", "jobs"))
    assert jobs[shm.session_id()]["driver_pid"] == __import__("os").getpid()

    @ember.remote
    class Named:
        def ping(self):
            return "pong"

    @ember.remote
    def task():
        return 1

    actor = Named.options(name="gcs-named").remote()
    assert ember.get(actor.ping.remote()) == "pong"
    actors = dict(_gcs("kv_items", "actors"))
    info = actors[actor._actor_id]
    assert info["class_name"] == "Named" and info["state"] == "ALIVE" and info["address"]
    namespace = ember.get_runtime_context().namespace  # the job's (anonymous) namespace
    assert _gcs("get_named_actor", "gcs-named", namespace)["actor_id"] == actor._actor_id
    # Each function is exported once and then referred to by its id.
    before = len(_gcs("kv_items", "functions"))
    assert ember.get([task.remote() for _ in range(20)]) == [1] * 20
    assert len(_gcs("kv_items", "functions")) == before + 1
    ember.kill(actor)
    deadline = time.monotonic() + 5
    while _gcs("kv_get", "actors", actor._actor_id)["state"] != "DEAD":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _gcs("get_named_actor", "gcs-named", namespace) is None


@pytest.mark.timeout(30)
def test_gcs_kv_and_pubsub():
    import threading
    from ember.dynamic.api.driver import runtime
    core, _ = runtime()
    seen = []
    got = threading.Event()

    def on_pub(channel, key, value):
        seen.append((channel, key, value))
        got.set()

    core.endpoint.on("pub", on_pub)
    core.endpoint.send(core.gcs_address, "subscribe", "kv", core.address)
    assert _gcs("kv_put", "kv", "k", {"v": 1}, True) is True
    assert _gcs("kv_put", "kv", "k", {"v": 2}, False) is False  # no overwrite
    assert _gcs("kv_get", "kv", "k") == {"v": 1}
    assert got.wait(5)
    assert seen == [("kv", "k", {"v": 1})]
    assert _gcs("kv_del", "kv", "k") is True
    assert _gcs("kv_get", "kv", "k") is None
