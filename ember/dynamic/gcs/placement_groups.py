"""The GCS's placement groups: their table, and reserving their bundles on node managers.

Tables (in the GCS's storage backend, so they survive a GCS restart like the others):
``placement_groups`` (group id -> record) and ``named_placement_groups`` ("namespace/name" ->
group id). A record holds the request (``bundles``, ``strategy``, ``name``, ``namespace``,
``lifetime``, ``creator``), the ``state`` (PENDING, CREATED, RESCHEDULING, REMOVED), and per
bundle the node holding it (``nodes``) and that node's incarnation (``incarnations``).
Changes are published on the ``placement_groups`` channel (clients resolve ``ready()`` refs
from them, placement_group.py).

Note [placement protocol]: two phases, so a group is reserved whole or not at all. The GCS
chooses nodes (placement_policy.py) and sends ``prepare_bundles`` to each chosen node manager,
which takes the bundles' resources from its available pool or refuses (all of that node's
bundles or none). When every node said yes, ``commit_bundles`` makes the bundles usable (the
node adds their renamed resources, Note [bundle resources] in bundles.py), and once every
commit is acknowledged the record turns CREATED. A refusal, a missing answer (PHASE_TIMEOUT_S)
or a removal meanwhile sends ``return_bundles`` to the nodes of the attempt (idempotent: a node
that holds nothing of it answers yes) and the group stays pending. Messages from the GCS to a
node keep their order, so a ``return_bundles`` is always handled before a later prepare there.

Pending groups are tried again, oldest first, when the ``nodes`` table changes (a node
registers, reports, dies), when a group is removed, and after a refusal on a timer that backs
off from RETRY_MIN_S to RETRY_MAX_S (a refusal means the node's report was stale, e.g. tasks
held the resources). A group that does not fit does not hold back the ones after it.
Removing a group gives its bundles back and answers once every node acknowledged, so the
resources are free when ``remove_placement_group`` returns. A node that dies (its record says
``alive: False``) or restarts (its record names another ``pid``) loses its bundles: the group
turns RESCHEDULING and only those bundles are placed again (Ray's semantics). A restarted GCS
gives back whatever a pending group may have held from an attempt it did not see finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ember.dynamic.gcs.placement_policy import is_alive, place_bundles

GROUPS = "placement_groups"
NAMES = "named_placement_groups"
PENDING, CREATED, RESCHEDULING, REMOVED = "PENDING", "CREATED", "RESCHEDULING", "REMOVED"
PHASE_TIMEOUT_S = 10.0
REMOVED_KEPT = 1000  # removed groups stay in the table (Ray's table shows them), the newest
RETRY_MIN_S, RETRY_MAX_S = 0.05, 2.0


def name_key(namespace: str | None, name: str) -> str:
    """The key of a named group in ``named_placement_groups``."""
    return f"{namespace or ''}/{name}"


def incarnation(record: dict) -> Any:
    """What tells one start of a node manager from the next (its pid)."""
    return record.get("pid")


@dataclass
class Attempt:
    """One two-phase reservation of some bundles of a group (Note [placement protocol])."""

    pg_id: str
    placement: dict[int, str]           # bundle index -> node id
    phase: str = "prepare"
    waiting: set[str] = field(default_factory=set)
    refused: bool = False
    removed: bool = False

    def by_node(self) -> dict[str, list[int]]:
        """The bundle indexes placed on each node."""
        nodes: dict[str, list[int]] = {}
        for index, nid in sorted(self.placement.items()):
            nodes.setdefault(nid, []).append(index)
        return nodes


class PlacementGroupManager:
    """The GCS handlers of placement groups and the reservation protocol's coordinator."""

    def __init__(self, storage: Any, endpoint: Any, publish: Callable[..., None],
                 watchers: dict[str, list[Callable]]) -> None:
        """``storage``, ``endpoint``, ``publish`` and ``watchers`` are the GCS server's own."""
        self.storage = storage
        self.endpoint = endpoint
        self.publish = publish
        self.attempts: dict[str, Attempt] = {}
        self.retry_delay = RETRY_MIN_S
        self.retry_armed = False
        ep = self.endpoint
        ep.on("create_placement_group", self.create)
        ep.on("remove_placement_group", self.remove)
        ep.on("get_placement_group", self.get)
        watchers.setdefault("nodes", []).append(self.node_changed)
        ep.call_soon(self.recover)

    # ---- handlers ----------------------------------------------------------------------------

    def create(self, reply_to: str, rid: int, request: dict) -> None:
        """Record a new group (PENDING) and try to place it; refuse a name in use."""
        pg_id = request["id"]
        if self.storage.get(GROUPS, pg_id) is not None:  # a resent request
            self.endpoint.reply(reply_to, rid, None)
            return
        if request.get("name"):
            key = name_key(request.get("namespace"), request["name"])
            holder = self.storage.get(NAMES, key)
            if holder is not None:
                self.endpoint.reply(reply_to, rid, error=ValueError(
                    f"a placement group named {request['name']!r} already exists in this "
                    f"namespace; remove it first or pick another name"))
                return
            self.storage.put(NAMES, key, pg_id)
        count = len(request["bundles"])
        record = {**request, "state": PENDING, "nodes": [None] * count,
                  "incarnations": [None] * count, "created_at": time.time()}
        self._save(record)
        self.endpoint.reply(reply_to, rid, None)
        self.schedule()

    def remove(self, reply_to: str, rid: int, pg_id: str) -> None:
        """Remove a group: give its bundles back, then answer (removing twice is fine)."""
        record = self.storage.get(GROUPS, pg_id)
        if record is None or record["state"] == REMOVED:
            self.endpoint.reply(reply_to, rid, None)
            return
        nodes = {nid for nid in record["nodes"] if nid is not None}
        attempt = self.attempts.get(pg_id)
        if attempt is not None:
            attempt.removed = True
            nodes.update(attempt.placement.values())
        if record.get("name"):
            key = name_key(record.get("namespace"), record["name"])
            if self.storage.get(NAMES, key) == pg_id:
                self.storage.delete(NAMES, key)
        self._save({**record, "state": REMOVED, "removed_at": time.time(),
                    "nodes": [None] * len(record["nodes"])})
        self._forget_old_removed()

        def freed() -> None:
            self.endpoint.reply(reply_to, rid, None)
            self.schedule()

        self._give_back(pg_id, {nid: None for nid in nodes}, freed)

    def _forget_old_removed(self) -> None:
        removed = sorted((rec["removed_at"], pg_id) for pg_id, rec in self.storage.items(GROUPS)
                         if rec["state"] == REMOVED)
        for _, pg_id in removed[:max(0, len(removed) - REMOVED_KEPT)]:
            self.storage.delete(GROUPS, pg_id)

    def get(self, reply_to: str, rid: int, pg_id: str | None, name: str | None = None,
            namespace: str | None = None) -> None:
        """Answer with a group's record (by id, or by name in ``namespace``), or None."""
        if pg_id is None and name is not None:
            pg_id = self.storage.get(NAMES, name_key(namespace, name))
        self.endpoint.reply(reply_to, rid, self.storage.get(GROUPS, pg_id) if pg_id else None)

    # ---- placing -----------------------------------------------------------------------------

    def schedule(self) -> None:
        """Start an attempt for every waiting group that the nodes can hold now."""
        nodes = {nid: rec for nid, rec in self.storage.items("nodes") if is_alive(rec)}
        reserved = self._reserved()
        waiting = sorted((rec for _, rec in self.storage.items(GROUPS)
                          if rec["state"] in (PENDING, RESCHEDULING)
                          and rec["id"] not in self.attempts),
                         key=lambda rec: rec["created_at"])
        for record in waiting:
            fixed = {i: nid for i, nid in enumerate(record["nodes"]) if nid is not None}
            placement = place_bundles(record["bundles"], record["strategy"], nodes, reserved,
                                      fixed)
            if not placement:
                continue
            for index, nid in placement.items():
                _add(reserved.setdefault(nid, {}), record["bundles"][index])
            self._prepare(Attempt(record["id"], placement), record, nodes)

    def _prepare(self, attempt: Attempt, record: dict, nodes: dict[str, dict]) -> None:
        self.attempts[attempt.pg_id] = attempt
        for nid, indexes in attempt.by_node().items():
            items = [(i, record["bundles"][i]) for i in indexes]
            self._ask(attempt, nid, nodes[nid]["address"], "prepare_bundles", attempt.pg_id,
                      items)
        self._arm_timeout(attempt)

    def _ask(self, attempt: Attempt, nid: str, address: str, kind: str, *fields: Any) -> None:
        attempt.waiting.add(nid)
        phase = attempt.phase
        fut = self.endpoint.request(address, kind, *fields)
        fut.add_done_callback(lambda f: self.endpoint.call_soon(
            lambda: self._answered(attempt, phase, nid, f)))

    def _arm_timeout(self, attempt: Attempt) -> None:
        phase = attempt.phase

        def expire() -> None:
            if self.attempts.get(attempt.pg_id) is attempt and attempt.phase == phase:
                attempt.refused = attempt.refused or bool(attempt.waiting)
                attempt.waiting.clear()
                self._phase_done(attempt)

        self.endpoint.call_later(PHASE_TIMEOUT_S, expire)

    def _answered(self, attempt: Attempt, phase: str, nid: str, fut: Any) -> None:
        if (self.attempts.get(attempt.pg_id) is not attempt or attempt.phase != phase
                or nid not in attempt.waiting):
            return
        attempt.waiting.discard(nid)
        answer = fut.result() if fut.exception() is None else None
        ok = bool(answer[0]) if phase == "prepare" and answer else bool(answer)
        attempt.refused = attempt.refused or not ok
        if not attempt.waiting:
            self._phase_done(attempt)

    def _phase_done(self, attempt: Attempt) -> None:
        pg_id = attempt.pg_id
        nodes = dict(self.storage.items("nodes"))
        if attempt.phase == "prepare" and not (attempt.refused or attempt.removed):
            attempt.phase = "commit"
            for nid, indexes in attempt.by_node().items():
                self._ask(attempt, nid, nodes.get(nid, {}).get("address", ""), "commit_bundles",
                          pg_id, indexes)
            self._arm_timeout(attempt)
            return
        del self.attempts[pg_id]
        record = self.storage.get(GROUPS, pg_id)
        if attempt.refused or attempt.removed or record is None or record["state"] == REMOVED:
            self._give_back(pg_id, attempt.by_node(), lambda: None)
            if not attempt.removed:
                self._retry_later()
            return
        placed, incarnations = list(record["nodes"]), list(record["incarnations"])
        for index, nid in attempt.placement.items():
            placed[index], incarnations[index] = nid, incarnation(nodes.get(nid, {}))
        done = all(nid is not None for nid in placed)
        self._save({**record, "nodes": placed, "incarnations": incarnations,
                    "state": CREATED if done else RESCHEDULING})
        self.retry_delay = RETRY_MIN_S

    def _give_back(self, pg_id: str, indexes: dict[str, list[int] | None],
                   then: Callable[[], None]) -> None:
        """Send ``return_bundles`` to each node (bundles ``indexes[node]``, None: all of the
        group there); call ``then`` once all answered or PHASE_TIMEOUT_S passed."""
        nodes = dict(self.storage.items("nodes"))
        left = {nid for nid in indexes if nid in nodes}
        finished = [False]

        def one_done(nid: str | None) -> None:
            left.discard(nid)
            if not left and not finished[0]:
                finished[0] = True
                then()

        for nid in list(left):
            fut = self.endpoint.request(nodes[nid]["address"], "return_bundles", pg_id,
                                        indexes[nid])
            fut.add_done_callback(lambda _f, nid=nid: self.endpoint.call_soon(
                lambda: one_done(nid)))
        self.endpoint.call_later(PHASE_TIMEOUT_S, lambda: [one_done(n) for n in list(left)])
        if not left:
            one_done(None)

    def _retry_later(self) -> None:
        if self.retry_armed:
            return
        self.retry_armed = True
        delay, self.retry_delay = self.retry_delay, min(RETRY_MAX_S, self.retry_delay * 2)

        def retry() -> None:
            self.retry_armed = False
            self.schedule()

        self.endpoint.call_later(delay, retry)

    def _reserved(self) -> dict[str, dict[str, float]]:
        """The bundles placed or being placed on each node."""
        reserved: dict[str, dict[str, float]] = {}
        for _, record in self.storage.items(GROUPS):
            if record["state"] != REMOVED:
                for index, nid in enumerate(record["nodes"]):
                    if nid is not None:
                        _add(reserved.setdefault(nid, {}), record["bundles"][index])
        for attempt in self.attempts.values():
            bundles = self.storage.get(GROUPS, attempt.pg_id)["bundles"]
            for index, nid in attempt.placement.items():
                _add(reserved.setdefault(nid, {}), bundles[index])
        return reserved

    # ---- nodes coming and going --------------------------------------------------------------

    def node_changed(self, node_id: str, record: dict | None) -> None:
        """A node registered, reported or died: drop the bundles it lost, place what waits."""
        alive = record is not None and is_alive(record)
        now = incarnation(record or {})
        for _, group in self.storage.items(GROUPS):
            if group["state"] not in (CREATED, RESCHEDULING):
                continue
            placed, incarnations = list(group["nodes"]), list(group["incarnations"])
            lost = [i for i, nid in enumerate(placed) if nid == node_id and (
                not alive or (now is not None and incarnations[i] not in (None, now)))]
            for i in lost:
                placed[i] = incarnations[i] = None
            if lost:
                self._save({**group, "nodes": placed, "incarnations": incarnations,
                            "state": RESCHEDULING})
        self.schedule()

    def recover(self) -> None:
        """At start: give back what attempts a dead GCS did not finish may hold, then place
        the waiting groups."""
        nodes = [nid for nid, rec in self.storage.items("nodes") if is_alive(rec)]
        for _, group in self.storage.items(GROUPS):
            if group["state"] in (PENDING, RESCHEDULING):
                unplaced = [i for i, nid in enumerate(group["nodes"]) if nid is None]
                self._give_back(group["id"], {nid: unplaced for nid in nodes}, lambda: None)
        self.schedule()

    def _save(self, record: dict) -> None:
        self.storage.put(GROUPS, record["id"], record)
        self.publish(GROUPS, record["id"], record)


def _add(total: dict[str, float], bundle: dict[str, float]) -> None:
    for k, v in bundle.items():
        total[k] = total.get(k, 0.0) + v
