"""Order the communication of a graph's schedules (NCCL send/recv, collectives) and dry-run check it.

Note [communication order]
~~~~~~~~~~~~~~~~~~~~~~~~~~
Sends, receives and collectives block until every party is at the matching op, unlike the
buffered shared-memory channels. ``order_communication`` sorts each actor's ops by one global
key, the graph's bind order (a topological order): the node whose value travels, and for every
member of one collective the collective's first output. A send and its receive, and all members of
a collective, then share a key, so the communication with the smallest key pending always has
every party at it (``ember.gpu.order_schedules``). ``check_communication`` replays the projected
send/recv/collective ops of a few executions with ``check_schedules`` and raises CompileError on
any order that could hang. Graphs without GPU communication keep their schedules as they are.
"""

from __future__ import annotations

from ember.engine.plan import Plan
from ember.engine.schedule import COMPUTE, READ, WRITE, Op, Schedule
from ember.exceptions import CompileError
from ember.gpu.schedule_check import COLLECTIVE, RECV, SEND, check_schedules, order_schedules
from ember.gpu.tensors import NCCL


def _key(plan: Plan, op: Op) -> int:
    """The global position of ``op`` (Note [communication order])."""
    if op.kind == COMPUTE and op.node in plan.collectives:
        return plan.collectives[op.node][0]
    return op.node


def order_communication(plan: Plan, schedules: dict[str, Schedule]) -> dict[str, Schedule]:
    """The schedules with their ops in the global order, when the graph communicates."""
    if not plan.groups:
        return schedules
    ordered = order_schedules({p: s.ops for p, s in schedules.items()},
                              lambda _, op: _key(plan, op))
    return {p: Schedule(p, ordered[p], s.nodes) for p, s in schedules.items()}


def communication_ops(plan: Plan, schedule: Schedule) -> list[tuple]:
    """The blocking communication of one execution of ``schedule``, as check_schedules ops."""
    ops: list[tuple] = []
    for op in schedule.ops:
        edge = plan.tensor_edges.get(op.channel)
        if op.kind == WRITE and edge is not None:
            readers = plan.channels[op.channel].readers
            ops.extend((SEND, r, op.channel) for r, t in zip(readers, edge.transports) if t == NCCL)
        elif op.kind == READ and edge is not None and edge.transports[op.reader] == NCCL:
            ops.append((RECV, plan.channels[op.channel].writer, op.channel))
        elif op.kind == COMPUTE and op.node in plan.collectives:
            ops.append((COLLECTIVE, plan.collectives[op.node][0]))
    return ops


def check_communication(plan: Plan, schedules: dict[str, Schedule], executions: int = 2) -> None:
    """Raise CompileError if the schedules' communication could deadlock (a dry run, no GPU)."""
    comm = {p: communication_ops(plan, s) * executions for p, s in schedules.items()}
    comm = {p: ops for p, ops in comm.items() if ops}
    if not comm:
        return
    actors = {g.key: g.actors for g in plan.groups}
    members = {cid: actors[key] for cid, key in plan.collectives.values()}
    try:
        check_schedules(comm, members)
    except CompileError as exc:
        raise CompileError(f"the GPU communication of the compiled graph can deadlock "
                           f"(Note [communication order] in ember/engine/comm_schedule.py):\n"
                           f"{exc}") from None
