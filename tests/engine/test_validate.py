"""compile's checks: each broken rule raises CompileError naming the node (no processes)."""

from __future__ import annotations

import pytest

from ember.dag import InputNode, MultiOutputNode
from ember.engine.validate import validate
from ember.exceptions import CompileError

from .fakes import FakeActor, FakeRemoteFunction

pytestmark = pytest.mark.timeout(30)


class Worker:
    def fwd(self, x):
        return x

    def add(self, x, y, *, scale=1):
        return (x + y) * scale

    @staticmethod
    def static(x):
        return x


@pytest.fixture
def actors():
    return FakeActor(Worker()), FakeActor(Worker())


def test_a_valid_graph_is_put_in_bind_order(actors):
    a, b = actors
    with InputNode() as inp:
        x = a.fwd.bind(inp[0])
        y = b.add.bind(x, inp.k, scale=2)
        dag = MultiOutputNode([y, x])
    graph = validate(dag)
    names = [n._label() for n in graph.nodes]
    assert names[0] == "InputNode" and "inp[0]" in names and "inp['k']" in names
    assert graph.outputs == [graph.position(y), graph.position(x)]
    assert graph.multi_output
    assert graph.upstream[graph.position(y)] == [graph.position(x), graph.position(inp.k)]


def test_no_input_node(actors):
    a, _ = actors
    dag = a.fwd.bind(1)
    with pytest.raises(CompileError, match=r"Worker\.fwd.*has no InputNode"):
        validate(dag)


def test_two_input_nodes(actors):
    a, b = actors
    with InputNode() as i1, InputNode() as i2:
        dag = MultiOutputNode([a.fwd.bind(i1), b.fwd.bind(i2)])
    with pytest.raises(CompileError, match="2 InputNodes"):
        validate(dag)


def test_unused_input_attribute(actors):
    a, _ = actors
    with InputNode() as inp:
        unused = inp[1]
        dag = a.fwd.bind(inp[0])
    assert unused is not None
    with pytest.raises(CompileError, match=r"all of attributes 0, 1, but 1 is unused"):
        validate(dag)


def test_leaf_node_nobody_reads(actors):
    a, b = actors
    with InputNode() as inp:
        x = a.fwd.bind(inp)
        b.fwd.bind(x)             # a leaf: its result goes nowhere
        dag = a.fwd.bind(x)
    with pytest.raises(CompileError, match=r"There are 1 leaf nodes.*Worker\.fwd"):
        validate(dag)


def test_node_inside_a_container_argument(actors):
    a, b = actors
    with InputNode() as inp:
        x = a.fwd.bind(inp)
        dag = b.fwd.bind([x, 1])
    with pytest.raises(CompileError, match=r"Found 1 DAGNodes from the arg .*Worker\.fwd.*"
                                           r"inside any type of container"):
        validate(dag)


def test_wrong_arity_against_the_method_signature(actors):
    a, _ = actors
    with InputNode() as inp:
        dag = a.add.bind(inp)
    with pytest.raises(CompileError, match=r"Worker\.add.*do not match the signature"):
        validate(dag)
    with InputNode() as inp:
        dag = a.fwd.bind(inp, unknown=1)
    with pytest.raises(CompileError, match="Worker.fwd"):
        validate(dag)
    with InputNode() as inp:
        ok = a.static.bind(inp)
    validate(ok)


def test_wrong_arity_of_a_function_node():
    f = FakeRemoteFunction(lambda x, y: x + y)
    with InputNode() as inp:
        dag = f.bind(inp)
    with pytest.raises(CompileError, match="do not match the signature"):
        validate(dag)


def test_output_is_the_input(actors):
    a, _ = actors
    with InputNode() as inp:
        dag = MultiOutputNode([a.fwd.bind(inp), inp[0]])
    with pytest.raises(CompileError, match="input itself"):
        validate(dag)


def test_multi_output_node_used_as_an_argument(actors):
    a, b = actors
    with InputNode() as inp:
        inner = MultiOutputNode([a.fwd.bind(inp)])
        dag = b.fwd.bind(inner)
    with pytest.raises(CompileError, match="MultiOutputNode"):
        validate(dag)


def test_an_unused_second_output_of_a_two_output_method_is_a_leaf_as_in_ray():
    class Two:
        def split(self, x):
            return x, x
    Two.split._num_returns = 2
    a = FakeActor(Two())
    with InputNode() as inp:
        first, _ = a.split.bind(inp)
    with pytest.raises(CompileError, match=r"There are 1 leaf nodes.*\['split'\]"):
        validate(first)
