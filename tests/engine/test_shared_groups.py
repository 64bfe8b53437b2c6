"""One communicator registry for both layers (Note [one registry]): a group made with
create_collective_group carries a compiled graph's tensor edge, and a compiled graph's group
carries GPU objects between its actors, on CPU with gloo."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

import ember  # noqa: E402
from ember.dag import InputNode  # noqa: E402
from ember.engine.compiled_dag import _get, _run_in_actor  # noqa: E402
from ember.exceptions import TensorTransportError  # noqa: E402
from ember.experimental.collective import (create_collective_group,  # noqa: E402
                                           destroy_collective_group)

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
class Peer:
    def make(self, n):
        return torch.arange(n, dtype=torch.float32)

    @ember.method(tensor_transport="gloo")
    def produce(self, n):
        return torch.arange(n, dtype=torch.float32)

    def total(self, t):
        return float(t.sum())

    def echo(self, x):
        return x


def _group_name(instance: Any, key: tuple) -> str | None:
    from ember.gpu.communicator import communicator_registry
    comm = communicator_registry.get(key)
    return None if comm is None else comm.name


@pytest.fixture(scope="module")
def pair(cluster):
    handles = sorted((Peer.remote() for _ in range(2)), key=lambda h: h._actor_id)
    ember.get([h.echo.remote(0) for h in handles], timeout=120)
    return handles   # sorted by id: the rank order a compiled graph gives an edge's group


def _names(actors, key):
    return [_get(_run_in_actor(h, _group_name, key), 10) for h in actors]


@pytest.mark.timeout(120)
def test_a_compiled_graph_uses_the_collective_group(pair):
    a, b = pair
    group = create_collective_group([a, b], backend="torch_gloo", name="shared-by-graph")
    try:
        with InputNode() as inp:
            cdag = b.total.bind(a.make.bind(inp).with_tensor_transport("nccl")).compile()
        try:
            assert cdag.plan.groups[0].key == group.key
            assert _names(pair, group.key) == ["shared-by-graph"] * 2
            assert cdag.execute(5).get(timeout=30) == 10.0
        finally:
            cdag.teardown()
        assert _names(pair, group.key) == ["shared-by-graph"] * 2   # still the group's
        assert ember.get(b.total.remote(a.produce.remote(4)), timeout=30) == 6.0
    finally:
        destroy_collective_group(group)
    assert _names(pair, group.key) == [None, None]


@pytest.mark.timeout(120)
def test_gpu_objects_travel_over_a_compiled_graphs_group(pair):
    a, b = pair
    with pytest.raises(TensorTransportError, match="not in a gloo collective group"):
        ember.get(b.total.remote(a.produce.remote(3)), timeout=30)
    with InputNode() as inp:
        cdag = b.total.bind(a.make.bind(inp).with_tensor_transport("nccl")).compile()
    try:
        assert cdag.execute(3).get(timeout=30) == 3.0
        # one after the other, never at the same moment (Note [shared groups])
        assert ember.get(b.total.remote(a.produce.remote(100)), timeout=30) == 4950.0
        assert ember.get(a.total.remote(b.produce.remote(10)), timeout=30) == 45.0
        assert cdag.execute(4).get(timeout=30) == 6.0
    finally:
        cdag.teardown()
