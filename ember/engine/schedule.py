"""Per-participant schedules as plain data: READ / COMPUTE / WRITE operations, and a dry run.

A schedule is what one participant does for every execution, in order. An actor's executor loop
repeats it forever; the driver's part is WRITE(input) in ``execute`` and READ(outputs) in
``get``. ``NodeSpec`` says what a COMPUTE runs; both are picklable and travel into the actors.

Note [schedule order]
~~~~~~~~~~~~~~~~~~~~~
Every schedule follows the graph's bind order (a topological order) and reads a value just
before its first use. With channels of at least one slot this cannot deadlock: the smallest
(execution, node) pair not yet done always has its inputs written and room to write its
output, because whatever it waits for comes before it in that same order. ``dry_run`` checks
it anyway, without processes, for a few executions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ember.engine.endpoints import DRIVER
from ember.exceptions import CompileError

if TYPE_CHECKING:
    from ember.engine.plan import Plan

# The builders below import the graph and plan modules when called: an actor process only
# unpickles schedules and must not pay for those imports on the compile's critical path.

READ = "READ"
COMPUTE = "COMPUTE"
WRITE = "WRITE"


@dataclass(frozen=True)
class Op:
    """One step of a schedule: READ a channel, COMPUTE a node, or WRITE a node's value."""

    kind: str
    node: int
    channel: int = -1      # READ / WRITE: the channel id
    reader: int = -1       # READ: this participant's reader index on the channel

    def __repr__(self) -> str:
        if self.kind == READ:
            return f"R(c{self.channel}:n{self.node})"
        if self.kind == WRITE:
            return f"W(n{self.node}:c{self.channel})"
        return f"C(n{self.node})"


class NodeRef:
    """A bound argument that is the value of node ``pos`` (``input`` for the InputNode itself)."""

    __slots__ = ("pos", "input")

    def __init__(self, pos: int, input: bool = False) -> None:
        self.pos = pos
        self.input = input

    def __reduce__(self) -> tuple:
        return (NodeRef, (self.pos, self.input))

    def __repr__(self) -> str:
        return f"n{self.pos}" + ("(input)" if self.input else "")


@dataclass
class NodeSpec:
    """What a COMPUTE of one node runs, as plain data."""

    kind: str                    # "method" | "output" | "function" | "attribute" | "collective"
    label: str                   # the node's description, for error messages
    name: str = ""               # method: the method name; collective: "allreduce", ...
    args: tuple = ()             # bound arguments: constants and NodeRefs
    kwargs: dict = field(default_factory=dict)
    num_returns: int = 1         # method: how many values it returns
    index: int = 0               # output: which value of the parent; parent is args[0]
    key: Any = None              # attribute: the positional index or keyword name
    function: Any = None         # function: the remote function (driver only, never pickled)
    group: Any = None            # collective: the registry key of its communicator group

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["function"] = None
        return state


@dataclass
class Schedule:
    """The operations of one participant for one execution, and the nodes it computes."""

    participant: str
    ops: list[Op]
    nodes: dict[int, NodeSpec]

    def __repr__(self) -> str:
        return f"{self.participant}: " + " ".join(repr(op) for op in self.ops)


def node_spec(plan: Plan, pos: int) -> NodeSpec:
    """Describe node ``pos`` of the plan's graph for its executor."""
    from ember.dag.collective import CollectiveOutputNode
    from ember.dag.nodes import (ClassMethodNode, ClassMethodOutputNode, DAGNode, FunctionNode,
                                 InputAttributeNode, InputNode)
    graph = plan.graph
    node = graph.nodes[pos]

    def ref(value: Any) -> Any:
        if isinstance(value, InputNode):
            return NodeRef(graph.position(value), input=True)
        if isinstance(value, DAGNode) and id(value) in graph.index:
            return NodeRef(graph.position(value))
        return value

    args = tuple(ref(a) for a in node.get_args())
    kwargs = {k: ref(v) for k, v in node.get_kwargs().items()}
    label = node.describe()
    if isinstance(node, ClassMethodNode):
        return NodeSpec("method", label, name=node.get_method_name(), args=args,
                        kwargs=kwargs, num_returns=node.num_returns)
    if isinstance(node, ClassMethodOutputNode):
        return NodeSpec("output", label, args=args, index=node.index)
    if isinstance(node, FunctionNode):
        return NodeSpec("function", label, args=args, kwargs=kwargs,
                        function=node.remote_function)
    if isinstance(node, InputAttributeNode):
        return NodeSpec("attribute", label, args=args, key=node.key)
    if isinstance(node, CollectiveOutputNode):
        return NodeSpec("collective", label, name=node.call.kind, args=args,
                        kwargs={"op": node.call.op}, group=plan.collectives[pos][1])
    raise TypeError(f"no COMPUTE for {label}")


def make_schedules(plan: Plan) -> dict[str, Schedule]:
    """Return the schedule of every participant but the driver (Note [schedule order])."""
    graph = plan.graph
    schedules: dict[str, Schedule] = {}
    for participant in plan.participants:
        if participant == DRIVER:
            continue
        ops: list[Op] = []
        specs: dict[int, NodeSpec] = {}
        have: set[int] = set()
        for pos in range(len(graph.nodes)):
            if participant not in plan.computed_by[pos] or pos == graph.input:
                continue
            for up in plan.deps[pos]:
                if up in have:
                    continue
                channel = plan.channel_of(up)
                ops.append(Op(READ, up, channel.id, channel.reader_index(participant)))
                have.add(up)
            ops.append(Op(COMPUTE, pos))
            specs[pos] = node_spec(plan, pos)
            have.add(pos)
            if pos in plan.remote and plan.hosts[pos] == participant:
                ops.append(Op(WRITE, pos, plan.remote[pos]))
        schedules[participant] = Schedule(participant, ops, specs)
    return schedules


def driver_schedule(plan: Plan) -> Schedule:
    """The driver's part: WRITE the input (in ``execute``), READ each output (in ``get``)."""
    graph = plan.graph
    ops: list[Op] = []
    if graph.input in plan.remote:
        ops.append(Op(WRITE, graph.input, plan.remote[graph.input]))
    seen: set[int] = set()
    for out in graph.outputs:
        if out not in seen:
            seen.add(out)
            channel = plan.channel_of(out)
            ops.append(Op(READ, out, channel.id, channel.reader_index(DRIVER)))
    return Schedule(DRIVER, ops, {})


def dry_run(plan: Plan, schedules: dict[str, Schedule], executions: int = 3,
            num_slots: int = 1) -> None:
    """Play every schedule for a few executions without processes; raise CompileError naming
    the blocked operations if they could deadlock. Channels buffer ``num_slots`` values (Note
    [schedule order]); an NCCL send completes with its receive, a collective when every member
    is at it (Note [communication order] in comm_schedule.py)."""
    play = _Replay(plan, {**schedules, DRIVER: driver_schedule(plan)}, executions, num_slots)
    while play.sweep():
        pass
    blocked = [f"{p} at {play.op(p)[0]!r}" for p in play.schedules if not play.finished(p)]
    if blocked:
        raise CompileError(f"the schedules can deadlock; blocked: {'; '.join(blocked)}. "
                           f"Schedules: {list(play.schedules.values())}")


class _Replay:
    """The state of a dry run: where each participant is, and what each channel holds."""

    def __init__(self, plan: Plan, schedules: dict[str, Schedule], executions: int,
                 num_slots: int) -> None:
        from ember.gpu.tensors import NCCL
        self.plan, self.schedules, self.num_slots = plan, schedules, num_slots
        self.written = {c.id: 0 for c in plan.channels}
        self.released = {(c.id, r): 0 for c in plan.channels for r in range(len(c.readers))}
        self.holding: dict[str, list[tuple[int, int]]] = {p: [] for p in schedules}
        self.position = {p: 0 for p in schedules}
        self.total = {p: len(s.ops) * executions for p, s in schedules.items()}
        self.buffered = {p: False for p in schedules}   # the current op's channel part is done
        self.sent = {p: 0 for p in schedules}           # receivers the current WRITE has met
        self.receivers = {cid: [(plan.channels[cid].readers[r], r) for r, transport
                                in enumerate(edge.transports) if transport == NCCL]
                          for cid, edge in plan.tensor_edges.items()}
        actors = {group.key: set(group.actors) for group in plan.groups}
        self.members = {cid: actors[key] for cid, key in plan.collectives.values()}

    def finished(self, p: str) -> bool:
        return self.position[p] >= self.total[p]

    def op(self, p: str) -> tuple[Op, int]:
        """The operation participant ``p`` is at, and its execution."""
        ops = self.schedules[p].ops
        return ops[self.position[p] % len(ops)], self.position[p] // len(ops)

    def sweep(self) -> bool:
        """Move every participant on as far as it can go; whether any moved."""
        moved = False
        for p in self.schedules:
            while not self.finished(p) and self._step(p):
                moved = True
        return moved

    def _step(self, p: str) -> bool:
        """Do (part of) ``p``'s current operation; False if it must wait."""
        op, execution = self.op(p)
        if op.kind == READ:
            if not self.buffered[p]:
                if self.written[op.channel] <= execution:
                    return False
                self.holding[p].append((op.channel, op.reader))
                self.buffered[p] = True
                return True
            if (p, op.reader) in self.receivers.get(op.channel, ()):
                return False   # an NCCL receive: its sender completes it
        elif op.kind == WRITE:
            if not self.buffered[p]:
                readers = len(self.plan.channels[op.channel].readers)
                slowest = min(self.released[(op.channel, r)] for r in range(readers))
                if self.written[op.channel] - slowest >= self.num_slots:
                    return False
                self.written[op.channel] += 1
                self.buffered[p] = True
                return True
            receivers = self.receivers.get(op.channel, ())
            if self.sent[p] < len(receivers):
                q, index = receivers[self.sent[p]]
                if self.finished(q) or self.op(q) != (Op(READ, op.node, op.channel, index),
                                                      execution) or not self.buffered[q]:
                    return False
                self.sent[p] += 1
                self._done(q)
                return True
        elif op.kind == COMPUTE and op.node in self.plan.collectives:
            cid = self.plan.collectives[op.node][0]
            group = self.members[cid]
            if not all(not self.finished(m) and self.op(m)[1] == execution
                       and self._collective(self.op(m)[0]) == cid for m in group):
                return False
            for member in group:
                self._done(member)
            return True
        self._done(p)
        return True

    def _collective(self, op: Op) -> int | None:
        entry = self.plan.collectives.get(op.node) if op.kind == COMPUTE else None
        return entry[0] if entry else None

    def _done(self, p: str) -> None:
        """``p``'s current operation is complete; slots go back at the end of an execution."""
        self.position[p] += 1
        self.buffered[p], self.sent[p] = False, 0
        if p == DRIVER or self.position[p] % len(self.schedules[p].ops) == 0:
            for key in self.holding[p]:
                self.released[key] += 1
            self.holding[p].clear()
