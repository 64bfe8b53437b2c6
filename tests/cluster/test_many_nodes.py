"""Tasks, actors and objects across real nodes (``ember start`` in namespaces, tests/cluster)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(240)

PLACEMENT = """
import json, os, ember, numpy as np
ember.init(address="{address}")
@ember.remote
def where():
    return ember.get_runtime_context().get_node_id()
@ember.remote(resources={{"B": 1}})
def ip_of_b():
    return ember.util.get_node_ip_address()
@ember.remote(resources={{"B": 1}})
def on_b(x):
    return ember.get_runtime_context().get_node_id(), float(np.asarray(x).sum())
@ember.remote(resources={{"C": 1}})
def make_on_c():
    return np.full(12_500_000, 2.0)    # 100 MB, made on node C
@ember.remote(label_selector={{"zone": "c"}})
def labeled():
    return ember.get_runtime_context().get_node_id()
@ember.remote(label_selector={{"zone": "nowhere"}}, fallback_strategy=[{{"label_selector": {{"zone": "in(b,c)"}}}}])
class Fallback:
    def node(self):
        return ember.get_runtime_context().get_node_id()
@ember.remote(resources={{"C": 0.5}})
class OnC:
    def node(self):
        return ember.get_runtime_context().get_node_id()
big = ember.put(np.ones(12_500_000))  # 100 MB on the head
made = make_on_c.remote()
actor = OnC.remote()
out = {{"driver": ember.get_runtime_context().get_node_id(),
        "local": ember.get(where.remote(), timeout=60),
        "b_small": ember.get(on_b.remote(7), timeout=60),
        "b_big": ember.get(on_b.remote(big), timeout=60),
        "b_sums_c": ember.get(on_b.remote(made), timeout=60),
        "c_at_driver": float(ember.get(made, timeout=60).sum()),
        "actor": ember.get(actor.node.remote(), timeout=60),
        "labeled": ember.get(labeled.remote(), timeout=60),
        "fallback": ember.get(Fallback.remote().node.remote(), timeout=60),
        "nodes": sorted(n["NodeID"] for n in ember.nodes() if n["Alive"]),
        "ips": sorted(n["NodeManagerAddress"] for n in ember.nodes()),
        "ip_of_b": ember.get(ip_of_b.remote(), timeout=60),
        "cpus": ember.cluster_resources()["CPU"]}}
ember.shutdown()
print(json.dumps(out))
"""


def test_tasks_actors_and_100mb_arrays_across_three_nodes(cluster):
    """Custom resources and label selectors place work on each node; a 100 MB array made on one
    node is summed on another and fetched by the driver on a third, through TCP only."""
    head = cluster.start_node("--num-cpus", "1", head=True)
    cluster.start_node("--num-cpus", "1", "--resources", '{"B": 1}')
    cluster.start_node("--num-cpus", "1", "--resources", '{"C": 1}', "--labels",
                       '{"zone": "c"}')
    out = cluster.driver(PLACEMENT.format(address=cluster.address))
    ids = out["nodes"]
    assert len(ids) == 3 and out["driver"] in ids and out["cpus"] == 3
    b, c = out["b_small"][0], out["actor"]
    assert len({out["driver"], b, c}) == 3, out
    assert out["local"] == out["driver"]
    assert out["ip_of_b"] == cluster.nodes[1].ip
    assert out["ips"] == sorted(node.ip for node in cluster.nodes)
    assert out["labeled"] == out["fallback"] == c   # label_selector, then its fallback
    assert out["b_small"][1] == 7.0
    assert out["b_big"] == [b, 12_500_000.0]
    assert out["b_sums_c"] == [b, 25_000_000.0]
    assert out["c_at_driver"] == 25_000_000.0
    assert "head" in head.banner


PIPELINE = """
import json, subprocess, sys, time, ember, numpy as np
from ember.dag import InputNode
ember.init(address="{address}")
@ember.remote
class Stage:
    def __init__(self, k):
        self.k = k
    def node(self):
        return ember.get_runtime_context().get_node_id()
    def fwd(self, x):
        return x + self.k
stages = [Stage.options(resources={{r: 0.1}}).remote(k) for r, k in (("A", 1), ("B", 10), ("C", 100))]
nodes = [ember.get(s.node.remote(), timeout=60) for s in stages]
with InputNode() as inp:
    dag = stages[2].fwd.bind(stages[1].fwd.bind(stages[0].fwd.bind(inp)))
cdag = dag.compile()
status = subprocess.run([sys.executable, "-m", "ember.cli", "status"], capture_output=True,
                        text=True, timeout=60).stdout
small = [ember.get(cdag.execute(i), timeout=30) for i in range(20)]
arrays = [ember.get(cdag.execute(np.full(1 << 17, float(i))), timeout=30) for i in range(5)]
cdag.teardown()
print(json.dumps({{"nodes": nodes, "small": small, "status": status,
                   "arrays": [[float(a[0]), float(a[-1]), a.nbytes] for a in arrays]}}))
ember.shutdown()
"""


def test_compiled_pipeline_with_one_stage_per_node(cluster):
    """A 3-stage compiled graph with a stage on each node: small values and 1 MiB arrays."""
    cluster.start_node("--num-cpus", "2", "--resources", '{"A": 1}', head=True)
    cluster.start_node("--num-cpus", "2", "--resources", '{"B": 1}')
    cluster.start_node("--num-cpus", "2", "--resources", '{"C": 1}')
    out = cluster.driver(PIPELINE.format(address=cluster.address))
    assert len(set(out["nodes"])) == 3
    assert out["small"] == [i + 111 for i in range(20)]
    assert "3 node(s) alive" in out["status"] and "compiled graphs alive: 1" in out["status"]
    assert "actors alive: 3" in out["status"], out["status"]
    assert out["arrays"] == [[i + 111.0, i + 111.0, 1 << 20] for i in range(5)]


NODE_LOSS = """
import json, os, time, ember
from ember.exceptions import ActorDiedError, NodeDiedError, ObjectLostError
ember.init(address="{address}")
@ember.remote(resources={{"B": 1}})
class OnB:
    def node(self):
        return ember.get_runtime_context().get_node_id()
    def hang(self):
        time.sleep(600)
@ember.remote(resources={{"B": 0.5}}, max_retries=0)
def stuck():
    time.sleep(600)
@ember.remote(resources={{"B": 0.5}})
def big(retries):
    return bytes([retries]) * 1_000_000
@ember.remote(resources={{"B": 1}}, max_retries=2)
def retried(log):
    node = ember.get_runtime_context().get_node_id()
    with open(log, "a") as file:
        print(node, file=file, flush=True)
    time.sleep(4)
    return node
actor = OnB.remote()
ember.get(actor.node.remote(), timeout=60)
kept = big.options(max_retries=0).remote(0)
rebuilt = big.options(max_retries=1).remote(1)
ember.wait([kept, rebuilt], num_returns=2, timeout=60)
call, task = actor.hang.remote(), stuck.remote()
again = retried.remote("{log}")
while not os.path.exists("{log}"):
    time.sleep(0.05)
time.sleep(1)
print(json.dumps({{"ready": True}}), flush=True)
input()   # the test kills node B now
t0 = time.monotonic()
errors = []
for ref in (call, task, kept):
    try:
        ember.get(ref, timeout=60)
        errors.append("no error")
    except (ActorDiedError, NodeDiedError, ObjectLostError) as exc:
        errors.append(type(exc).__name__)
elapsed = time.monotonic() - t0
@ember.remote
def still_serving():
    return 1
print(json.dumps({{"errors": errors, "elapsed": elapsed,
                   "rebuilt": ember.get(rebuilt, timeout=60) == b"\\x01" * 1_000_000,
                   "retried": ember.get(again, timeout=60),
                   "alive": sorted(n["Alive"] for n in ember.nodes()),
                   "serving": ember.get(still_serving.remote(), timeout=30)}}))
ember.shutdown()
"""


def test_a_killed_node_fails_its_calls_within_15_s(cluster):
    """SIGKILL every process of a node mid-call: its actor call and its task fail with the
    node's death (ActorNodeDiedError, NodeDiedError), an object that lived only there is lost
    (ObjectLostError) unless its task may run again (then it is rebuilt), well within 15 s; a
    task with retries runs again on another node that fits; the rest serves on."""
    import json
    import subprocess
    import sys
    cluster.start_node("--num-cpus", "2", head=True)
    doomed = cluster.start_node("--num-cpus", "4", "--resources", '{"B": 3}')
    cluster.start_node("--num-cpus", "1", "--resources", '{"B": 1}')
    log = cluster.tmp / "retried.log"
    path = cluster.tmp / "loss.py"
    path.write_text(NODE_LOSS.format(address=cluster.address, log=log))
    head = cluster.nodes[0]
    spaces = ["--mount", "--net"] if head.netns else ["--mount"]
    proc = subprocess.Popen(["nsenter", "--target", str(head.pid), *spaces, sys.executable,
                             str(path)], env=cluster.env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline()) == {"ready": True}
        cluster.kill_node(doomed)
        proc.stdin.write("\n")
        proc.stdin.flush()
        out = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert out["errors"] == ["ActorNodeDiedError", "NodeDiedError", "ObjectLostError"], out
    assert out["elapsed"] < 15, out
    assert out["alive"] == [False, True, True] and out["serving"] == 1
    assert out["rebuilt"] is True   # its task ran again (Note [lineage])
    first, second = log.read_text().split()   # the retry ran on the node left with B
    assert first != second == out["retried"], (first, second, out)


BAD_TOKEN = """
import json, os, ember
from ember.exceptions import AuthenticationError
os.environ["EMBER_AUTH_TOKEN"] = "not the cluster's token"
try:
    ember.init(address="{address}")
    print(json.dumps({{"error": None}}))
except AuthenticationError as exc:
    print(json.dumps({{"error": str(exc)}}))
"""

GOOD = """
import json, ember
ember.init(address="{address}")
@ember.remote(resources={{"B": 1}})
def one():
    return 1
print(json.dumps({{"sum": sum(ember.get([one.remote() for _ in range(4)], timeout=60))}}))
ember.shutdown()
"""


def test_a_wrong_token_and_garbage_are_refused_and_the_cluster_serves_on(cluster):
    """A driver with another token gets AuthenticationError naming where its token came from;
    garbage sent to the head's port and to a node manager's port is dropped."""
    import json
    cluster.start_node("--num-cpus", "1", head=True)
    cluster.start_node("--num-cpus", "1", "--resources", '{"B": 1}')
    out = cluster.driver(BAD_TOKEN.format(address=cluster.address))
    assert out["error"] and "EMBER_AUTH_TOKEN" in out["error"], out
    record = json.loads(next((cluster.home / ".ember" / "nodes").glob("*.json")).read_text())
    host, port = record["nm_address"][len("tcp://"):].rsplit(":", 1)
    spaces = cluster.nodes[0]
    for target in ((cluster.nodes[0].ip, cluster.port), (host, int(port))):
        probe = (f"import socket; s = socket.create_connection({target!r}); "
                 f"s.sendall(b'\\x00garbage' * 1000); s.close()")
        nsenter = ["nsenter", "--target", str(spaces.pid), "--mount"] + (
            ["--net"] if spaces.netns else [])
        import subprocess
        import sys
        subprocess.run([*nsenter, sys.executable, "-c", probe], check=True, timeout=30)
    assert cluster.driver(GOOD.format(address=cluster.address)) == {"sum": 4}


def test_ember_stop_leaves_no_process_and_no_file(cluster):
    """``ember stop`` ends every node of this user on the machine: no process, no record, no
    session folder and nothing in any node's /dev/shm is left."""
    import json
    import os
    import subprocess
    cluster.start_node("--num-cpus", "1", head=True)
    cluster.start_node("--num-cpus", "1")
    records = [json.loads(p.read_text())
               for p in (cluster.home / ".ember" / "nodes").glob("*.json")]
    assert len(records) == 2
    cluster.driver(GOOD.format(address=cluster.address).replace('{"B": 1}', '{"CPU": 1}'))
    shm_before = cluster.ember("status", node=1)
    assert shm_before.returncode == 0 and "2 node(s) alive" in shm_before.stdout
    done = cluster.ember("stop", node=1)
    assert done.returncode == 0 and done.stdout.count("stopped ember node") == 2, done
    for node in cluster.nodes:
        node.proc.wait(timeout=30)
    leftover = subprocess.run(["pgrep", "-f", f"HOME={cluster.home}"], capture_output=True)
    for record in records:
        assert not os.path.exists(record["session_dir"])
    assert not list((cluster.home / ".ember" / "nodes").glob("*.json"))
    alive = [n.pid for n in cluster.nodes if _group_alive(n.pid)]
    assert not alive and leftover.returncode != 0


def _group_alive(pgid: int) -> bool:
    import os
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


GANG = """
import json, time, ember
from ember.util import placement_group, remove_placement_group
from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy
ember.init(address="{address}")
@ember.remote(num_cpus=1)
def where():
    return ember.get_runtime_context().get_node_id()
@ember.remote(num_cpus=1)
class Stage:
    def where(self):
        return ember.get_runtime_context().get_node_id()
@ember.remote(num_cpus=1)
def sleepy():
    time.sleep(1)
    return ember.get_runtime_context().get_node_id()
spilled = ember.get([sleepy.remote() for _ in range(4)], timeout=60)
spread = placement_group([{{"CPU": 1}}] * 3, strategy="STRICT_SPREAD")
ember.get(spread.ready(), timeout=60)
tasks = [where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
    spread, placement_group_bundle_index=i)).remote() for i in range(3)]
spread_nodes = ember.get(tasks, timeout=60)
remove_placement_group(spread)
pack = placement_group([{{"CPU": 1}}, {{"CPU": 1}}], strategy="STRICT_PACK")
ember.get(pack.ready(), timeout=60)
stages = [Stage.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
    pack, placement_group_bundle_index=i)).remote() for i in range(2)]
pack_nodes = ember.get([s.where.remote() for s in stages], timeout=60)
print(json.dumps({{"spread": spread_nodes, "pack": pack_nodes, "spilled": spilled,
                   "nodes": [n["NodeID"] for n in ember.nodes()],
                   "two_cpus": [n["NodeID"] for n in ember.nodes()
                                if n["Resources"]["CPU"] == 2]}}))
ember.shutdown()
"""


def test_placement_groups_spread_and_pack_over_nodes(cluster):
    """Long tasks beyond the head's CPUs spill to every other node; STRICT_SPREAD puts one
    bundle on each of 3 nodes (tasks in them run there); STRICT_PACK puts both bundles of a
    gang on one node (its actors run there)."""
    cluster.start_node("--num-cpus", "1", head=True)
    cluster.start_node("--num-cpus", "1")
    cluster.start_node("--num-cpus", "2")
    out = cluster.driver(GANG.format(address=cluster.address))
    assert sorted(out["spread"]) == sorted(out["nodes"]), out
    assert out["pack"] == out["two_cpus"] * 2, out
    assert set(out["spilled"]) == set(out["nodes"])   # 4 long tasks on 4 CPUs of 3 nodes


def test_a_node_whose_head_died_exits_with_an_error(cluster):
    """When the head is killed, a node's ``ember start --block`` stops its node and exits
    non-zero within a bounded time (so a container or srun step can restart it)."""
    import time
    head = cluster.start_node("--num-cpus", "1", head=True)
    node = cluster.start_node("--num-cpus", "1")
    cluster.kill_node(head)
    start = time.monotonic()
    assert node.proc.wait(timeout=30) == 1
    assert time.monotonic() - start < 15


TENSORS = """
import json, ember, torch
from ember.dag import InputNode
from ember.experimental.collective import create_collective_group
ember.init(address="{address}")
@ember.remote(num_cpus=0)
class Worker:
    def node(self):
        return ember.get_runtime_context().get_node_id()
    @ember.method(tensor_transport="gloo")
    def produce(self, n):
        return torch.arange(n, dtype=torch.float32)
    def consume(self, t):
        return float(t.sum())
    def scale(self, x):
        return torch.full((256,), float(x))
a = Worker.options(resources={{"A": 0.1}}).remote()
b = Worker.options(resources={{"B": 0.1}}).remote()
nodes = ember.get([a.node.remote(), b.node.remote()], timeout=60)
create_collective_group([a, b], backend="torch_gloo")
rdt = ember.get(b.consume.remote(a.produce.remote(1000)), timeout=60)
with InputNode() as inp:
    dag = b.consume.bind(a.scale.bind(inp).with_tensor_transport("nccl"))
cdag = dag.compile()
graph = [ember.get(cdag.execute(i), timeout=60) for i in range(3)]
cdag.teardown()
print(json.dumps({{"nodes": nodes, "rdt": rdt, "graph": graph}}))
ember.shutdown()
"""


def test_tensors_between_nodes_over_gloo(cluster):
    """CPU tensors between actors on two nodes: Ray Direct Transport's API over a gloo group,
    and a compiled graph's "nccl" edge, which on CPUs is a gloo group across the nodes."""
    pytest.importorskip("torch")
    cluster.start_node("--num-cpus", "1", "--resources", '{"A": 1}', head=True)
    cluster.start_node("--num-cpus", "1", "--resources", '{"B": 1}')
    out = cluster.driver(TENSORS.format(address=cluster.address))
    assert len(set(out["nodes"])) == 2
    assert out["rdt"] == 499500.0
    assert out["graph"] == [0.0, 256.0, 512.0]


KILLED_DRIVER = """
import json, os, signal, ember, numpy as np
ember.init(address="{address}")
@ember.remote(resources={{"B": 0.5}})
def big_on_b():
    return np.ones(2_500_000)        # 20 MB, owned by this driver, held on node B
@ember.remote(resources={{"B": 0.5}})
class Keeper:
    def keep(self):
        self.ref = ember.put(np.ones(2_500_000))   # owned by the actor, which dies with us
        return self.ref.hex()
mine = ember.put(np.ones(2_500_000))             # owned by this driver, on the head
on_b = big_on_b.remote()
ember.wait([on_b], timeout=60)
keeper = Keeper.remote()
print(json.dumps({{"head": [mine.hex()], "b": [on_b.hex(), ember.get(keeper.keep.remote(),
                                                                    timeout=60)]}}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""

SEGMENTS_GONE = """
import glob, json, time
ids = {ids!r}
def left():
    return [i for i in ids if glob.glob(f"/dev/shm/ember_*_obj_{{i}}")]
before = left()
deadline = time.monotonic() + 20
while left() and time.monotonic() < deadline:
    time.sleep(0.1)
print(json.dumps({{"left": left(), "spares": glob.glob("/dev/shm/ember_*_spare_*")}}))
"""


def test_a_killed_drivers_objects_leave_every_node(cluster):
    """Objects a SIGKILLed driver owned (its puts on the head, a task result on node B) and
    those of the actor that dies with it are removed from each node's /dev/shm within a
    bounded time, while the nodes keep running (Note [owner ends])."""
    cluster.start_node("--num-cpus", "1", head=True)
    cluster.start_node("--num-cpus", "1", "--resources", '{"B": 1}')
    out = cluster.driver(KILLED_DRIVER.format(address=cluster.address), check=False)
    assert set(out) == {"head", "b"}, out
    for node, ids in ((0, out["head"]), (1, out["b"])):
        seen = cluster.driver(SEGMENTS_GONE.format(ids=ids), node=node)
        assert seen["left"] == [], (node, seen)
        if node == 0:      # the head ran only the driver: its spare segment went with it
            assert seen["spares"] == [], seen
    assert "2 node(s) alive" in cluster.ember("status").stdout


KILLED_ACTOR = """
import glob, json, time, ember, numpy as np
ember.init(address="{address}")
@ember.remote(resources={{"B": 0.5}})
def big_on_b():
    return np.ones(2_500_000)        # 20 MB, held on node B, owned by the actor that asked
@ember.remote(resources={{"B": 0.25}})
def left_on_b(ids, wait_s):
    def left():
        return [i for i in ids if glob.glob(f"/dev/shm/ember_*_obj_{{i}}")]
    deadline = time.monotonic() + wait_s
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    return left()
@ember.remote(num_cpus=0, resources={{"H": 1}})
class Maker:
    def make(self):
        self.ref = big_on_b.remote()
        ember.wait([self.ref], timeout=60)
        return self.ref.hex()
maker = Maker.remote()
oid = ember.get(maker.make.remote(), timeout=60)
before = ember.get(left_on_b.remote([oid], 0), timeout=60)
ember.kill(maker)
after = ember.get(left_on_b.remote([oid], 20), timeout=60)
print(json.dumps({{"before": before, "after": after}}), flush=True)
"""


def test_a_killed_actors_objects_on_another_node_are_removed(cluster):
    """A task result held on node B and owned by an actor on the head leaves B's /dev/shm
    once the actor is killed, while its driver runs on (Note [owner ends])."""
    cluster.start_node("--num-cpus", "1", "--resources", '{"H": 1}', head=True)
    cluster.start_node("--num-cpus", "1", "--resources", '{"B": 1}')
    out = cluster.driver(KILLED_ACTOR.format(address=cluster.address))
    assert out["before"] and out["after"] == [], out


DETACHED_MADE = """
import json, ember
ember.init(address="{address}", namespace="app")
@ember.remote(resources={{"B": 0.5}})
class Counter:
    def __init__(self):
        self.n = 0
    def add(self):
        self.n += 1
        return self.n
kept = Counter.options(name="kept", lifetime="detached").remote()
gone = Counter.options(name="gone").remote()
print(json.dumps({{"kept": ember.get(kept.add.remote(), timeout=60),
                   "gone": ember.get(gone.add.remote(), timeout=60)}}), flush=True)
"""

DETACHED_FOUND = """
import json, time, ember
ember.init(address="{address}", namespace="app")
kept = ember.get_actor("kept")
n = ember.get(kept.add.remote(), timeout=60)
gone, deadline = "found", time.monotonic() + 15   # its end reaches the GCS in a while
while gone == "found" and time.monotonic() < deadline:
    try:
        ember.get_actor("gone")
        time.sleep(0.2)
    except ValueError:
        gone = "missing"
ember.kill(kept)
print(json.dumps({{"kept": n, "gone": gone}}), flush=True)
"""


def test_a_detached_actor_outlives_the_driver_that_made_it(cluster):
    """Ray's lifetimes in a cluster: when its driver exits, a detached actor lives on (a
    later driver of the same namespace finds it by name, state kept), a named one ends."""
    cluster.start_node("--num-cpus", "1", head=True)
    cluster.start_node("--num-cpus", "1", "--resources", '{"B": 1}')
    assert cluster.driver(DETACHED_MADE.format(address=cluster.address)) == {"kept": 1, "gone": 1}
    assert cluster.driver(DETACHED_FOUND.format(address=cluster.address)) == {
        "kept": 2, "gone": "missing"}


JOB_ENV = """
import json, os, ember
ember.init(address="{address}", runtime_env={{"env_vars": {{"JOB_VAR": "job"}}}})
@ember.remote(resources={{"B": 0.25}})
def read():
    return os.environ.get("JOB_VAR")
@ember.remote(resources={{"B": 0.25}})
def parent():
    return ember.get(read.remote(), timeout=60)
@ember.remote(resources={{"B": 0.25}})
class Reader:
    def read(self):
        return os.environ.get("JOB_VAR"), ember.get_runtime_context().runtime_env
reader = Reader.remote()
print(json.dumps({{
    "task": ember.get([read.remote() for _ in range(8)], timeout=60),
    "nested": ember.get(parent.remote(), timeout=60),
    "own": ember.get(read.options(runtime_env={{"env_vars": {{"JOB_VAR": "own"}}}}).remote(),
                     timeout=60),
    "actor": ember.get(reader.read.remote(), timeout=60),
    "driver": os.environ.get("JOB_VAR")}}), flush=True)
"""

NO_JOB_ENV = """
import json, os, ember
ember.init(address="{address}")
@ember.remote(resources={{"B": 0.25}})
def read():
    return os.environ.get("JOB_VAR")
print(json.dumps({{"task": ember.get([read.remote() for _ in range(8)], timeout=60)}}))
"""


def test_a_jobs_runtime_env_reaches_its_tasks_and_actors_on_other_nodes(cluster):
    """ember.init(address=..., runtime_env={"env_vars": ...}): every task and actor of the job
    on node B sees the variables, nested tasks inherit them, a task's own win; the driver and
    the next job's tasks do not see them."""
    cluster.start_node("--num-cpus", "1", head=True)
    cluster.start_node("--num-cpus", "2", "--resources", '{"B": 1}')
    out = cluster.driver(JOB_ENV.format(address=cluster.address))
    assert out == {"task": ["job"] * 8, "nested": "job", "own": "own",
                   "actor": ["job", {"env_vars": {"JOB_VAR": "job"}}], "driver": None}, out
    assert cluster.driver(NO_JOB_ENV.format(address=cluster.address)) == {"task": [None] * 8}
