"""Placement groups (Ray's API): bundles reserved whole, tasks and actors placed in them, pending
groups, removal, names, a GCS or node manager restart; and the placement policy as a pure
function over node records (the many-node paths run with real nodes in the cluster tests).

Each real-process test waits with a timeout; the module's leftover check (conftest) makes sure
no process or shared memory of the sessions remains.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import ember
from ember.dynamic.api import driver
from ember.dynamic.node_manager.bundles import bundle_resources, request_in_bundle
from ember.dynamic.gcs.placement_policy import place_bundles
from ember.dynamic.common.resources import NodeResources
from ember.exceptions import ActorDiedError, GetTimeoutError, SchedulingError, WorkerCrashedError
from ember.util import (get_current_placement_group, get_placement_group, placement_group,
                        placement_group_table, remove_placement_group)
from ember.util.placement_group import PlacementGroup
from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy


def in_bundle(pg, index=-1):
    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)


def wait_for(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.02)


@ember.remote
def where_am_i():
    pg = get_current_placement_group()
    return (pg.id.hex() if pg else None,
            ember.get_runtime_context().get_assigned_resources())


@ember.remote(num_cpus=0)
def sleeper(seconds):
    time.sleep(seconds)
    return seconds


@ember.remote
class Holder:
    def ready(self):
        return "ready"

    def group(self):
        pg = get_current_placement_group()
        return pg.id.hex() if pg else None


# ---- the placement policy over node records (pure) ------------------------------------------

NODES = {"a": {"address": "tcp://a", "resources": {"CPU": 4, "GPU": 1}},
         "b": {"address": "tcp://b", "resources": {"CPU": 4}, "available": {"CPU": 2}},
         "c": {"address": "tcp://c", "resources": {"CPU": 8}}}


def test_strict_spread_puts_each_bundle_on_its_own_node():
    placed = place_bundles([{"CPU": 1}] * 3, "STRICT_SPREAD", NODES)
    assert sorted(placed.values()) == ["a", "b", "c"]
    assert place_bundles([{"CPU": 1}] * 4, "STRICT_SPREAD", NODES) is None
    # uneven bundles: the GPU bundle must take "a", and the others still find nodes
    placed = place_bundles([{"CPU": 1}, {"CPU": 1}, {"GPU": 1}], "STRICT_SPREAD", NODES)
    assert placed[2] == "a" and {placed[0], placed[1]} == {"b", "c"}
    # a dead node does not count
    dead = {**NODES, "c": {**NODES["c"], "alive": False}}
    assert place_bundles([{"CPU": 1}] * 3, "STRICT_SPREAD", dead) is None
    # rescheduling: the bundles kept on "a" rule it out for the lost one
    assert place_bundles([{"CPU": 1}] * 2, "STRICT_SPREAD", NODES, fixed={0: "a"}) in (
        {1: "b"}, {1: "c"})


def test_spread_balances_and_pack_fills_one_node():
    spread = place_bundles([{"CPU": 1}] * 6, "SPREAD", NODES)
    assert sorted(spread.values()) == ["a", "a", "b", "b", "c", "c"]
    packed = place_bundles([{"CPU": 2}] * 3, "PACK", NODES)
    assert set(packed.values()) == {"c"}  # only c holds all three
    # too big for one node: PACK spills over as few nodes as it can, STRICT_PACK waits
    packed = place_bundles([{"CPU": 4}] * 3, "PACK", NODES)
    assert sorted(packed.values()) == ["a", "c", "c"]
    assert place_bundles([{"CPU": 4}] * 3, "STRICT_PACK", NODES) is None


def test_room_is_total_less_reserved_and_at_most_available():
    # b reports only 2 CPUs available: 3 do not fit there even though its total is 4
    assert place_bundles([{"CPU": 3}], "STRICT_PACK", {"b": NODES["b"]}) is None
    # bundles the GCS placed already count against a node's total
    reserved = {"c": {"CPU": 7}}
    assert place_bundles([{"CPU": 2}], "PACK", {"c": NODES["c"]}, reserved) is None
    assert place_bundles([{"CPU": 1}], "PACK", {"c": NODES["c"]}, reserved) == {0: "c"}
    # renamed bundle resources in a record never count as room
    record = {"resources": {"CPU": 1, "CPU_group_abc": 4}}
    assert place_bundles([{"CPU": 2}], "PACK", {"n": record}) is None


def test_a_bundle_task_gets_the_gpus_its_bundle_reserved():
    node = NodeResources({"GPU": 2, "CPU": 2})
    assert node.try_acquire({"GPU": 1}) == [0]       # someone else holds GPU 0
    reserved = node.try_acquire({"GPU": 1})          # the bundle gets GPU 1
    assert reserved == [1]
    node.add(bundle_resources({"GPU": 1}, "pg1", 0), {1: 1.0})
    request = request_in_bundle({"GPU": 1}, "pg1", 0)
    assert node.try_acquire(request) == [1]
    assert node.try_acquire(request) is None         # the bundle's GPU is taken
    node.release(request, [1])
    assert node.try_acquire(request_in_bundle({"GPU": 0.5}, "pg1", -1)) == [1]


def test_public_names():
    import sys
    import ember.util.scheduling_strategies as strategies
    module = sys.modules["ember.util.placement_group"]  # the attribute is the function, as in Ray
    names = {"PlacementGroup", "get_current_placement_group", "get_placement_group",
             "placement_group", "placement_group_table", "remove_placement_group"}
    assert set(module.__all__) == names and names <= set(ember.util.__all__)
    assert strategies.__all__ == ["PlacementGroupSchedulingStrategy"]


# ---- real processes with clusters of their own: GPU ids, GCS and node manager restarts -------

@ember.remote(num_cpus=0, num_gpus=1)
def gpu_ids():
    return ember.get_gpu_ids()


@pytest.mark.timeout(60)
def test_tasks_in_a_bundle_see_the_gpus_it_reserved():
    ember.init(num_cpus=2, num_gpus=2)  # logical GPUs: the ids are what is checked
    try:
        first = placement_group([{"GPU": 1}])
        second = placement_group([{"GPU": 1}])
        assert first.wait(20) and second.wait(20)
        assert ember.get(gpu_ids.options(scheduling_strategy=in_bundle(second, 0)).remote(),
                         timeout=30) == [1]
        assert ember.get(gpu_ids.options(scheduling_strategy=in_bundle(first)).remote(),
                         timeout=30) == [0]
        outside = gpu_ids.remote()
        assert ember.wait([outside], timeout=0.5)[0] == []  # both GPUs are reserved
        remove_placement_group(first)
        assert ember.get(outside, timeout=30) == [0]
    finally:
        ember.shutdown()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_groups_survive_a_gcs_restart(tmp_path, backend):
    storage = "memory" if backend == "memory" else f"sqlite://{tmp_path}/gcs.db"
    ember.init(num_cpus=2, _gcs_storage=storage)
    try:
        pg = placement_group([{"CPU": 1}], name="kept")
        assert pg.wait(20)
        watch = driver._driver
        old_pid = watch.procs[0].pid
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: watch.procs[0].pid != old_pid and watch.procs[0].poll() is None,
                 20, "the GCS restarted")
        assert placement_group_table(pg)["state"] == "CREATED"
        assert get_placement_group("kept") == pg
        assert ember.get(where_am_i.options(scheduling_strategy=in_bundle(pg, 0)).remote(),
                         timeout=30)[0] == pg.id.hex()
        remove_placement_group(pg)
        wait_for(lambda: ember.available_resources().get("CPU") == 2, 10, "CPUs are free")
    finally:
        ember.shutdown()


@pytest.mark.timeout(90)
def test_a_restarted_node_manager_gets_its_bundles_again():
    ember.init(num_cpus=2)
    try:
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
        assert pg.wait(20)
        watch = driver._driver
        old_pid = watch.procs[1].pid
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: watch.procs[1].pid != old_pid and watch.procs[1].poll() is None,
                 20, "the node manager restarted")
        wait_for(lambda: f"CPU_group_1_{pg.id.hex()}" in ember.cluster_resources(), 20,
                 "the bundles are reserved on the new node manager")
        assert placement_group_table(pg)["state"] == "CREATED"
        ref = where_am_i.options(scheduling_strategy=in_bundle(pg, 1)).remote()
        assert ember.get(ref, timeout=30)[0] == pg.id.hex()
    finally:
        ember.shutdown()


# ---- real processes: one cluster for the rest of the module ---------------------------------

@pytest.fixture
def groups(cluster):
    """Remove whatever groups a test left, so that the next test starts with a free node."""
    yield
    for entry in placement_group_table().values():
        if entry["state"] != "REMOVED":
            remove_placement_group(PlacementGroup(entry["placement_group_id"]))
    wait_for(lambda: ember.available_resources().get("CPU") == 2, 10, "the node's CPUs free")


@pytest.mark.timeout(60)
def test_pack_and_strict_pack_groups_become_ready(groups):
    pack = placement_group([{"CPU": 1}], strategy="PACK")
    assert ember.get(pack.ready(), timeout=20) == pack
    strict = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_PACK")
    ready, _ = ember.wait([strict.ready()], timeout=20)
    assert ready and strict.wait(1)
    assert strict.bundle_count == 2 and strict.bundle_specs == [{"CPU": 0.5}, {"CPU": 0.5}]
    table = placement_group_table(strict)
    assert table["state"] == "CREATED" and table["strategy"] == "STRICT_PACK"
    assert len(set(table["bundles_to_node_id"].values())) == 1
    assert "CPU" not in ember.available_resources()  # 1 + 0.5 + 0.5 of the node's 2 reserved
    assert ember.cluster_resources()["CPU"] == 2


@pytest.mark.timeout(60)
def test_tasks_and_actors_run_in_bundles_and_hold_their_resources(groups):
    pg = placement_group([{"CPU": 1}, {"CPU": 1, "custom": 1}])
    assert pg.wait(20)
    gid = pg.id.hex()
    total = ember.cluster_resources()
    assert total[f"CPU_group_{gid}"] == 2 and total[f"custom_group_1_{gid}"] == 1
    assert total[f"CPU_group_0_{gid}"] == 1 and total[f"bundle_group_{gid}"] == 2000
    available = ember.available_resources()
    assert "CPU" not in available and "custom" not in available  # the bundles hold them
    # a task outside the group cannot run: the group holds the node's CPUs
    outside = where_am_i.remote()
    assert ember.wait([outside], timeout=0.5)[0] == []

    actor = Holder.options(num_cpus=1, resources={"custom": 1},
                           scheduling_strategy=in_bundle(pg, 1)).remote()
    assert ember.get(actor.ready.remote(), timeout=30) == "ready"
    assert ember.get(actor.group.remote(), timeout=30) == gid
    available = ember.available_resources()
    assert f"CPU_group_1_{gid}" not in available and f"custom_group_1_{gid}" not in available
    assert available[f"CPU_group_{gid}"] == 1 and available[f"CPU_group_0_{gid}"] == 1

    group, assigned = ember.get(where_am_i.options(scheduling_strategy=in_bundle(pg, 0))
                                .remote(), timeout=30)
    assert group == gid and assigned[f"CPU_group_0_{gid}"] == 1
    remove_placement_group(pg)
    assert ember.get(outside, timeout=30)[0] is None  # the freed CPUs run it now


@pytest.mark.timeout(60)
def test_bundle_index_choice_and_requests_that_cannot_fit(groups):
    pg = placement_group([{"CPU": 1}, {"custom": 1}])
    assert pg.wait(20)
    gid = pg.id.hex()
    custom_task = where_am_i.options(num_cpus=0, resources={"custom": 1})
    _, assigned = ember.get(custom_task.options(scheduling_strategy=in_bundle(pg, 1)).remote(),
                            timeout=30)
    assert assigned[f"custom_group_1_{gid}"] == 1 and f"custom_group_{gid}" in assigned
    _, assigned = ember.get(custom_task.options(scheduling_strategy=in_bundle(pg)).remote(),
                            timeout=30)
    assert f"custom_group_{gid}" in assigned and f"custom_group_1_{gid}" not in assigned
    with pytest.raises(ValueError, match="can never fit in bundle 0"):
        custom_task.options(scheduling_strategy=in_bundle(pg, 0))
    with pytest.raises(ValueError, match="can never fit in bundle 1"):
        where_am_i.options(scheduling_strategy=in_bundle(pg, 1))  # it asks for a CPU
    with pytest.raises(ValueError, match="bundle index 2 is invalid"):
        where_am_i.options(scheduling_strategy=in_bundle(pg, 2))
    with pytest.raises(ValueError, match="can never fit"):
        Holder.options(num_gpus=1, scheduling_strategy=in_bundle(pg))
    # Ray's string strategies run as usual
    for strategy in ("DEFAULT", "SPREAD"):
        ref = where_am_i.options(num_cpus=0, scheduling_strategy=strategy).remote()
        assert ember.get(ref, timeout=30)[0] is None


@pytest.mark.timeout(60)
def test_a_group_waits_until_another_is_removed(groups):
    first = placement_group([{"CPU": 2}])
    assert first.wait(20)
    second = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert not second.wait(1)
    with pytest.raises(GetTimeoutError):
        ember.get(second.ready(), timeout=1)
    assert placement_group_table(second)["state"] == "PENDING"
    early = where_am_i.options(scheduling_strategy=in_bundle(second, 1)).remote()
    assert ember.wait([early], timeout=0.5)[0] == []  # waits for its group
    never = placement_group([{"CPU": 3}])  # bigger than the node: pending for good
    remove_placement_group(first)
    assert ember.get(second.ready(), timeout=20) == second
    assert ember.get(early, timeout=30)[0] == second.id.hex()
    assert not never.wait(0.5)


@pytest.mark.timeout(60)
def test_strict_spread_on_one_node_stays_pending_spread_does_not(groups):
    strict = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_SPREAD")
    assert not strict.wait(1)
    assert placement_group_table(strict)["state"] == "PENDING"
    loose = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="SPREAD")
    assert loose.wait(20)


@pytest.mark.timeout(60)
def test_remove_ends_actors_and_tasks_in_the_group_and_frees_resources(groups):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(20)
    gid = pg.id.hex()
    actor = Holder.options(scheduling_strategy=in_bundle(pg, 0)).remote()
    assert ember.get(actor.ready.remote(), timeout=30) == "ready"
    long_task = sleeper.options(max_retries=0, scheduling_strategy=in_bundle(pg, 1)).remote(60)
    wait_for(lambda: f"bundle_group_1_{gid}" in ember.available_resources()
             and ember.available_resources()[f"bundle_group_1_{gid}"] < 1000, 20,
             "the task runs in bundle 1")
    remove_placement_group(pg)
    assert ember.available_resources().get("CPU") == 2
    assert not any(gid in name for name in ember.cluster_resources())
    with pytest.raises(ActorDiedError, match="placement group"):
        ember.get(actor.ready.remote(), timeout=30)
    with pytest.raises(WorkerCrashedError):
        ember.get(long_task, timeout=30)
    with pytest.raises(SchedulingError, match="removed"):
        ember.get(where_am_i.options(scheduling_strategy=in_bundle(pg)).remote(), timeout=30)
    remove_placement_group(pg)  # again: nothing happens
    assert placement_group_table(pg)["state"] == "REMOVED"


@pytest.mark.timeout(60)
def test_bad_input_is_refused_clearly(groups):
    for bundles, match in ((None, "must be list"), ([], "empty list"), ([{}], "only 0"),
                           ([{"CPU": 0}], "only 0"), ([{"CPU": -1}], ">= 0"),
                           ([{"CPU": "1"}], ">= 0"), (["CPU"], "resource dictionaries")):
        with pytest.raises(ValueError, match=match):
            placement_group(bundles)
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        placement_group([{"CPU": 1}], strategy="TIGHT")
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    with pytest.raises(ValueError, match="scheduling_strategy='NEAR'"):
        where_am_i.options(scheduling_strategy="NEAR")
    with pytest.raises(TypeError, match="PlacementGroupSchedulingStrategy"):
        Holder.options(scheduling_strategy=42)
    with pytest.raises(TypeError, match="PlacementGroup"):
        PlacementGroupSchedulingStrategy("not a group")
    with pytest.raises(TypeError):
        remove_placement_group("not a group")
    with pytest.raises(ValueError, match="bundle index -2 is invalid"):
        pg = placement_group([{"CPU": 0.1}])
        where_am_i.options(scheduling_strategy=in_bundle(pg, -2))


@pytest.mark.timeout(60)
def test_get_placement_group_by_name(groups):
    pg = placement_group([{"CPU": 0.5}], name="named-pg")
    assert pg.wait(20)
    found = get_placement_group("named-pg")
    assert found == pg and found.bundle_specs == [{"CPU": 0.5}]
    assert placement_group_table(found)["name"] == "named-pg"
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 0.5}], name="named-pg")
    remove_placement_group(pg)
    with pytest.raises(ValueError, match="Failed to look up"):
        get_placement_group("named-pg")
    again = placement_group([{"CPU": 0.5}], name="named-pg")  # the name is free again
    assert get_placement_group("named-pg") == again
    assert get_current_placement_group() is None  # in the driver


@ember.remote
def parent(escape):
    child = where_am_i.options(scheduling_strategy="DEFAULT") if escape else where_am_i
    return get_current_placement_group().id.hex(), ember.get(child.remote(), timeout=30)[0]


@ember.remote
def submit_into(pg):
    return ember.get(where_am_i.options(scheduling_strategy=in_bundle(pg, 0)).remote(),
                     timeout=30)[0]


@pytest.mark.timeout(60)
def test_child_tasks_join_the_group_only_when_captured(groups):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(20)
    gid = pg.id.hex()
    capture = PlacementGroupSchedulingStrategy(pg, 0, placement_group_capture_child_tasks=True)
    # the child needs the bundle's only CPU: the parent lends it while it waits in get
    assert ember.get(parent.options(scheduling_strategy=capture).remote(False),
                     timeout=30) == (gid, gid)
    assert ember.get(parent.options(scheduling_strategy=capture).remote(True),
                     timeout=30) == (gid, None)
    assert ember.get(parent.options(scheduling_strategy=in_bundle(pg, 0)).remote(False),
                     timeout=30) == (gid, None)
    # a group handle travels: a task outside the group places work in it
    assert ember.get(submit_into.options(num_cpus=0).remote(pg), timeout=30) == gid
