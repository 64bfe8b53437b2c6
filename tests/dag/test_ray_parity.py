"""Ray's graph API through ``import ember as ray``: class nodes, the node interface, the uncompiled
``execute`` (cases adapted from Ray's test_class_dag, test_function_dag, test_input_node and
test_output_node)."""

from __future__ import annotations

import pytest

import ember as ray
from ember.dag import (PARENT_CLASS_NODE_KEY, PREV_CLASS_METHOD_CALL_KEY, ClassNode, DAGNode,
                       InputNode, MultiOutputNode)
from ember.exceptions import InvalidArgumentsError

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.timeout(60)]


@ray.remote
class Actor:
    def __init__(self, init_value):
        self.i = init_value

    def inc(self, x):
        self.i += x

    def get(self):
        return self.i

    def forward(self, x):
        return self.i * x


@ray.remote
def combine(x, y):
    return x + y


@ray.remote
def echo(x):
    return x


def test_class_node_creates_the_actor_and_chains_its_method_calls():
    a1 = Actor.bind(10)
    assert isinstance(a1, ClassNode)
    assert ray.get(a1.get.bind().execute(), timeout=20) == 10
    a1, a2 = Actor.bind(10), Actor.bind(10)
    a1.inc.bind(2)            # no argument links these to the result: the class node does
    a1.inc.bind(4)
    a2.inc.bind(6)
    dag = combine.bind(a1.get.bind(), a2.get.bind())
    assert ray.get(dag.execute(), timeout=20) == 32


def test_class_node_as_an_argument_is_its_actor_handle():
    @ray.remote
    class Outer:
        def __init__(self, inner):
            self.inner = inner

        def get(self):
            return ray.get(self.inner.get.remote(), timeout=10)

    @ray.remote
    def ask(handle):
        return ray.get(handle.get.remote(), timeout=10)

    assert ray.get(Outer.bind(Actor.bind(7)).get.bind().execute(), timeout=20) == 7
    assert ray.get(ask.bind(Actor.bind(8)).execute(), timeout=20) == 8


def test_class_node_methods_read_the_input():
    with InputNode() as inp:
        model = Actor.bind(4)
        dag = combine.bind(model.forward.bind(inp), Actor.bind(3).forward.bind(inp))
    assert ray.get(dag.execute(2), timeout=20) == 14


def test_options_and_other_args_of_class_nodes():
    a1 = Actor.options(name="parity_a1").bind(10)
    first = a1.inc.options(name="v1").bind(2)
    second = a1.inc.options(name="v2").bind(4)
    res = a1.get.bind()
    assert a1.get_options() == {"name": "parity_a1"}
    assert first.get_options() == {"name": "v1"} and res.get_options() == {}
    others = res.get_other_args_to_resolve()
    assert others[PARENT_CLASS_NODE_KEY] is a1
    assert others[PREV_CLASS_METHOD_CALL_KEY] is second
    assert second.get_other_args_to_resolve()[PREV_CLASS_METHOD_CALL_KEY] is first
    assert first.get_other_args_to_resolve()[PREV_CLASS_METHOD_CALL_KEY] is None
    assert ray.get(res.execute(), timeout=20) == 16


def test_class_node_misuse_is_refused_with_rays_errors():
    with pytest.raises(AttributeError, match=r"\.bind\(\) cannot be used again on"):
        Actor.bind(1).bind()
    with pytest.raises(AttributeError, match=r"\.remote\(\) cannot be used on ClassMethodNodes"):
        Actor.bind(1).get.remote()
    with pytest.raises(AttributeError, match="'Actor' has no attribute 'remote'"):
        Actor.bind(1).remote()
    with pytest.raises(AttributeError, match=r"\.remote\(\) cannot be used on"):
        echo.bind(1).remote()
    with pytest.raises(ValueError, match="cannot be used as args, kwargs, or other_args"):
        with InputNode() as inp:
            Actor.bind(inp)


def test_function_node_options_accessors_and_child_replacement():
    @ray.remote
    def f(*args, **kwargs):
        return None

    tmp1, tmp2, tmp3 = f.bind(), f.bind(), f.bind()
    node = f.bind(1, tmp1, x=tmp2, y={"foo": tmp3})
    assert node.get_args() == (1, tmp1)
    assert node.get_kwargs() == {"x": tmp2, "y": {"foo": tmp3}}
    assert node._get_toplevel_child_nodes() == [tmp1, tmp2]
    assert node._get_all_child_nodes() == [tmp1, tmp2, tmp3]
    tmp4, tmp5 = f.bind(), f.bind()
    replace = {tmp1: tmp4, tmp2: tmp4, tmp3: tmp5}
    copied = node._apply_and_replace_all_child_nodes(lambda n: replace[n])
    assert copied._get_all_child_nodes() == [tmp4, tmp5]
    assert node._get_all_child_nodes() == [tmp1, tmp2, tmp3]      # the original is unchanged
    assert f.options(num_cpus=2, max_retries=5).bind().get_options() == {
        "num_cpus": 2, "max_retries": 5}
    assert f.bind().get_options() == {}


def test_apply_recursive_visits_each_node_once_and_needs_one_input_node():
    inp = InputNode()
    a, b = inp, echo.bind(inp)
    for _ in range(10):
        a, b = combine.bind(a, b), combine.bind(a, b)
    calls = 0
    original = DAGNode.apply_recursive

    def counting(self, fn):
        nonlocal calls
        calls += 1
        return original(self, fn)

    DAGNode.apply_recursive = counting
    try:
        a.apply_recursive(lambda node: node)
    finally:
        DAGNode.apply_recursive = original
    assert calls == 40        # as Ray: one call per edge, each node computed once
    names = a.apply_recursive(lambda node: type(node).__name__)
    assert names == "FunctionNode"
    with InputNode() as i1, InputNode() as i2:
        two = combine.bind(echo.bind(i1), echo.bind(i2))
    with pytest.raises(AssertionError, match="only have one unique InputNode"):
        two.apply_recursive(lambda node: node)
    with pytest.raises(AssertionError, match="only have one unique InputNode"):
        two.execute(2)


def test_nodes_nested_in_dict_list_and_tuple_arguments_arrive_as_refs():
    @ray.remote
    def total(nested):
        refs = list(nested["refs"]) + list(nested["pair"]) + [nested["x"]]
        assert all(isinstance(r, ray.ObjectRef) for r in refs)     # as Ray: not resolved
        return sum(ray.get(refs, timeout=10))

    a = echo.bind(2)
    dag = total.bind({"x": echo.bind(1), "refs": [a, echo.bind(3)], "pair": (echo.bind(4), a)})
    assert ray.get(dag.execute(), timeout=20) == 1 + 2 + 3 + 4 + 2


def test_input_attributes_follow_rays_rules():
    with InputNode() as inp:
        dag = MultiOutputNode([echo.bind(inp[0]), echo.bind(inp[1]), echo.bind(inp.m3)])
    assert ray.get(dag.execute(1, 2, m3=3), timeout=20) == [1, 2, 3]

    class Data:
        def __init__(self):
            self.field = 5

    with InputNode() as inp:
        by_attr = echo.bind(inp.field)
    assert ray.get(by_attr.execute(Data()), timeout=20) == 5
    with InputNode() as inp:
        by_key = MultiOutputNode([echo.bind(inp["x"]), echo.bind(inp["y"]), echo.bind(inp["x"])])
    assert ray.get(by_key.execute({"x": 1, "y": 2}), timeout=20) == [1, 2, 1]
    with InputNode() as inp:
        by_index = echo.bind(inp[1])
    assert ray.get(by_index.execute([7, 8]), timeout=20) == 8


def test_input_node_and_multi_output_node_arguments():
    with pytest.raises(ValueError, match="InputNode should not take any args or kwargs"):
        InputNode(0)
    with pytest.raises(ValueError, match="InputNode should not take any args or kwargs"):
        InputNode(key=1)
    with pytest.raises(ValueError):
        MultiOutputNode(echo.bind(1))
    with pytest.raises(TypeError):          # ember's existing callers catch TypeError
        MultiOutputNode(echo.bind(1))
    assert issubclass(InvalidArgumentsError, TypeError)
    with InputNode() as inp:
        dag = MultiOutputNode([echo.bind(inp)])
    assert ray.get(dag.execute(1), timeout=20) == [1]


def test_tensor_transport_takes_rays_device_argument():
    node = echo.bind(1)
    assert node.with_tensor_transport(device="cpu") is node
    assert node._type_hint.transport == "cpu"
    assert echo.bind(1).with_tensor_transport("auto", device="default")._type_hint.transport \
        == "auto"
    with pytest.raises(ValueError, match="device must be one of"):
        echo.bind(1).with_tensor_transport(device="tpu")
