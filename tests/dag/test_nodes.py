"""The graph API as plain objects: binding, input attributes, outputs, public names."""

from __future__ import annotations

import pytest

import ember.dag
import ember.gpu
from ember.dag import (ClassMethodNode, ClassMethodOutputNode, DAGNode, FunctionNode,
                       InputAttributeNode, InputNode, MultiOutputNode)

from ember.dag.binders import bind_actor_method, bind_function

pytestmark = pytest.mark.timeout(30)


class FakeMethod:
    """What ``bind`` needs of an actor method: its handle, name and num_returns."""

    def __init__(self, actor, name, num_returns):
        self._actor, self._method_name, self._num_returns = actor, name, num_returns

    def bind(self, *args, **kwargs):
        return bind_actor_method(self, args, kwargs)


class FakeActor:
    def __init__(self, instance):
        self._actor_id = f"actor{id(instance):x}"
        self._class_name = type(instance).__name__
        self._instance = instance

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        fn = getattr(type(self._instance), name)
        return FakeMethod(self, name, getattr(fn, "_num_returns", 1))


class FakeRemoteFunction:
    def __init__(self, fn):
        self._function = fn

    def bind(self, *args, **kwargs):
        return bind_function(self, args, kwargs)


def returns(n):
    def mark(fn):
        fn._num_returns = n
        return fn
    return mark


class Worker:
    def fwd(self, x):
        return x

    @returns(2)
    def split(self, x):
        return x, x


def test_public_names_are_exactly_the_node_types_and_the_tensor_type_hint():
    assert set(ember.dag.__all__) == {
        "ClassMethodNode", "ClassMethodOutputNode", "ClassNode", "CollectiveOutputNode",
        "DAGNode", "FunctionNode", "InputAttributeNode", "InputNode", "MultiOutputNode",
        "TorchTensorType", "DAGContext", "PARENT_CLASS_NODE_KEY", "PREV_CLASS_METHOD_CALL_KEY"}
    others = {"TorchTensorType", "DAGContext", "PARENT_CLASS_NODE_KEY",
              "PREV_CLASS_METHOD_CALL_KEY"}
    for name in set(ember.dag.__all__) - others:
        assert issubclass(getattr(ember.dag, name), DAGNode)
    assert ember.dag.TorchTensorType is ember.gpu.TorchTensorType


def test_input_attributes_by_index_attribute_and_key():
    with InputNode() as inp:
        first, by_attr, by_key = inp[0], inp.x, inp["x"]
    assert isinstance(first, InputAttributeNode) and first.key == 0
    assert by_attr is by_key and by_attr.key == "x"
    assert inp[0] is first
    with pytest.raises(TypeError, match="indexed by an int"):
        inp[1.5]
    with pytest.raises(AttributeError):
        inp._private


def test_bind_records_constants_and_upstream_nodes_in_bind_order():
    a = FakeActor(Worker())
    with InputNode() as inp:
        x = a.fwd.bind(inp)
        y = a.fwd.bind(x, 3)
    assert isinstance(x, ClassMethodNode) and x.actor_id == a._actor_id
    assert y._bound_args == (x, 3)
    assert y._direct_upstream() == [x]
    assert x._downstream == [y] and inp._downstream == [x]
    assert inp._seq < x._seq < y._seq
    assert "Worker.fwd" in repr(y) and "test_nodes.py" in repr(y)


def test_num_returns_two_gives_a_tuple_of_output_nodes():
    a = FakeActor(Worker())
    with InputNode() as inp:
        outs = a.split.bind(inp)
    assert isinstance(outs, tuple) and len(outs) == 2
    assert all(isinstance(o, ClassMethodOutputNode) for o in outs)
    assert outs[0]._parent is outs[1]._parent and [o._index for o in outs] == [0, 1]


def test_function_nodes_and_multi_output():
    f = FakeRemoteFunction(lambda x: x)
    with InputNode() as inp:
        node = f.bind(inp, k=1)
        out = MultiOutputNode([node, inp[0]])
    assert isinstance(node, FunctionNode) and node._bound_kwargs == {"k": 1}
    assert out._direct_upstream() == [node, inp[0]]
    with pytest.raises(TypeError, match="not a node"):
        MultiOutputNode([node, 3])
    with pytest.raises(TypeError, match="list of nodes"):
        MultiOutputNode(node)


def test_nodes_inside_containers_are_seen_but_not_direct():
    a = FakeActor(Worker())
    with InputNode() as inp:
        x = a.fwd.bind(inp)
        y = a.fwd.bind([x, {"k": x}])
    assert y._direct_upstream() == []
    assert y._container_upstream() == [x, x]
    assert x._downstream == [y]
