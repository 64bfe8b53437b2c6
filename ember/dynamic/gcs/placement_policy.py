"""Where a placement group's bundles go: a pure function of the bundles, the strategy and the
GCS's node records (Ray's PACK, SPREAD, STRICT_PACK, STRICT_SPREAD).

Note [bundle placement]: a node record (the GCS table ``nodes``) gives ``resources`` (totals),
maybe ``available`` (refreshed by heartbeats) and ``alive`` (absent: alive). What a node can
still give bundles is its total, less the bundles the GCS has placed there (``reserved``),
and at most what its last report says is available (running tasks hold some of it): the
smaller of the two. Renamed bundle resources (Note [bundle resources] in bundles.py) never
count. The node managers have the last word: a node may refuse a prepare when its report was
stale, and the group is tried again later (gcs/placement_groups.py).

- STRICT_PACK: every bundle on one node (the tightest fit among the nodes that can hold them).
- PACK: as STRICT_PACK when one node can hold them all; else bundle by bundle, onto a node the
  group already uses when one fits (the busiest such node first), else the tightest fit.
- STRICT_SPREAD: every bundle on a different node (a matching of bundles to nodes, so that
  uneven bundles find a placement whenever one exists).
- SPREAD: bundle by bundle, onto the node with the fewest of the group's bundles that fits,
  the one with the most room left on ties.

``fixed`` (bundles already placed, when a group is rescheduled after a node died) constrains the
rest: STRICT_PACK must use the same node, STRICT_SPREAD other nodes, PACK and SPREAD count them.
Ties are broken by node id, so a placement is deterministic.
"""

from __future__ import annotations

from collections import Counter

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
EPS = 1e-9
Resources = dict[str, float]


def is_alive(record: dict) -> bool:
    """Whether a node record describes a live node."""
    return record.get("alive", True) is not False


def node_room(record: dict, reserved: Resources | None = None) -> Resources:
    """What a node can still give bundles (Note [bundle placement])."""
    reserved = reserved or {}
    room = {k: float(v) - reserved.get(k, 0.0) for k, v in (record.get("resources") or {}).items()
            if "_group_" not in k}
    available = record.get("available")
    if available is not None:
        room = {k: min(v, float(available.get(k, 0.0))) for k, v in room.items()}
    return room


def place_bundles(bundles: list[Resources], strategy: str, nodes: dict[str, dict],
                  reserved: dict[str, Resources] | None = None,
                  fixed: dict[int, str] | None = None) -> dict[int, str] | None:
    """Choose a node for every bundle not in ``fixed``: {bundle index: node id}, or None
    when the live ``nodes`` (id -> record) cannot hold them now under ``strategy``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown placement strategy {strategy!r}; use one of {STRATEGIES}")
    reserved = reserved or {}
    fixed = dict(fixed or {})
    room = {nid: node_room(rec, reserved.get(nid)) for nid, rec in sorted(nodes.items())
            if is_alive(rec)}
    todo = [i for i in range(len(bundles)) if i not in fixed]
    if not todo:
        return {}
    if strategy == "STRICT_PACK":
        return _strict_pack(bundles, todo, room, set(fixed.values()))
    if strategy == "STRICT_SPREAD":
        return _strict_spread(bundles, todo, room, set(fixed.values()))
    if strategy == "PACK":
        if len(set(fixed.values())) <= 1:
            packed = _strict_pack(bundles, todo, room, set(fixed.values()))
            if packed is not None:
                return packed
        return _greedy(bundles, todo, room, Counter(fixed.values()), pack=True)
    return _greedy(bundles, todo, room, Counter(fixed.values()), pack=False)


def fits(need: Resources, room: Resources) -> bool:
    """Whether ``need`` fits into ``room``."""
    return all(room.get(k, 0.0) + EPS >= v for k, v in need.items() if v > 0)


def _take(room: Resources, need: Resources) -> None:
    for k, v in need.items():
        room[k] = room.get(k, 0.0) - v


def _leftover(need: Resources, room: Resources) -> float:
    """How loosely ``need`` fits: the share of ``room`` left in the resources it asks for."""
    shares = [(room[k] - v) / room[k] for k, v in need.items() if v > 0 and room.get(k, 0) > 0]
    return sum(shares) / len(shares) if shares else 1.0


def _total(bundles: list[Resources], indexes: list[int]) -> Resources:
    total: Resources = {}
    for i in indexes:
        for k, v in bundles[i].items():
            total[k] = total.get(k, 0.0) + v
    return total


def _strict_pack(bundles: list[Resources], todo: list[int], room: dict[str, Resources],
                 used: set[str]) -> dict[int, str] | None:
    need = _total(bundles, todo)
    if len(used) > 1:
        return None
    candidates = [nid for nid in room if (not used or nid in used) and fits(need, room[nid])]
    if not candidates:
        return None
    best = min(candidates, key=lambda nid: (_leftover(need, room[nid]), nid))
    return {i: best for i in todo}


def _strict_spread(bundles: list[Resources], todo: list[int], room: dict[str, Resources],
                   used: set[str]) -> dict[int, str] | None:
    free = [nid for nid in room if nid not in used]
    if len(free) < len(todo):
        return None
    options = {i: sorted((nid for nid in free if fits(bundles[i], room[nid])),
                         key=lambda nid: (-_leftover(bundles[i], room[nid]), nid))
               for i in todo}
    holder: dict[str, int] = {}  # node -> bundle index (Kuhn's augmenting paths)

    def assign(i: int, seen: set[str]) -> bool:
        for nid in options[i]:
            if nid in seen:
                continue
            seen.add(nid)
            if nid not in holder or assign(holder[nid], seen):
                holder[nid] = i
                return True
        return False

    for i in sorted(todo, key=lambda i: len(options[i])):
        if not assign(i, set()):
            return None
    return {i: nid for nid, i in holder.items()}


def _greedy(bundles: list[Resources], todo: list[int], room: dict[str, Resources],
            count: Counter, pack: bool) -> dict[int, str] | None:
    room = {nid: dict(r) for nid, r in room.items()}
    chosen: dict[int, str] = {}
    for i in todo:
        need = bundles[i]
        candidates = [nid for nid in room if fits(need, room[nid])]
        if not candidates:
            return None
        if pack:
            key = lambda nid: (-count[nid], _leftover(need, room[nid]), nid)  # noqa: E731
        else:
            key = lambda nid: (count[nid], -_leftover(need, room[nid]), nid)  # noqa: E731
        best = min(candidates, key=key)
        chosen[i] = best
        count[best] += 1
        _take(room[best], need)
    return chosen
