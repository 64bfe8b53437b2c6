"""Placement group bundles on a node: their resource names, and the node manager's reservations.

Note [bundle resources]: as in Ray, a placement group's effect is carried by resource names
alone. Reserving bundle ``i`` of group ``G`` on a node takes the bundle's resources from the
node's available pool (prepare) and then adds, for each of its resources ``R`` (commit),
``R_group_<i>_<G>`` and ``R_group_<G>`` (the wildcard, summed over G's bundles on the node)
with the bundle's amounts, plus ``bundle_group_<i>_<G>`` and ``bundle_group_<G>`` with 1000
each. A task or actor placed in bundle ``i`` asks for ``R_group_<i>_<G>`` *and*
``R_group_<G>`` for each resource it needs, and 0.001 of both ``bundle_group`` names (so that a
zero-resource actor too lands where the bundle is); in "any bundle" (index -1) it asks for the
wildcard names only. Asking for both keeps the two views consistent: wildcard users and indexed
users together never hold more than the bundles reserved. A node's totals thus name the bundles
it holds, so a scheduler that routes requests by resources finds the right node without knowing
placement groups exist. GPUs keep their ids (Note [GPU instances] in resources.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ember.exceptions import SchedulingError


BUNDLE = "bundle"
BUNDLE_UNITS = 1000.0     # each reserved bundle adds this much of its bundle_group names
BUNDLE_REQUEST = 0.001    # every request placed in a bundle asks for this much of them


def group_resource(name: str, pg_id: str, index: int = -1) -> str:
    """Ray's name of resource ``name`` in bundle ``index`` of group ``pg_id`` (-1: any bundle)."""
    return f"{name}_group_{pg_id}" if index < 0 else f"{name}_group_{index}_{pg_id}"


def bundle_resources(bundle: dict[str, float], pg_id: str, index: int) -> dict[str, float]:
    """The resources a committed bundle adds to its node (Note [bundle resources])."""
    added: dict[str, float] = {}
    for name, amount in {**bundle, BUNDLE: BUNDLE_UNITS}.items():
        for key in (group_resource(name, pg_id, index), group_resource(name, pg_id)):
            added[key] = added.get(key, 0.0) + amount
    return added


def request_in_bundle(request: dict[str, float], pg_id: str, index: int) -> dict[str, float]:
    """What a task or actor asking for ``request`` asks for in bundle ``index`` (-1: any)."""
    renamed: dict[str, float] = {}
    for name, amount in {**request, BUNDLE: BUNDLE_REQUEST}.items():
        if amount > 0:
            renamed[group_resource(name, pg_id)] = amount
            if index >= 0:
                renamed[group_resource(name, pg_id, index)] = amount
    return renamed


def group_of(resources: dict[str, float]) -> str | None:
    """The placement group a (renamed) request is placed in, or None."""
    prefix = f"{BUNDLE}_group_"
    for key in resources:
        if key.startswith(prefix) and "_" not in key[len(prefix):]:
            return key[len(prefix):]
    return None


class BundleHost(Protocol):
    """What the bundle table needs of its node manager (``NodeManager``, server.py)."""

    endpoint: Any        # the node manager's Endpoint
    resources: Any       # its NodeResources
    workers: dict        # worker id -> its worker record
    pending: list        # lease requests waiting for resources

    def schedule(self) -> None: ...

    def report(self) -> None: ...

    def kill_worker(self, worker_id: str, force: bool = True,
                    reason: str = "killed by ember.kill") -> None: ...


@dataclass
class HeldBundle:
    """One bundle this node holds: its resources, the GPUs it took, whether committed."""

    resources: dict[str, float]
    gpu_ids: list[int]
    committed: bool = False

    def added(self, pg_id: str, index: int) -> tuple[dict[str, float], dict[int, float]]:
        """The renamed resources its commit adds, and the GPU instances behind them."""
        amount = self.resources.get("GPU", 0.0)
        share = amount if amount < 1 else 1.0
        return bundle_resources(self.resources, pg_id, index), {g: share for g in self.gpu_ids}


class BundleTable:
    """The node manager's side of the reservation protocol (Note [placement protocol] in
    gcs/placement_groups.py): ``prepare_bundles``, ``commit_bundles``, ``return_bundles``, each
    idempotent, so that a resent or repeated message changes nothing."""

    def __init__(self, manager: BundleHost) -> None:
        self.manager = manager
        self.held: dict[tuple[str, int], HeldBundle] = {}
        ep = manager.endpoint
        ep.on("prepare_bundles", self.prepare)
        ep.on("commit_bundles", self.commit)
        ep.on("return_bundles", self.give_back)

    def prepare(self, reply_to: str, rid: int, pg_id: str,
                bundles: list[tuple[int, dict[str, float]]]) -> None:
        """Take the bundles' resources from the available pool, all or none; answer
        (whether they are held, what is available now)."""
        resources = self.manager.resources
        taken: list[tuple[int, HeldBundle]] = []
        for index, bundle in bundles:
            if (pg_id, index) in self.held:
                continue
            gpu_ids = resources.try_acquire(bundle)
            if gpu_ids is None:
                for _, held in taken:
                    resources.release(held.resources, held.gpu_ids)
                self.manager.endpoint.reply(reply_to, rid, (False, dict(resources.available)))
                return
            taken.append((index, HeldBundle(dict(bundle), gpu_ids)))
        self.held.update(((pg_id, index), held) for index, held in taken)
        self.manager.endpoint.reply(reply_to, rid, (True, dict(resources.available)))

    def commit(self, reply_to: str, rid: int, pg_id: str, indexes: list[int]) -> None:
        """Make prepared bundles usable by adding their renamed resources; answer whether
        every one of them is held."""
        found = all((pg_id, i) in self.held for i in indexes)
        for index in indexes:
            held = self.held.get((pg_id, index))
            if held is not None and not held.committed:
                held.committed = True
                self.manager.resources.add(*held.added(pg_id, index))
        self.manager.schedule()
        self.manager.report()   # the GCS routes by the new names (Note [spillback]) at once
        self.manager.endpoint.reply(reply_to, rid, found)

    def give_back(self, reply_to: str, rid: int, pg_id: str,
                  indexes: list[int] | None = None) -> None:
        """Free bundles of a group (all of them for None), prepared or committed: end the
        workers that use them, refuse lease requests that wait for them, return their
        resources to the node's pool."""
        manager = self.manager
        keys = [k for k in self.held if k[0] == pg_id and (indexes is None or k[1] in indexes)]
        names: set[str] = set()
        for key in keys:
            held = self.held.pop(key)
            if held.committed:
                added, gpus = held.added(pg_id, key[1])
                names.update(added)
                manager.resources.remove(added, gpus)
            manager.resources.release(held.resources, held.gpu_ids)
        if names:
            for worker in list(manager.workers.values()):
                if worker.lease is not None and names & worker.lease.resources.keys():
                    manager.kill_worker(worker.worker_id, True,
                                        f"was ended: its placement group {pg_id} was removed")
            for req in [r for r in manager.pending if names & r.resources.keys()]:
                manager.pending.remove(req)
                manager.endpoint.reply(req.reply_to, req.rid, error=SchedulingError(
                    f"placement group {pg_id} was removed; nothing more can run in it"))
        if keys:
            manager.schedule()
            manager.report()
        manager.endpoint.reply(reply_to, rid, True)
