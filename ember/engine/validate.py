"""Check a bound graph before compiling it and put its nodes in order (a ``Graph``).

Every rule broken raises ``CompileError`` naming the offending node and where it was bound.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ember.dag.nodes import (ClassMethodNode, ClassMethodOutputNode, DAGNode, FunctionNode,
                             InputAttributeNode, InputNode, MultiOutputNode, _python_function,
                             actor_class)
from ember.exceptions import CompileError


@dataclass
class Graph:
    """A validated graph: its nodes in bind order and their links by position."""

    nodes: list[DAGNode]                  # bind order, without the MultiOutputNode
    upstream: list[list[int]]             # positions of each node's direct upstream nodes
    input: int                            # position of the InputNode
    outputs: list[int]                    # positions of the output nodes, in output order
    multi_output: bool                    # whether execute returns a list
    index: dict[int, int] = field(default_factory=dict)  # id(node) -> position

    def position(self, node: DAGNode) -> int:
        return self.index[id(node)]


def validate(root: DAGNode) -> Graph:
    """Check the graph ending at ``root``; return it as a ``Graph`` or raise ``CompileError``."""
    if not isinstance(root, DAGNode):
        raise CompileError(f"compile needs a graph node, got {root!r}")
    outputs = list(root._bound_args) if isinstance(root, MultiOutputNode) else [root]
    if not outputs:
        raise CompileError(f"{root._describe()} has no outputs; give it at least one node")
    for out in outputs:
        if isinstance(out, (InputNode, InputAttributeNode)):
            raise CompileError(f"the output {out._describe()} is the graph's input itself; a "
                               f"compiled graph must compute its outputs with actor methods")
    nodes = _collect(root)
    _check_containers(nodes)
    inputs = [n for n in nodes if isinstance(n, InputNode)]
    if not inputs:
        raise CompileError(
            f"the graph ending at {root._describe()} has no InputNode; build it inside "
            f"`with InputNode() as inp:` and pass inp (or inp[i], inp.key) to the first method")
    if len(inputs) > 1:
        raise CompileError(f"the graph has {len(inputs)} InputNodes "
                           f"({', '.join(n._describe() for n in inputs)}); use one InputNode "
                           f"and inp[i] / inp.key for several arguments")
    in_graph = {id(n) for n in nodes}
    for node in nodes:
        if isinstance(node, MultiOutputNode) and node is not root:
            raise CompileError(f"{node._describe()} is used as an argument; a MultiOutputNode "
                               f"can only be the output of the graph")
        _check_readers(node, in_graph)
        _check_signature(node)
    nodes = [n for n in nodes if not isinstance(n, MultiOutputNode)]
    graph = Graph(nodes=nodes, upstream=[], input=0, outputs=[],
                  multi_output=isinstance(root, MultiOutputNode))
    graph.index = {id(n): i for i, n in enumerate(nodes)}
    graph.input = graph.index[id(inputs[0])]
    graph.outputs = [graph.index[id(o)] for o in outputs]
    for node in nodes:
        ups: list[int] = []
        for up in node._direct_upstream():
            pos = graph.index[id(up)]
            if pos not in ups:
                ups.append(pos)
        graph.upstream.append(ups)
    return graph


def _collect(root: DAGNode) -> list[DAGNode]:
    seen: dict[int, DAGNode] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(node._all_upstream())
    return sorted(seen.values(), key=lambda n: n._seq)


def _check_containers(nodes: list[DAGNode]) -> None:
    for node in nodes:
        if isinstance(node, MultiOutputNode):
            continue
        hidden = node._container_upstream()
        if hidden:
            raise CompileError(
                f"{node._describe()} takes {hidden[0]._describe()} inside a container (list, "
                f"tuple, dict or set) argument; a compiled graph passes only top-level arguments "
                f"over channels. Pass the node as an argument of its own")


def _check_readers(node: DAGNode, in_graph: set[int]) -> None:
    """Refuse a node of this graph whose result goes to a node outside it (nobody reads it)."""
    for down in node._downstream:
        if id(down) in in_graph or isinstance(down, (MultiOutputNode, ClassMethodOutputNode)):
            continue
        if isinstance(down, InputAttributeNode):
            raise CompileError(
                f"the input attribute {down._describe()} is never used by the graph's output; "
                f"remove it or pass it to a method that contributes to the output")
        raise CompileError(
            f"{down._describe()} is a leaf node: its result is read by no node and is not an "
            f"output of the graph. Add it to a MultiOutputNode or pass it to a later method")


def _check_signature(node: DAGNode) -> None:
    """Check the bound arguments against the method's or function's signature."""
    if isinstance(node, ClassMethodNode):
        handle = node._actor
        if not hasattr(handle, "_ember_run"):
            raise CompileError(f"{node._describe()} is bound on {handle!r}, which is not an "
                               f"ember actor handle")
        cls = actor_class(handle)
        if cls is None:
            return
        attr = inspect.getattr_static(cls, node._method_name, None)
        if attr is None:
            raise CompileError(f"{node._describe()}: the actor class {cls.__name__} has no method "
                               f"{node._method_name!r}")
        method = getattr(cls, node._method_name)
        needs_self = not isinstance(attr, (staticmethod, classmethod))
        _bind_signature(node, method, node._bound_args, node._bound_kwargs, needs_self)
    elif isinstance(node, FunctionNode):
        fn = _python_function(node._remote_function)
        _bind_signature(node, fn, node._bound_args, node._bound_kwargs, False)


def _bind_signature(node: DAGNode, fn: Any, args: tuple, kwargs: dict, needs_self: bool) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*((None,) if needs_self else ()), *args, **kwargs)
    except TypeError as exc:
        raise CompileError(f"{node._describe()} is bound with {len(args)} positional "
                           f"arguments and keywords {sorted(kwargs)}, which do not match the "
                           f"signature {sig}: {exc}") from None


def input_check(graph: Graph) -> Callable[[tuple, dict], None]:
    """Return a check of ``execute``'s arguments against what the graph reads, so that a
    wrong call fails in the driver with TypeError instead of inside an actor."""
    direct = False
    positional = -1
    keys: set[str] = set()
    for node in graph.nodes:
        if isinstance(node, InputAttributeNode):
            if isinstance(node.key, int):
                positional = max(positional, node.key)
            else:
                keys.add(node.key)
        elif not isinstance(node, InputNode):
            if any(isinstance(a, InputNode) for a in node._direct_upstream()):
                direct = True
    input_node = graph.nodes[graph.input]
    only_direct = direct and positional < 0 and not keys
    fewest = max(positional + 1, 1 if direct else 0)

    def check(args: tuple, kwargs: dict) -> None:
        if only_direct:
            if len(args) == 1 and not kwargs:
                return
            raise TypeError(f"the graph reads its InputNode directly ({input_node._describe()}), "
                            f"so execute takes exactly one positional argument; it got "
                            f"{len(args)} positional and keyword arguments {sorted(kwargs)}")
        if len(args) < fewest:
            raise TypeError(f"the graph reads {fewest} positional argument(s) (inp[0] .. "
                            f"inp[{fewest - 1}], or inp itself) but execute got {len(args)}")
        missing = keys.difference(kwargs)
        if missing:
            raise TypeError(f"the graph reads keyword arguments {sorted(keys)} but execute got "
                            f"{sorted(kwargs)}; missing {sorted(missing)}")
    return check
