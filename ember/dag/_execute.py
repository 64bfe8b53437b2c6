"""Run a graph once, uncompiled, through the dynamic layer: each node becomes a ``.remote()`` call.

The nodes run in bind order (Note [bind order] in ``nodes.py``); an upstream node's result
travels as its ObjectRef, which the dynamic layer resolves before the call.
A node inside a container argument (``f.bind({"x": g.bind()})``) reaches ``f`` as an ObjectRef
inside the container, as in Ray (only top-level arguments are resolved).
"""

from __future__ import annotations

from typing import Any

from ember.dag.collective import CollectiveOutputNode
from ember.dag.nodes import (ClassMethodNode, ClassMethodOutputNode, ClassNode, DAGNode,
                             FunctionNode, InputAttributeNode, InputNode, MultiOutputNode,
                             collect_nodes, replace_nodes)


def input_value(args: tuple, kwargs: dict, node: DAGNode) -> Any:
    """The value of the InputNode itself: the single positional argument of ``execute``."""
    if len(args) != 1 or kwargs:
        raise TypeError(f"the graph reads its InputNode directly ({node.describe()}), so "
                        f"execute takes exactly one positional argument; it got {len(args)} "
                        f"positional and keyword arguments {sorted(kwargs)}. Use inp[i] or "
                        f"inp.key to read several arguments")
    return args[0]


def execute_uncompiled(output: DAGNode, args: tuple, kwargs: dict) -> Any:
    """Submit every node of the graph ending at ``output``; return the output's ObjectRef(s)."""
    results: dict[int, Any] = {}
    nodes = collect_nodes(output)
    inputs = [n for n in nodes if isinstance(n, InputNode)]
    if len(inputs) > 1:
        raise AssertionError("Each DAG should only have one unique InputNode.")
    if inputs and not inputs[0]._in_context:
        raise AssertionError("InputNode is a singleton instance that should be only used in "
                             "context manager: build the graph inside `with InputNode() as inp:`")
    for node in nodes:
        if isinstance(node, InputNode):
            results[id(node)] = (input_value(args, kwargs, node)
                                 if _reads_input_directly(node, nodes) else None)
            continue
        call_args = replace_nodes(node._bound_args, results)
        call_kwargs = replace_nodes(node._bound_kwargs, results)
        if isinstance(node, InputAttributeNode):
            value = node._extract(args, kwargs)
        elif isinstance(node, ClassMethodNode):
            value = _method(node, results).remote(*call_args, **call_kwargs)
        elif isinstance(node, ClassMethodOutputNode):
            value = call_args[0][node._index]
        elif isinstance(node, FunctionNode):
            value = node._remote_function.remote(*call_args, **call_kwargs)
        elif isinstance(node, ClassNode):
            value = node._actor_class.remote(*call_args, **call_kwargs)
        elif isinstance(node, MultiOutputNode):
            value = list(call_args)
        elif isinstance(node, CollectiveOutputNode):
            raise TypeError(f"{node.describe()} is a collective, which runs only in a compiled "
                            f"graph: call dag.compile() and execute that")
        else:
            raise TypeError(f"cannot execute {node.describe()}: unknown node type")
        results[id(node)] = value
    return results[id(output)]


def _method(node: ClassMethodNode, results: dict[int, Any]) -> Any:
    """The actor method a node calls: of a handle, or of the actor its ClassNode created."""
    if not isinstance(node._actor, ClassNode):
        return node._method
    handle = results[id(node._actor)]
    return getattr(handle, node._method_name).options(num_returns=node._num_returns)


def _reads_input_directly(node: InputNode, nodes: list[DAGNode]) -> bool:
    """Whether a node of the graph takes the InputNode itself (not one of its attributes)."""
    return any(not isinstance(n, InputAttributeNode) and any(u is node for u in n._all_upstream())
               for n in nodes)
