"""Failures of compiled graphs over real processes: SIGKILLed actors, shutdown, interpreter exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ember
from ember.dag import InputNode
from ember.exceptions import ActorDiedError, DAGTeardownError

from .conftest import channel_files

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
class Stage:
    def fwd(self, x):
        return x + 1

    def slow(self, x):
        time.sleep(x)
        return x

    def pid(self):
        return os.getpid()


def pipeline(stages):
    with InputNode() as inp:
        return stages[2].fwd.bind(stages[1].slow.bind(stages[0].fwd.bind(inp)))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim", [0, 1, 2])
def test_sigkilled_actor_fails_pending_and_later_gets_quickly(victim):
    stages = [Stage.remote() for _ in range(3)]
    pids = ember.get([s.pid.remote() for s in stages], timeout=30)
    before = set(channel_files())
    cdag = pipeline(stages).compile()
    ours = set(channel_files()) - before
    assert cdag.execute(-1).get(timeout=10) == 1        # slow(0) = 0, then + 1
    pending = [cdag.execute(-0.5) for _ in range(3)]    # each takes 0.5 s in the middle stage
    time.sleep(0.2)
    os.kill(pids[victim], signal.SIGKILL)
    start = time.monotonic()
    for ref in pending:
        with pytest.raises(ActorDiedError):
            ref.get(timeout=30)
    assert time.monotonic() - start < 5, "ActorDiedError must come within seconds"
    with pytest.raises(ActorDiedError):
        cdag.execute(-1)
    cdag.teardown()
    assert not ours & set(channel_files())
    survivors = [s for i, s in enumerate(stages) if i != victim]
    assert ember.get([s.fwd.remote(1) for s in survivors], timeout=10) == [2, 2]
    with InputNode() as inp:
        dag = survivors[1].fwd.bind(survivors[0].fwd.bind(inp))
    with dag.compile() as again:
        assert again.execute(0).get(timeout=10) == 2
    for s in survivors:
        ember.kill(s)


@pytest.mark.timeout(60)
def test_actor_killed_while_the_graph_is_idle():
    stages = [Stage.remote() for _ in range(3)]
    pids = ember.get([s.pid.remote() for s in stages], timeout=30)
    with pipeline(stages).compile() as cdag:
        assert cdag.execute(-1).get(timeout=10) == 1
        os.kill(pids[1], signal.SIGKILL)
        time.sleep(0.5)
        start = time.monotonic()
        with pytest.raises(ActorDiedError):
            cdag.execute(-1).get(timeout=30)
        assert time.monotonic() - start < 5
    for i in (0, 2):
        ember.kill(stages[i])


_EXIT_SCRIPT = textwrap.dedent("""
    import ember
    from ember.dag import InputNode
    from ember._system import shm

    @ember.remote
    class Stage:
        def fwd(self, x):
            return x + 1

    ember.init(num_cpus=1)
    a, b = Stage.remote(), Stage.remote()
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    cdag = dag.compile()
    assert cdag.execute(1).get(timeout=20) == 3
    cdag.execute(5)                      # left pending on purpose
    print("SESSION", shm.session_id(), flush=True)
    # no teardown, no shutdown: interpreter exit must clean up
""")


@pytest.mark.timeout(90)
def test_interpreter_exit_tears_the_graph_down(tmp_path):
    script = tmp_path / "exit_without_teardown.py"
    script.write_text(_EXIT_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("EMBER_SESSION", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - start < 30
    sid = proc.stdout.split("SESSION", 1)[1].split()[0]
    deadline = time.monotonic() + 10
    left = [1]
    while left and time.monotonic() < deadline:
        left = [f for f in os.listdir("/dev/shm") if f.startswith(f"ember_{sid}_")]
        time.sleep(0.1)
    assert not left


@pytest.mark.timeout(90)
def test_shutdown_tears_down_live_graphs():
    # Last in the module: it ends the module's cluster.
    a, b = Stage.remote(), Stage.remote()
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    cdag = dag.compile()
    assert cdag.execute(1).get(timeout=20) == 3
    pending = cdag.execute(2)
    ours = set(channel_files())
    ember.shutdown()
    assert cdag._health.torn_down
    assert not ours & set(channel_files())
    with pytest.raises(DAGTeardownError):
        cdag.execute(1)
    try:
        assert pending.get(timeout=5) == 4
    except DAGTeardownError:
        pass


def _written_to_driver(cdag) -> int:
    """How many values the output channel's writer has written so far (its header's count)."""
    (output,) = [cp for cp in cdag.plan.channels if "driver" in cp.readers]
    return cdag._channels[output.id]._map().writer_line.seq


@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim", [0, 1, 2])
def test_results_complete_before_a_death_survive_it(victim):
    stages = [Stage.remote() for _ in range(3)]
    pids = ember.get([s.pid.remote() for s in stages], timeout=30)
    with InputNode() as inp:
        dag = stages[2].fwd.bind(stages[1].fwd.bind(stages[0].fwd.bind(inp)))
    with dag.compile() as cdag:
        refs = [cdag.execute(i) for i in range(8)]
        deadline = time.monotonic() + 30
        while _written_to_driver(cdag) < 8:
            assert time.monotonic() < deadline, "the 8 results were not written in 30 s"
            time.sleep(0.01)
        os.kill(pids[victim], signal.SIGKILL)
        time.sleep(0.5)           # every loop that can see the death has seen it by now
        assert [ref.get(timeout=10) for ref in refs] == [i + 3 for i in range(8)]
        start = time.monotonic()
        with pytest.raises(ActorDiedError):
            cdag.execute(0).get(timeout=30)
        assert time.monotonic() - start < 5, "ActorDiedError must come within seconds"
    for i, stage in enumerate(stages):
        if i != victim:
            ember.kill(stage)
