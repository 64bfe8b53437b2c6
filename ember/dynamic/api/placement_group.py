"""Placement groups as a program sees them: Ray's ``ray.util.placement_group`` API.

``placement_group(bundles, strategy)`` asks the GCS to reserve the bundles (gcs/placement_groups.py) and
returns at once; ``pg.ready()`` is an ObjectRef that resolves (to the group) once every bundle
is reserved. Tasks and actors go into a bundle with
``.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, bundle_index))``, which
renames what they ask for (Note [bundle resources] in bundles.py).

Note [placement gate]: a call placed in a group that is not yet CREATED waits for it here, in
its caller, like a call waits for its ref arguments (the group's ready ref is one more
dependency), then asks for a lease; once this process has seen the group CREATED, calls go
straight through. A call in a removed group fails with SchedulingError without being placed.
What this process knows of a group comes from the GCS's ``placement_groups`` publications,
subscribed to on first use.

Note [captured child tasks]: a task or actor placed with ``placement_group_capture_child_tasks``
tells its worker its group (``capture`` in the task's extras or the actor's options); while it
runs, the calls it makes without a ``scheduling_strategy`` of their own go into the same group,
in any bundle, and capture their own children too (Ray's semantics). "DEFAULT" escapes it.
"""

from __future__ import annotations

import contextvars
import numbers
import os
import threading
import time
from typing import Any

from ember.dynamic.api import driver
from ember.dynamic.node_manager.bundles import group_of, request_in_bundle
from ember.dynamic.core.core_worker import FAILED, INLINE
from ember.dynamic.core.object_ref import ID, ObjectRef
from ember.dynamic.gcs.placement_groups import CREATED, GROUPS, REMOVED
from ember.dynamic.gcs.placement_policy import STRATEGIES, fits
from ember.dynamic.api.runtime_context import current_namespace, facts, get_runtime_context
from ember._system.serialization import serialize
from ember.exceptions import SchedulingError

DEFAULT_STRATEGIES = ("DEFAULT", "SPREAD")  # SPREAD: as DEFAULT until tasks spread over nodes
OWNED_REMOVE_WAIT_S = 1.0


class PlacementGroupID(ID):
    """A placement group's id (``pg.id.hex()``)."""


class PlacementGroup:
    """A handle to a placement group: picklable, compared by id."""

    def __init__(self, id: "str | PlacementGroupID", bundle_specs: list[dict] | None = None
                 ) -> None:
        self._id = id.hex() if isinstance(id, PlacementGroupID) else id
        self._bundles = [dict(b) for b in bundle_specs] if bundle_specs is not None else None

    @property
    def id(self) -> PlacementGroupID:
        """The group's id."""
        return PlacementGroupID(self._id)

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        """The bundles asked for, in order (read from the GCS once for a handle made by id)."""
        if self._bundles is None:
            record = _record(self._id)
            self._bundles = [dict(b) for b in record["bundles"]] if record else []
        return [dict(b) for b in self._bundles]

    @property
    def bundle_count(self) -> int:
        """How many bundles the group has."""
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves to this group once all its bundles are reserved
        (``ember.get(pg.ready(), timeout=...)``, ``ember.wait([pg.ready()])``)."""
        return _watcher().ready_ref(self._id, self)

    def wait(self, timeout_seconds: float | None = 30) -> bool:
        """Wait up to ``timeout_seconds`` for the group to be ready; return whether it is."""
        ready, _ = driver.wait([self.ready()], timeout=timeout_seconds)
        return bool(ready)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self._id})"

    def __reduce__(self) -> tuple:
        return (PlacementGroup, (self._id, self._bundles))


class PlacementGroupSchedulingStrategy:
    """Run a task or actor in bundle ``placement_group_bundle_index`` of ``placement_group``
    (-1: any of its bundles). ``placement_group_capture_child_tasks`` is accepted for Ray's
    API; child tasks do not yet inherit the group."""

    def __init__(self, placement_group: PlacementGroup | None,
                 placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        if placement_group is not None and not isinstance(placement_group, PlacementGroup):
            raise TypeError(f"placement_group must be a PlacementGroup, not "
                            f"{type(placement_group).__name__}")
        index = placement_group_bundle_index
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"placement_group_bundle_index must be an int, not {index!r}")
        if placement_group is None and index != -1:
            raise ValueError("If placement group is not set, the value of bundle index must "
                             "be -1.")
        self.placement_group = placement_group
        self.placement_group_bundle_index = index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy({self.placement_group}, "
                f"bundle_index={self.placement_group_bundle_index})")


# ---- what tasks and actors ask for ---------------------------------------------------------

def check_strategy(strategy: Any, request: dict[str, float], what: str) -> None:
    """Reject a ``scheduling_strategy`` option Ray rejects, a bundle index out of range, and a
    request that can never fit in the bundle(s) it names."""
    if strategy is None or strategy in DEFAULT_STRATEGIES:
        return
    if isinstance(strategy, str):
        raise ValueError(f"scheduling_strategy={strategy!r} for {what}: use 'DEFAULT', "
                         f"'SPREAD' or a PlacementGroupSchedulingStrategy")
    if not isinstance(strategy, PlacementGroupSchedulingStrategy):
        raise TypeError(f"scheduling_strategy for {what} must be a string or a "
                        f"PlacementGroupSchedulingStrategy, not {type(strategy).__name__}")
    group, index = strategy.placement_group, strategy.placement_group_bundle_index
    if group is None:
        return
    bundles = group.bundle_specs
    if not -1 <= index < len(bundles):
        raise ValueError(f"placement group bundle index {index} is invalid. Valid placement "
                         f"group indexes: 0 to {len(bundles) - 1}.")
    room = bundles[index] if index >= 0 else _summed(bundles)
    need = {k: v for k, v in request.items() if v > 0}
    if not fits(need, room):
        where = f"bundle {index}" if index >= 0 else "all the bundles together"
        raise ValueError(f"{what} asks for {need}, which can never fit in {where} of "
                         f"{group} ({room}); ask for less (num_cpus=0 for a task that only "
                         f"needs the bundle's GPUs), or make the bundle bigger")


def constrain(strategy: Any, request: dict[str, float]) -> tuple[dict[str, float], str | None]:
    """What a call with ``strategy`` asks for, and the group it waits for (or None)."""
    if not isinstance(strategy, PlacementGroupSchedulingStrategy) or \
            strategy.placement_group is None:
        return request, None
    pg_id = strategy.placement_group._id
    return request_in_bundle(request, pg_id, strategy.placement_group_bundle_index), pg_id


def capture_spec(strategy: Any) -> tuple[str, list[dict]] | None:
    """What a call with ``strategy`` tells its worker so that its children inherit the group
    (Note [captured child tasks]), or None."""
    if (isinstance(strategy, PlacementGroupSchedulingStrategy)
            and strategy.placement_group is not None
            and strategy.placement_group_capture_child_tasks):
        return strategy.placement_group._id, strategy.placement_group.bundle_specs
    return None


_captured: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "ember_captured_placement_group", default=None)
_actor_capture: tuple | None = None  # the group of the actor this process hosts, if it captures


def enter_capture(spec: tuple | None) -> contextvars.Token | None:
    """A worker starts a task whose children go into group ``spec`` (None: no group)."""
    return None if spec is None else _captured.set(spec)


def leave_capture(token: contextvars.Token | None) -> None:
    """Undo ``enter_capture``."""
    if token is not None:
        _captured.reset(token)


def capture_for_actor(spec: tuple | None) -> None:
    """The actor this process hosts places its children in group ``spec``."""
    global _actor_capture
    _actor_capture = spec


def inherited(strategy: Any) -> Any:
    """The strategy a call runs under: its own, else its caller's captured group."""
    if strategy is not None:
        return strategy
    spec = _captured.get() or _actor_capture
    if spec is None:
        return None
    return PlacementGroupSchedulingStrategy(PlacementGroup(*spec), -1, True)


def gate(pg_id: str | None) -> ObjectRef | None:
    """The ref a call placed in group ``pg_id`` waits for, None if none (Note [placement gate])."""
    return None if pg_id is None else _watcher().gate(pg_id)


# ---- the public functions ------------------------------------------------------------------

def validate_bundles(bundles: Any) -> list[dict[str, float]]:
    """Check bundles as Ray does: a non-empty list of dicts of resource name to an amount
    >= 0, each with something > 0; return them as floats without the zero amounts."""
    if not isinstance(bundles, (list, tuple)):
        raise ValueError(f"The type of bundles must be list, got {bundles!r}")
    if not bundles:
        raise ValueError("The placement group `bundles` argument cannot contain an empty list")
    checked = []
    for bundle in bundles:
        if not isinstance(bundle, dict) or not all(isinstance(k, str) for k in bundle):
            raise ValueError(f"Bundles must be a non-empty list of resource dictionaries, "
                             f"e.g. [{{'CPU': 1}}, {{'GPU': 1}}]; got {bundles!r}")
        for name, amount in bundle.items():
            if not isinstance(amount, numbers.Real) or isinstance(amount, bool) or amount < 0:
                raise ValueError(f"bundle {bundle!r}: the amount of {name!r} must be a "
                                 f"number >= 0, not {amount!r}")
        if not any(amount > 0 for amount in bundle.values()):
            raise ValueError(f"Bundles cannot be an empty dictionary or resources with only 0 "
                             f"values. Bundles: {bundles!r}")
        checked.append({k: float(v) for k, v in bundle.items() if v > 0})
    return checked


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _max_cpu_fraction_per_node: float = 1.0,
                    _soft_target_node_id: str | None = None,
                    bundle_label_selector: list[dict] | None = None) -> PlacementGroup:
    """Ask for a gang of resource bundles placed by ``strategy`` (PACK, SPREAD, STRICT_PACK,
    STRICT_SPREAD); returns at once, ``ready()`` tells when the bundles are reserved."""
    checked = validate_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}. Supported "
                         f"strategies are: {list(STRATEGIES)}.")
    if lifetime not in (None, "detached"):
        raise ValueError(f"Placement group `lifetime` argument must be either `None` or "
                         f"'detached'. Got {lifetime!r}.")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if _soft_target_node_id is not None or bundle_label_selector is not None or \
            _max_cpu_fraction_per_node != 1.0:
        raise ValueError("_soft_target_node_id, bundle_label_selector and "
                         "_max_cpu_fraction_per_node are not supported by ember yet")
    core, _ = driver.runtime()
    pg_id = os.urandom(14).hex()
    core.gcs_call("create_placement_group", {
        "id": pg_id, "bundles": checked, "strategy": strategy, "name": name,
        "namespace": current_namespace(), "lifetime": lifetime, "creator": core.address})
    if lifetime is None and not facts().is_worker:
        _watcher().owned.add(pg_id)
    return PlacementGroup(pg_id, checked)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Free a group's bundles; the tasks and actors running in them are ended."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group takes a PlacementGroup, not "
                        f"{type(placement_group).__name__}")
    core, _ = driver.runtime()
    core.gcs_call("remove_placement_group", placement_group._id)
    _watcher().owned.discard(placement_group._id)


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group named ``placement_group_name`` in this job's namespace."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError("Please supply a non-empty value to get_placement_group")
    core, _ = driver.runtime()
    record = core.gcs_call("get_placement_group", None, placement_group_name,
                           current_namespace())
    if record is None or record["state"] == REMOVED:
        raise ValueError(f"Failed to look up placement group with name: "
                         f"{placement_group_name}")
    return PlacementGroup(record["id"], record["bundles"])


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """Ray's table of groups: one group's entry, or {group id: entry} for every group."""
    core, _ = driver.runtime()
    if placement_group is not None:
        record = _record(placement_group._id)
        return _table_entry(record) if record else {}
    return {pg_id: _table_entry(rec) for pg_id, rec in core.gcs_call("kv_items", GROUPS)}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the calling task or actor runs in; None in the driver or outside a group."""
    if not facts().is_worker:
        return None
    pg_id = group_of(get_runtime_context().get_assigned_resources())
    return None if pg_id is None else PlacementGroup(pg_id)


def _table_entry(record: dict) -> dict:
    return {"placement_group_id": record["id"], "name": record.get("name") or "",
            "bundles": dict(enumerate(record["bundles"])),
            "bundles_to_node_id": {i: nid for i, nid in enumerate(record["nodes"])
                                   if nid is not None},
            "strategy": record["strategy"], "state": record["state"],
            "is_detached": record.get("lifetime") == "detached",
            "stats": {"creation_time": record.get("created_at")}}


def _summed(bundles: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for k, v in bundle.items():
            total[k] = total.get(k, 0.0) + v
    return total


def _record(pg_id: str) -> dict | None:
    core, _ = driver.runtime()
    return core.gcs_call("get_placement_group", pg_id)


# ---- this process's view of group states (Note [placement gate]) ---------------------------

class GroupWatcher:
    """The states of the groups this process waits on, kept current by GCS publications."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.states: dict[str, str] = {}              # group id -> last state heard
        self.waiting: dict[str, list[tuple[str, Any]]] = {}  # group id -> (ref id, value)
        self.owned: set[str] = set()                  # non-detached groups this driver made
        self.subscribed = False
        core.pub_listeners[GROUPS] = self.changed

    def ready_ref(self, pg_id: str, value: Any) -> ObjectRef:
        """A new ref that resolves to ``value`` once the group is CREATED (fails if removed)."""
        core = self.core
        oid = core.new_id()
        ref = core.owned_ref(oid)
        with core.lock:
            state = self.states.get(pg_id)
            if state not in (CREATED, REMOVED):
                self.waiting.setdefault(pg_id, []).append((oid, value))
                if state is None:
                    self._ask(pg_id)
                return ref
        self._settle(pg_id, state, [(oid, value)])
        return ref

    def gate(self, pg_id: str) -> ObjectRef | None:
        """None once the group is known CREATED, else a ref to wait for."""
        if self.states.get(pg_id) == CREATED:
            return None
        return self.ready_ref(pg_id, None)

    def changed(self, pg_id: str, record: dict | None) -> None:
        """A publication (or answer) about a group: resolve the refs that wait for it."""
        state = record["state"] if record else REMOVED
        with self.core.lock:
            if pg_id not in self.states and pg_id not in self.waiting:
                return  # a group this process never asked about
            self.states[pg_id] = state
            done = self.waiting.pop(pg_id, []) if state in (CREATED, REMOVED) else []
        self._settle(pg_id, state, done)

    def _ask(self, pg_id: str) -> None:
        core = self.core
        if not self.subscribed:
            self.subscribed = True
            core.endpoint.send(core.gcs_address, "subscribe", GROUPS, core.address)
        answer = core.endpoint.request(core.gcs_address, "get_placement_group", pg_id)
        answer.add_done_callback(lambda fut: fut.exception() is None and self.changed(
            pg_id, fut.result()))

    def _settle(self, pg_id: str, state: str, refs: list[tuple[str, Any]]) -> None:
        for oid, value in refs:
            if state == CREATED:
                self.core.resolve(oid, INLINE, serialize(value, "a placement group").to_bytes())
            else:
                self.core.resolve(oid, FAILED, SchedulingError(
                    f"placement group {pg_id} was removed (or never existed); nothing can be "
                    f"placed in it"))

    def remove_owned(self) -> None:
        """At shutdown: remove the non-detached groups this driver made (Ray's lifetime)."""
        core = self.core
        asked = [core.endpoint.request(core.gcs_address, "remove_placement_group", pg_id)
                 for pg_id in self.owned]
        self.owned.clear()
        deadline = time.monotonic() + OWNED_REMOVE_WAIT_S
        for fut in asked:
            try:
                fut.result(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - the cluster is going away anyway
                return


_current: GroupWatcher | None = None
_current_lock = threading.Lock()


def _watcher() -> GroupWatcher:
    global _current
    core, _ = driver.runtime()
    with _current_lock:
        if _current is None or _current.core is not core:
            _current = GroupWatcher(core)
        return _current


def _remove_owned_at_shutdown() -> None:
    if _current is not None and driver.is_initialized() and driver.runtime()[0] is _current.core:
        _current.remove_owned()


driver.add_shutdown_hook(_remove_owned_at_shutdown)
