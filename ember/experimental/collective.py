"""Collective groups of actors for GPU objects, Ray's ``ray.experimental.collective`` API.

Note [one registry]
~~~~~~~~~~~~~~~~~~~
A group is a communicator in each member's ``communicator_registry`` under the key
``(backend, *actor ids in rank order)``, the key a compiled graph gives its own groups (Note
[group rendezvous] in ember/engine/groups.py). So the two layers share groups both ways: a graph
compiled over actors of a group made here (edges rank their actors sorted by id, collectives in
bind order) acquires the same communicator instead of building one, and the dynamic transport
(Note [GPU objects]) sends over any live group that holds both producer and consumer, a
compiled graph's too. Acquire/release count users, so the group lives until the last of
``destroy_collective_group`` and the graphs' teardowns. As for two graphs (Note [shared
groups]), do not let a graph and dynamic transfers use one group at the same moment.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ember.dynamic.api.actor import ActorHandle
from ember.dynamic.api.driver import get
from ember.exceptions import EmberError

BACKENDS = {"torch_gloo": "gloo", "gloo": "gloo", "nccl": "nccl"}
JOIN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class CollectiveGroup:
    """A group made by ``create_collective_group``: its name, backend and actors by rank."""

    name: str
    backend: str
    actors: tuple[ActorHandle, ...]

    @property
    def key(self) -> tuple:
        """The communicator registry key of the group (Note [one registry])."""
        return (self.backend, *(a._actor_id for a in self.actors))


_groups: dict[str, CollectiveGroup] = {}


def create_collective_group(actors: Sequence[ActorHandle], backend: str = "torch_gloo",
                            name: str | None = None) -> CollectiveGroup:
    """Join ``actors`` (ranks in list order) into one communicator group for GPU objects."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {sorted(BACKENDS)}")
    actors = tuple(actors)
    if len(actors) < 2 or not all(isinstance(a, ActorHandle) for a in actors):
        raise ValueError("create_collective_group takes a list of at least two actor handles")
    if len({a._actor_id for a in actors}) != len(actors):
        raise ValueError("create_collective_group got the same actor twice")
    name = name or f"ember-collective-{uuid.uuid4().hex[:12]}"
    if name in _groups:
        raise ValueError(f"a collective group named {name!r} already exists; destroy it first")
    from ember.gpu.communicator import host_store
    group = CollectiveGroup(name, BACKENDS[backend], actors)
    address = host_store()[1]
    refs = [a._ember_run.remote(_join, name, group.key, address) for a in actors]
    try:
        get(refs, timeout=JOIN_TIMEOUT_S)
    except BaseException:
        _run_each(actors, _leave, group.key)
        raise
    _groups[name] = group
    return group


def destroy_collective_group(group: CollectiveGroup | str) -> None:
    """Leave the group in each of its actors; the last user (a graph may share it) destroys it."""
    name = group if isinstance(group, str) else group.name
    found = _groups.pop(name, None)
    if found is None:
        raise ValueError(f"no collective group is named {name!r}")
    _run_each(found.actors, _leave, found.key)


def get_collective_groups(actors: Sequence[ActorHandle] = (), backend: str | None = None,
                          ) -> list[CollectiveGroup]:
    """The groups this driver made and has not destroyed that hold all ``actors`` (and use
    ``backend``)."""
    want = {a._actor_id for a in actors}
    return [g for g in _groups.values()
            if want <= {a._actor_id for a in g.actors}
            and (backend is None or g.backend == BACKENDS.get(backend, backend))]


def _run_each(actors: Sequence[ActorHandle], fn: Any, *args: Any) -> None:
    """Run ``fn`` in every live actor; the dead are skipped (their groups died with them)."""
    refs = [a._ember_run.remote(fn, *args) for a in actors]
    for ref in refs:
        try:
            get(ref, timeout=JOIN_TIMEOUT_S)
        except EmberError:
            pass


def _join(instance: Any, name: str, key: tuple, address: tuple[str, int]) -> None:
    """In a member: acquire the group's communicator (a compiled graph's, if it has one)."""
    from ember.dynamic.core.process_runtime import current_core
    from ember.gpu.communicator import TorchCommunicator, communicator_registry, connect_store
    from ember.gpu.objects import objects
    core = current_core()
    actors = key[1:]
    device = "cuda" if key[0] == "nccl" else "cpu"
    communicator_registry.acquire(key, lambda: TorchCommunicator(
        name, actors.index(core.actor_id), len(actors), connect_store(address), device=device))
    objects.start()


def _leave(instance: Any, key: tuple) -> None:
    """In a member: release the group (Note [one registry])."""
    from ember.gpu.communicator import communicator_registry
    if communicator_registry.get(key) is not None:
        communicator_registry.release(key)
