"""Compiled graphs over TCP channels between real actors on one machine: forced with the private
``_channel_type`` option, or chosen because the actors are reported on other nodes."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import numpy as np
import pytest

import ember
from ember.channels import TcpType
from ember.channels.composite import CompositeChannel
from ember.channels.shared_memory import SharedMemoryChannel
from ember.channels.tcp import TcpChannel
from ember.dag import InputNode, MultiOutputNode
from ember.engine.compiled_dag import CompiledDAG
from ember.exceptions import ActorDiedError

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
class Stage:
    def fwd(self, x):
        return x + 1

    def slow(self, x):
        time.sleep(x)
        return x

    def check(self, x):
        if x < 0:
            raise ValueError(f"negative input {x}")
        return x

    def pid(self):
        return os.getpid()


def pipeline(stages, middle: str = "fwd"):
    with InputNode() as inp:
        return stages[2].fwd.bind(getattr(stages[1], middle).bind(stages[0].fwd.bind(inp)))


@pytest.mark.timeout(120)
def test_a_three_actor_pipeline_over_tcp_moves_small_values_and_1_mib_arrays():
    stages = [Stage.remote() for _ in range(3)]
    with pipeline(stages).compile(_channel_type=TcpType()) as cdag:
        assert all(isinstance(c, TcpChannel) for c in cdag._channels.values())
        assert [cdag.execute(i).get(timeout=30) for i in range(20)] == [i + 3 for i in range(20)]
        refs = [cdag.execute(i) for i in range(8)]             # several in flight
        assert [r.get(timeout=30) for r in refs] == [i + 3 for i in range(8)]
        big = np.random.default_rng(0).random(2**20 // 8)
        for _ in range(5):
            np.testing.assert_array_equal(cdag.execute(big).get(timeout=30), big + 3)
    for s in stages:
        ember.kill(s)


@pytest.mark.timeout(120)
def test_errors_travel_as_values_over_tcp_and_the_graph_goes_on():
    stages = [Stage.remote() for _ in range(3)]
    with pipeline(stages, middle="check").compile(_channel_type=TcpType()) as cdag:
        with pytest.raises(ValueError, match="negative input -3"):
            cdag.execute(-4).get(timeout=30)
        assert cdag.execute(1).get(timeout=30) == 3
    for s in stages:
        ember.kill(s)


@pytest.mark.timeout(120)
def test_a_sigkilled_actor_over_tcp_is_actor_died_within_seconds():
    stages = [Stage.remote() for _ in range(3)]
    pids = ember.get([s.pid.remote() for s in stages], timeout=30)
    cdag = pipeline(stages, middle="slow").compile(_channel_type=TcpType())
    assert cdag.execute(-1).get(timeout=30) == 1
    pending = [cdag.execute(-0.5) for _ in range(3)]
    time.sleep(0.2)
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    for ref in pending:
        with pytest.raises(ActorDiedError):
            ref.get(timeout=30)
    assert time.monotonic() - start < 5, "ActorDiedError must come within seconds"
    with pytest.raises(ActorDiedError):
        cdag.execute(-1)
    cdag.teardown()
    for i in (0, 2):
        ember.kill(stages[i])


@pytest.mark.timeout(120)
def test_actors_on_other_nodes_get_tcp_and_a_mixed_edge_gets_both(monkeypatch):
    near, far = Stage.remote(), Stage.remote()
    far_id = far._actor_id
    real = CompiledDAG._endpoints

    def far_node(self, plan):   # as if ``far`` ran on another node of the cluster
        endpoints = real(self, plan)
        endpoints[far_id] = dataclasses.replace(endpoints[far_id], node="another-node")
        return endpoints

    monkeypatch.setattr(CompiledDAG, "_endpoints", far_node)
    with InputNode() as inp:
        dag = MultiOutputNode([near.fwd.bind(inp), far.fwd.bind(inp)])
    with dag.compile() as cdag:
        plan = cdag.plan
        by_writer = {cp.writer: cdag._channels[cp.id] for cp in plan.channels
                     if cp.id in cdag._channels}
        assert isinstance(by_writer["driver"], CompositeChannel)     # read near and far
        assert isinstance(by_writer[near._actor_id], SharedMemoryChannel)
        assert isinstance(by_writer[far_id], TcpChannel)
        for i in range(10):
            assert cdag.execute(i).get(timeout=30) == [i + 1, i + 1]
        big = np.arange(2**17, dtype=np.float64)
        got = cdag.execute(big).get(timeout=30)
        np.testing.assert_array_equal(got[0], big + 1)
        np.testing.assert_array_equal(got[1], big + 1)
    ember.kill(near)
    ember.kill(far)
