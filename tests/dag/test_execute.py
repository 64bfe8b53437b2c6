"""``dag.execute`` without compiling: the graph runs as ordinary remote calls of real actors."""

from __future__ import annotations

import pytest

import ember
from ember.dag import InputNode, MultiOutputNode
from ember.dynamic.core.object_ref import ObjectRef

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.timeout(60)]


@ember.remote
class Stage:
    def __init__(self):
        self.seen = []

    def fwd(self, x, k=1):
        self.seen.append(x)
        return x + k

    @ember.method(num_returns=2)
    def split(self, x):
        return x, -x

    def history(self):
        return self.seen


@ember.remote
def square(x):
    return x * x


@pytest.fixture(scope="module")
def stages(cluster):
    return Stage.remote(), Stage.remote()


def test_chain_returns_an_object_ref(stages):
    a, b = stages
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp), k=10)
    ref = dag.execute(1)
    assert isinstance(ref, ObjectRef)
    assert ember.get(ref) == 12
    assert ember.get(dag.execute(2)) == 13


def test_multi_output_gives_a_list_of_refs(stages):
    a, b = stages
    with InputNode() as inp:
        pos, neg = a.split.bind(inp[0])
        dag = MultiOutputNode([pos, neg, b.fwd.bind(neg, k=inp.k), square.bind(pos)])
    refs = dag.execute(3, k=100)
    assert isinstance(refs, list) and len(refs) == 4
    assert ember.get(refs) == [3, -3, 97, 9]


def test_same_actor_calls_run_in_bind_order(stages):
    a, _ = stages
    start = len(ember.get(a.history.remote()))
    with InputNode() as inp:
        first = a.fwd.bind(inp)
        second = a.fwd.bind(inp, k=2)
        dag = MultiOutputNode([second, first])
    assert ember.get(dag.execute(7)) == [9, 8]
    assert ember.get(a.history.remote())[start:] == [7, 7]


def test_direct_input_takes_exactly_one_argument(stages):
    a, _ = stages
    with InputNode() as inp:
        dag = a.fwd.bind(inp)
    with pytest.raises(TypeError, match="exactly one positional argument"):
        dag.execute(1, 2)
    with InputNode() as inp:
        dag = a.fwd.bind(inp[2])
    with pytest.raises(TypeError, match="positional argument 2"):
        dag.execute(1, 2)
    # As Ray: a single argument is indexed itself (inp[2] of [5, 6, 7] is 7).
    assert ember.get(dag.execute([5, 6, 7]), timeout=20) == ember.get(a.fwd.remote(7))
