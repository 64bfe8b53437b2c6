"""Communicator groups of a compiled graph: planned at compile time, joined in each actor, released at teardown.

Note [group rendezvous]
~~~~~~~~~~~~~~~~~~~~~~~
Every actor of a compiled graph lives on the driver's node, so the driver hosts the TCPStore
(``host_store``, once per process) and every member connects to it: no extra round trip to learn
a rank 0's address first. Each member joins its groups in the plan's order inside
``start_actor_loop`` (actor_side.py); the driver starts all actors at once, so the blocking
rendezvous of a group meets all its members. A group is registered in the actor's
``communicator_registry`` under its key (backend and actors in rank order), so a second graph
over the same actors reuses the live group instead of building another (its fresh name is then
unused); the loop releases its keys when it ends, and the last release destroys the group.

Note [shared groups]
~~~~~~~~~~~~~~~~~~~~
Graphs that share a group must not communicate at the same time: two loops' ops on one group
could pair up across graphs. Run them one after another (get one graph's results before the other
executes), as a training step and an evaluation step do.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.gpu.communicator import Communicator

NCCL_BACKEND, GLOO_BACKEND, USER_BACKEND = "nccl", "gloo", "user"


@dataclass(frozen=True)
class GroupPlan:
    """One communicator group: its registry key, a fresh name on the store, its actors by rank."""

    key: Hashable
    name: str
    actors: tuple[str, ...]
    backend: str                                  # "nccl", "gloo" or "user"
    communicator: "Communicator | None" = None    # the user's communicator (backend "user")

    def rank(self, actor_id: str) -> int:
        """The rank of ``actor_id`` in the group."""
        return self.actors.index(actor_id)

    def __repr__(self) -> str:
        return f"GroupPlan({self.backend}, {len(self.actors)} ranks, {self.name})"


def group_key(backend: str, actors: Sequence[str]) -> tuple:
    """The registry key of a built-in group: its backend and its actors in rank order."""
    return (backend, *actors)


def store_address() -> tuple[str, int]:
    """The address of the driver's store, which every group of this driver rendezvouses on."""
    from ember.gpu.communicator import host_store
    return host_store()[1]


def join_groups(actor_id: str, groups: Sequence[GroupPlan], address: tuple[str, int] | None,
                ) -> list[Hashable]:
    """Acquire (creating or reusing) every group of ``actor_id``; return their keys to release."""
    if not groups:
        return []
    from ember.gpu.communicator import communicator_registry
    keys: list[Hashable] = []
    try:
        for group in groups:
            communicator_registry.acquire(group.key, lambda g=group: _create(g, actor_id, address))
            keys.append(group.key)
    except BaseException:
        release_groups(keys)
        raise
    return keys


def _create(group: GroupPlan, actor_id: str, address: tuple[str, int] | None) -> Any:
    """Build this actor's member of ``group`` (Note [group rendezvous], Note [user communicators])."""
    rank, world = group.rank(actor_id), len(group.actors)
    if group.backend == USER_BACKEND:
        group.communicator.initialize(rank, world)
        return group.communicator
    from ember.gpu.communicator import TorchCommunicator, connect_store
    device = "cuda" if group.backend == NCCL_BACKEND else "cpu"
    return TorchCommunicator(group.name, rank, world, connect_store(address), device=device)


def release_groups(keys: Sequence[Hashable]) -> None:
    """Drop this process's use of the groups ``keys``; the last user destroys a group."""
    if not keys:
        return
    from ember.gpu.communicator import communicator_registry
    for key in keys:
        communicator_registry.release(key)
