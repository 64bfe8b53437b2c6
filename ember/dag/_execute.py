"""Run a graph once, uncompiled, through the dynamic layer: each node becomes a ``.remote()`` call.

The nodes run in bind order (Note [bind order] in ``nodes.py``); an upstream node's result
travels as its ObjectRef, which the dynamic layer resolves before the call.
"""

from __future__ import annotations

from typing import Any

from ember.dag.collective import CollectiveOutputNode
from ember.dag.nodes import (ClassMethodNode, ClassMethodOutputNode, DAGNode, FunctionNode,
                             InputAttributeNode, InputNode, MultiOutputNode)


def collect_nodes(output: DAGNode) -> list[DAGNode]:
    """Return every node the output depends on (itself included), in bind order."""
    seen: dict[int, DAGNode] = {}
    stack = [output]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(node._all_upstream())
    return sorted(seen.values(), key=lambda n: n._seq)


def _substitute(value: Any, results: dict[int, Any]) -> Any:
    """Replace every node in ``value`` (also inside containers) by its result."""
    if isinstance(value, DAGNode):
        return results[id(value)]
    if isinstance(value, list):
        return [_substitute(v, results) for v in value]
    if isinstance(value, tuple):
        return tuple(_substitute(v, results) for v in value)
    if isinstance(value, dict):
        return {_substitute(k, results): _substitute(v, results) for k, v in value.items()}
    return value


def input_value(args: tuple, kwargs: dict, node: DAGNode) -> Any:
    """The value of the InputNode itself: the single positional argument of ``execute``."""
    if len(args) != 1 or kwargs:
        raise TypeError(f"the graph reads its InputNode directly ({node._describe()}), so "
                        f"execute takes exactly one positional argument; it got {len(args)} "
                        f"positional and keyword arguments {sorted(kwargs)}. Use inp[i] or "
                        f"inp.key to read several arguments")
    return args[0]


def execute_uncompiled(output: DAGNode, args: tuple, kwargs: dict) -> Any:
    """Submit every node of the graph ending at ``output``; return the output's ObjectRef(s)."""
    results: dict[int, Any] = {}
    nodes = collect_nodes(output)
    for node in nodes:
        if isinstance(node, InputNode):
            results[id(node)] = (input_value(args, kwargs, node)
                                 if _reads_input_directly(node, nodes) else None)
            continue
        call_args = _substitute(node._bound_args, results)
        call_kwargs = _substitute(node._bound_kwargs, results)
        if isinstance(node, InputAttributeNode):
            value = node._extract(args, kwargs)
        elif isinstance(node, ClassMethodNode):
            value = node._method.remote(*call_args, **call_kwargs)
        elif isinstance(node, ClassMethodOutputNode):
            value = call_args[0][node._index]
        elif isinstance(node, FunctionNode):
            value = node._remote_function.remote(*call_args, **call_kwargs)
        elif isinstance(node, MultiOutputNode):
            value = list(call_args)
        elif isinstance(node, CollectiveOutputNode):
            raise TypeError(f"{node._describe()} is a collective, which runs only in a compiled "
                            f"graph: call dag.compile() and execute that")
        else:
            raise TypeError(f"cannot execute {node._describe()}: unknown node type")
        results[id(node)] = value
    return results[id(output)]


def _reads_input_directly(node: InputNode, nodes: list[DAGNode]) -> bool:
    """Whether a node of the graph takes the InputNode itself (not one of its attributes)."""
    return any(not isinstance(n, InputAttributeNode) and any(u is node for u in n._all_upstream())
               for n in nodes)
