"""Dry-run deadlock check of per-participant communication schedules, and a deadlock-free ordering."""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any

from ember.exceptions import CompileError

SEND, RECV, COLLECTIVE = "send", "recv", "collective"

Op = tuple  # ("send", peer, tag) | ("recv", peer, tag) | ("collective", group_id, ...) | (other, ...)
Schedules = Mapping[Hashable, Sequence[Op]]


def format_op(op: Op) -> str:
    """A compact form of one op: send(B, 1), collective(g0), compute(fwd)."""
    return f"{op[0]}({', '.join(map(str, op[1:]))})"


def format_schedules(schedules: Schedules) -> str:
    """One line per participant listing its ops in order."""
    return "\n".join(f"{name}: {' '.join(format_op(op) for op in ops)}"
                     for name, ops in schedules.items())


def _validate(schedules: Schedules) -> None:
    """Reject malformed ops with a message naming the participant and the op."""
    for name, ops in schedules.items():
        for i, op in enumerate(ops):
            if not isinstance(op, tuple) or not op:
                raise CompileError(f"{name!r} op {i} is {op!r}, not a non-empty tuple")
            if op[0] in (SEND, RECV):
                if len(op) != 3:
                    raise CompileError(f"{name!r} op {i} {op!r} must be ({op[0]!r}, peer, tag)")
                if op[1] == name or op[1] not in schedules:
                    raise CompileError(f"{name!r} op {i} {format_op(op)} names peer {op[1]!r}, "
                                       f"which is not another participant")
            elif op[0] == COLLECTIVE and len(op) < 2:
                raise CompileError(f"{name!r} op {i} {op!r} must be ('collective', group_id, ...)")


def _members(schedules: Schedules, groups: Mapping[Hashable, Collection[Hashable]] | None,
             ) -> dict[Hashable, frozenset]:
    """The participants of each collective group: given, or every participant that joins it."""
    members: dict[Hashable, set] = {}
    for name, ops in schedules.items():
        for op in ops:
            if op[0] == COLLECTIVE:
                members.setdefault(op[1], set()).add(name)
    if groups is not None:
        for group, given in groups.items():
            members[group] = set(given)
    return {group: frozenset(names) for group, names in members.items()}


def check_schedules(schedules: Schedules,
                    groups: Mapping[Hashable, Collection[Hashable]] | None = None,
                    ) -> list[tuple[Hashable, Op]]:
    """Simulate blocking communication; return the order ops finish in, or raise CompileError on a hang.

    A send and its recv complete together (a rendezvous, as in NCCL); a collective completes when
    every member of its group is at the same op; any other op completes on its own.
    """
    _validate(schedules)
    members = _members(schedules, groups)
    pc = {name: 0 for name in schedules}
    done: list[tuple[Hashable, Op]] = []

    def head(name: Hashable) -> Op | None:
        ops = schedules[name]
        return ops[pc[name]] if pc[name] < len(ops) else None

    progress = True
    while progress:
        progress = False
        for name in schedules:
            while (op := head(name)) is not None:
                if op[0] == SEND:
                    peer = op[1]
                    if head(peer) != (RECV, name, op[2]):
                        break
                    done += [(name, op), (peer, head(peer))]
                    pc[name] += 1
                    pc[peer] += 1
                elif op[0] == RECV:
                    break  # completed by its sender's turn
                elif op[0] == COLLECTIVE:
                    group = members[op[1]]
                    if name not in group or any(head(m) != op for m in group):
                        break
                    for member in sorted(group, key=repr):
                        done.append((member, op))
                        pc[member] += 1
                else:
                    done.append((name, op))
                    pc[name] += 1
                progress = True
    stuck = {name: head(name) for name in schedules if head(name) is not None}
    if stuck:
        raise CompileError(_explain(schedules, members, pc, stuck))
    return done


def _waits_on(name: Hashable, op: Op, members: Mapping[Hashable, frozenset],
              stuck: Mapping[Hashable, Op]) -> list[Hashable]:
    """The participants that ``name`` waits for at ``op``."""
    if op[0] in (SEND, RECV):
        return [op[1]]
    group = members[op[1]]
    if name not in group:
        return []
    return [m for m in sorted(group, key=repr) if stuck.get(m) != op]


def _explain(schedules: Schedules, members: Mapping[Hashable, frozenset],
             pc: Mapping[Hashable, int], stuck: Mapping[Hashable, Op]) -> str:
    """A message naming the cycle of waiting participants (or who waits on a finished one)."""
    def at(name: Hashable) -> str:
        return f"{name!r} at op {pc[name]} {format_op(stuck[name])}"

    edges = {name: _waits_on(name, op, members, stuck) for name, op in stuck.items()}
    cycle = _find_cycle(edges)
    if cycle:
        steps = [f"{at(a)} waits for {b!r}" for a, b in zip(cycle, cycle[1:] + cycle[:1])]
        lines = ["schedule deadlocks: " + "; ".join(steps)]
    else:
        lines = ["schedule cannot finish:"]
        for name, op in stuck.items():
            if op[0] == COLLECTIVE and name not in members[op[1]]:
                lines.append(f"  {at(name)} is not a member of group {op[1]!r}")
                continue
            finished = [w for w in edges[name] if w not in stuck]
            if finished:
                lines.append(f"  {at(name)} waits for {', '.join(map(repr, finished))}, whose "
                             f"schedule has no matching op left")
    lines.append("blocked: " + "; ".join(at(name) for name in stuck))
    lines.append("order each participant's communication by one global order of the graph "
                 "(order_schedules) so that matching ops line up")
    return "\n".join(lines)


def _find_cycle(edges: Mapping[Hashable, list[Hashable]]) -> list[Hashable]:
    """One cycle of the wait-for graph as a list of participants, or [] if it has none."""
    state: dict[Hashable, int] = {}  # 1 on the current path, 2 finished
    path: list[Hashable] = []

    def visit(node: Hashable) -> list[Hashable]:
        state[node] = 1
        path.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in edges:
        if node not in state and (found := visit(node)):
            return list(found)
    return []


def order_schedules(schedules: Schedules, key: Callable[[Hashable, Op], Any],
                    ) -> dict[Hashable, list[Op]]:
    """Sort each participant's ops (stably) by one global ``key``, which makes them deadlock-free.

    ``key(participant, op)`` is typically the topological index of the graph node the op belongs
    to. Give a send and its recv, and every member's op of one collective, the same key, and
    distinct communications distinct keys: the communication with the smallest unfinished key then
    always has all its participants at it, so the schedules cannot hang. Data dependencies stay
    intact as long as the key orders a node's ops after those of its inputs.
    """
    return {name: sorted(ops, key=lambda op, name=name: key(name, op))
            for name, ops in schedules.items()}
