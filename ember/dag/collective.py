"""Collective nodes: ``allreduce`` / ``allgather`` / ``reducescatter`` ``.bind([n1, n2, ...])``.

One call binds one collective over the values of several actor nodes (one per actor) and returns
one ``CollectiveOutputNode`` per input, computed on that input's actor. In a compiled graph the
actors run it through their communicator group (ranks in bind order), inside their executor loops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ember.dag.nodes import ClassMethodNode, ClassMethodOutputNode, DAGNode
from ember.gpu.tensors import REDUCE_OPS

if TYPE_CHECKING:
    from ember.gpu.communicator import Communicator

COLLECTIVES = ("allreduce", "allgather", "reducescatter")


class CollectiveCall:
    """One bound collective: what it computes and its output nodes, one per participating actor."""

    def __init__(self, kind: str, op: str, transport: "Communicator | None") -> None:
        self.kind = kind
        self.op = op
        self.transport = transport
        self.outputs: list[CollectiveOutputNode] = []

    @property
    def actor_ids(self) -> tuple[str, ...]:
        """The actors of the collective in rank order (the bind order)."""
        return tuple(out.actor_id for out in self.outputs)


class CollectiveOutputNode(DAGNode):
    """The output of a collective on one actor: its input node's value, reduced or gathered."""

    def __init__(self, call: CollectiveCall, input_node: DAGNode) -> None:
        self._call = call
        self._rank = len(call.outputs)
        super().__init__((input_node,))
        call.outputs.append(self)

    @property
    def actor_id(self) -> str:
        """The actor that computes this output (the one of its input node)."""
        return self._bound_args[0].actor_id

    @property
    def call(self) -> CollectiveCall:
        """The collective this output belongs to."""
        return self._call

    def _run_uncompiled(self, call_args, call_kwargs, results, inputs):
        raise TypeError(f"{self.describe()} is a collective, which runs only in a compiled "
                        f"graph: call dag.compile() and execute that")

    def _label(self) -> str:
        return f"{self._call.kind}[{self._rank}] (actor {self.actor_id})"


class CollectiveOp:
    """A collective that binds over a list of actor nodes: ``allreduce.bind([a, b], op="sum")``."""

    def __init__(self, kind: str) -> None:
        self._kind = kind

    def bind(self, nodes: Sequence[DAGNode], op: str = "sum",
             transport: "Communicator | None" = None) -> list[CollectiveOutputNode]:
        """Bind the collective over ``nodes`` (one per actor); return one output node per input.

        ``op`` is one of "sum", "product", "min", "max", "avg" (ignored by allgather);
        ``transport`` a Communicator to run it with instead of the graph's own group.
        """
        if not isinstance(nodes, (list, tuple)) or not nodes:
            raise TypeError(f"{self._kind}.bind takes a non-empty list of nodes, got {nodes!r}")
        op = getattr(op, "name", op)
        op = op.lower() if isinstance(op, str) else op
        if op not in REDUCE_OPS:
            raise ValueError(f"{self._kind} op {op!r} is not one of {REDUCE_OPS}")
        seen: dict[str, DAGNode] = {}
        for i, node in enumerate(nodes):
            if not isinstance(node, (ClassMethodNode, ClassMethodOutputNode, CollectiveOutputNode)):
                raise TypeError(f"{self._kind}.bind element {i} is {node!r}; each element must be "
                                f"an actor method node (actor.method.bind(...))")
            if node.actor_id in seen:
                raise ValueError(f"{self._kind}.bind got two nodes of actor {node.actor_id} "
                                 f"({seen[node.actor_id].describe()} and {node.describe()}); "
                                 f"a collective takes one node per actor")
            seen[node.actor_id] = node
        call = CollectiveCall(self._kind, op, transport)
        return [CollectiveOutputNode(call, node) for node in nodes]

    def __repr__(self) -> str:
        return f"ember.dag.collective.{self._kind}"


allreduce = CollectiveOp("allreduce")
allgather = CollectiveOp("allgather")
reducescatter = CollectiveOp("reducescatter")

__all__ = ["CollectiveOutputNode", "allgather", "allreduce", "reducescatter"]
