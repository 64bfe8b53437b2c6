"""Check a bound graph before compiling it and put its nodes in order (a ``Graph``).

Every rule broken raises ``CompileError`` naming the offending node and where it was bound.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

from ember.dag.handles import actor_class, python_function
from ember.dag.class_node import ClassNode
from ember.dag.nodes import (ClassMethodNode, ClassMethodOutputNode, DAGNode,
                             FunctionNode, InputAttributeNode, InputNode, MultiOutputNode,
                             collect_nodes, nested_nodes)
from ember.exceptions import CompileError, InvalidArgumentsError


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
    outputs = list(root.get_args()) if isinstance(root, MultiOutputNode) else [root]
    if not outputs:
        raise CompileError(f"{root.describe()} has no outputs; give it at least one node")
    for out in outputs:
        if isinstance(out, (InputNode, InputAttributeNode)):
            raise CompileError(f"the output {out.describe()} is the graph's input itself; a "
                               f"compiled graph must compute its outputs with actor methods")
    nodes = collect_nodes(root)
    _check_containers(nodes)
    inputs = [n for n in nodes if isinstance(n, InputNode)]
    if not inputs:
        raise CompileError(
            f"the graph ending at {root.describe()} has no InputNode; build it inside "
            f"`with InputNode() as inp:` and pass inp (or inp[i], inp.key) to the first method")
    if len(inputs) > 1:
        raise CompileError(f"the graph has {len(inputs)} InputNodes "
                           f"({', '.join(n.describe() for n in inputs)}); use one InputNode "
                           f"and inp[i] / inp.key for several arguments")
    for node in nodes:
        if isinstance(node, ClassNode):
            raise CompileError(f"Compiled DAGs can only bind methods to an actor that is "
                               f"already created with Actor.remote(); {node.describe()} "
                               f"creates one only when the graph runs uncompiled")
        if isinstance(node, MultiOutputNode) and node is not root:
            raise CompileError(f"{node.describe()} is used as an argument; a MultiOutputNode "
                               f"can only be the output of the graph")
        _check_signature(node)
    in_graph = {id(n) for n in nodes}
    _check_unused_input(inputs[0], in_graph)
    _check_leaves(nodes, in_graph)
    _check_input_use(nodes)
    nodes = [n for n in nodes if not isinstance(n, MultiOutputNode)]
    graph = Graph(nodes=nodes, upstream=[], input=0, outputs=[],
                  multi_output=isinstance(root, MultiOutputNode))
    graph.index = {id(n): i for i, n in enumerate(nodes)}
    graph.input = graph.index[id(inputs[0])]
    graph.outputs = [graph.index[id(o)] for o in outputs]
    for node in nodes:
        ups: list[int] = []
        for up in node.upstream:
            pos = graph.index[id(up)]
            if pos not in ups:
                ups.append(pos)
        graph.upstream.append(ups)
    return graph


def _check_containers(nodes: list[DAGNode]) -> None:
    """Refuse nodes hidden inside an argument (a container or an object), with Ray's words."""
    for node in nodes:
        if isinstance(node, MultiOutputNode):
            continue
        for arg in itertools.chain(node.get_args(), node.get_kwargs().values()):
            hidden = [] if isinstance(arg, DAGNode) else list(nested_nodes(arg, objects=True))
            if hidden:
                raise CompileError(
                    f"Found {len(hidden)} DAGNodes from the arg {arg!r} in "
                    f"{node.describe()}. Please ensure that the argument is a single DAGNode "
                    f"and that a DAGNode is not allowed to be placed inside any type of "
                    f"container. A compiled graph passes only top-level arguments over "
                    f"channels: pass each node as an argument of its own")


def _check_unused_input(input_node: DAGNode, in_graph: set[int]) -> None:
    """Refuse input attributes (``inp[i]``, ``inp.key``) that the output does not depend on."""
    attrs = [d for d in input_node.downstream if isinstance(d, InputAttributeNode)]
    unused = [a.key for a in attrs if id(a) not in in_graph]
    if unused:
        keys = ", ".join(str(k) for k in sorted({a.key for a in attrs}, key=_key_order))
        phrase = "is unused" if len(unused) == 1 else "are unused"
        raise CompileError(
            f"Compiled Graph expects input to be accessed using all of attributes {keys}, but "
            f"{', '.join(str(k) for k in sorted(unused, key=_key_order))} {phrase}. Ensure all "
            f"input attributes are used and contribute to the computation of the Compiled Graph "
            f"output.")


def _key_order(key: int | str) -> tuple[bool, int | str]:
    return (isinstance(key, str), key)


def _check_leaves(nodes: list[DAGNode], in_graph: set[int]) -> None:
    """Refuse nodes whose result nobody reads and that are no output (their errors would be
    lost), e.g. an unused output of a ``num_returns=2`` method; Ray's words and count."""
    leaves: dict[int, DAGNode] = {}
    for node in nodes:
        for down in node.downstream:
            if (id(down) not in in_graph and not isinstance(down, (MultiOutputNode,
                                                                   InputAttributeNode))):
                leaves.setdefault(id(down), down)
    if leaves:
        found = list(leaves.values())
        raise CompileError(
            f"Compiled DAG doesn't support leaf nodes, i.e., nodes that don't have downstream "
            f"nodes and are not output nodes. There are {len(found)} leaf nodes in the DAG. "
            f"Please add the outputs of {[_method_name(n) for n in found]} to the "
            f"MultiOutputNode, or pass them to a later method. Leaf nodes: "
            f"{'; '.join(n.describe() for n in found)}")


def _method_name(node: DAGNode) -> str:
    method = node.parent if isinstance(node, ClassMethodOutputNode) else node
    return method.get_method_name() if isinstance(method, ClassMethodNode) else node.label


def _check_input_use(nodes: list[DAGNode]) -> None:
    """Refuse a graph that reads both the InputNode itself and its attributes (as Ray)."""
    direct = _direct_readers(nodes)
    indexed = [n for n in nodes if isinstance(n, InputAttributeNode)]
    if direct and indexed:
        raise CompileError(
            f"All tasks must either use InputNode() directly, or they must index to specific "
            f"args or kwargs. {direct[0].describe()} reads the InputNode itself while "
            f"{indexed[0].describe()} reads one argument: use inp[0] instead of inp")


def _direct_readers(nodes: list[DAGNode]) -> list[DAGNode]:
    """The nodes that take the InputNode itself as an argument (not ``inp[i]`` / ``inp.key``)."""
    return [n for n in nodes if not isinstance(n, InputAttributeNode)
            and any(isinstance(u, InputNode) for u in n.upstream)]


def _check_signature(node: DAGNode) -> None:
    """Check the bound arguments against the method's or function's signature."""
    if isinstance(node, ClassMethodNode):
        handle = node.actor
        if not hasattr(handle, "_ember_run"):
            raise CompileError(f"{node.describe()} is bound on {handle!r}, which is not an "
                               f"ember actor handle")
        cls = actor_class(handle)
        if cls is None:
            return
        attr = inspect.getattr_static(cls, node.get_method_name(), None)
        if attr is None:
            raise CompileError(f"{node.describe()}: the actor class {cls.__name__} has no method "
                               f"{node.get_method_name()!r}")
        method = getattr(cls, node.get_method_name())
        needs_self = not isinstance(attr, (staticmethod, classmethod))
        _bind_signature(node, method, node.get_args(), node.get_kwargs(), needs_self)
    elif isinstance(node, FunctionNode):
        fn = python_function(node.remote_function)
        _bind_signature(node, fn, node.get_args(), node.get_kwargs(), False)


def _bind_signature(node: DAGNode, fn: Any, args: tuple, kwargs: dict, needs_self: bool) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*((None,) if needs_self else ()), *args, **kwargs)
    except TypeError as exc:
        raise CompileError(f"{node.describe()} is bound with {len(args)} positional "
                           f"arguments and keywords {sorted(kwargs)}, which do not match the "
                           f"signature {sig}: {exc}") from None


def input_check(graph: Graph) -> Callable[[tuple, dict], None]:
    """Return a check of ``execute``'s arguments against what the graph reads (Ray's rules:
    exactly the positional arguments read, every keyword read), so that a wrong call fails in
    the driver with InvalidArgumentsError instead of inside an actor."""
    direct = bool(_direct_readers(graph.nodes))
    positional = -1
    keys: list[str] = []
    for node in graph.nodes:
        if isinstance(node, InputAttributeNode):
            if isinstance(node.key, int):
                positional = max(positional, node.key)
            elif node.key not in keys:
                keys.append(node.key)
    wanted = 1 if direct else positional + 1

    def check(args: tuple, kwargs: dict) -> None:
        if len(args) != wanted:
            raise InvalidArgumentsError(
                f"dag.execute() or dag.execute_async() must be called with {wanted} positional "
                f"args, got {len(args)}")
        if direct and kwargs:
            raise InvalidArgumentsError(
                f"dag.execute() or dag.execute_async() got keyword arguments {sorted(kwargs)}, "
                f"but the graph reads its InputNode directly: pass one positional argument, or "
                f"read arguments with inp[i] and inp.key")
        for key in keys:
            if key not in kwargs:
                raise InvalidArgumentsError(
                    f"dag.execute() or dag.execute_async() must be called with kwarg `{key}`")
    return check
