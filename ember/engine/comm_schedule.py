"""Order the communication of a graph's schedules (NCCL send/recv, collectives).

Note [communication order]
~~~~~~~~~~~~~~~~~~~~~~~~~~
Sends, receives and collectives block until every party is at the matching op, unlike the
buffered shared-memory channels. ``order_communication`` sorts each actor's ops (stably) by one
global key, the graph's bind order (a topological order): the node whose value travels, and for
every member of one collective the collective's first output. A send and its receive, and all
members of a collective, then share a key, so the communication with the smallest key pending
always has every party at it, and a node's ops still come after those of its inputs. The dry run
(``dry_run`` in schedule.py) replays the schedules, communication included, and raises
CompileError on any order that could hang. Graphs without GPU communication keep their
schedules as they are.
"""

from __future__ import annotations

from ember.engine.plan import Plan
from ember.engine.schedule import COMPUTE, Op, Schedule


def _key(plan: Plan, op: Op) -> int:
    """The global position of ``op`` (Note [communication order])."""
    if op.kind == COMPUTE and op.node in plan.collectives:
        return plan.collectives[op.node][0]
    return op.node


def order_communication(plan: Plan, schedules: dict[str, Schedule]) -> dict[str, Schedule]:
    """The schedules with their ops in the global order, when the graph communicates."""
    if not plan.groups:
        return schedules
    return {p: Schedule(p, sorted(s.ops, key=lambda op: _key(plan, op)), s.nodes)
            for p, s in schedules.items()}
