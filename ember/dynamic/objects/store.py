"""The node's object store: accounting of shared-memory objects, the memory cap and spilling.

Objects live in /dev/shm segments named after their id (``shm.segment_path("obj", id)``): the
process that makes a value writes the segment itself and reports it (``sealed``), so a put never
waits on this store. When the total passes the cap, the oldest objects are copied to the spill
folder and their segments unlinked; processes that already map them keep valid views. A reader
that finds no segment asks for ``restore``. A freed object's owner has already unlinked its
segment (Note [who unlinks] in core_worker.py): ``free`` settles the accounts and the spill folder.

Note [owner ends]: each object is accounted under its owner's address. When the owner ends (a
worker exits, a driver leaves a cluster, a node dies), nobody will free its objects any more,
and Ray's semantics make them lost (``OwnerDiedError``) anyway: the node manager removes them
(``owned_by``), so a long-lived node does not keep a killed driver's objects in /dev/shm until
it stops. In a cluster the GCS passes the end on to every node (``client_gone`` for a driver,
``owner_gone`` for a worker), since a task result lives on the node that ran the task, not on
its owner's. Processes that still map one keep a valid view.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict

from ember._system import shm


class ObjectStore:
    """Bookkeeping for one node's objects; lives in the node manager process."""

    def __init__(self, capacity: int, spill_dir: str) -> None:
        self.capacity = capacity
        self.spill_dir = spill_dir
        self.in_memory: OrderedDict[str, int] = OrderedDict()
        self.spilled: dict[str, int] = {}
        self.used = 0
        self._owner: dict[str, str] = {}
        self._owned: dict[str, set[str]] = {}

    def sealed(self, object_id: str, size: int, owner: str) -> None:
        """Account a new segment of ``owner`` and spill older objects if the cap is passed."""
        self._owner[object_id] = owner
        self._owned.setdefault(owner, set()).add(object_id)
        self._account(object_id, size)

    def _account(self, object_id: str, size: int) -> None:
        self.in_memory[object_id] = size
        self.used += size
        self._spill_over_cap(keep=object_id)

    def owned_by(self, owner: str) -> list[str]:
        """The objects of ``owner`` still here (Note [owner ends])."""
        return list(self._owned.get(owner, ()))

    def free(self, object_id: str) -> None:
        """Forget a freed object; delete its spilled copy if it has one."""
        owner = self._owner.pop(object_id, None)
        if owner is not None:
            owned = self._owned[owner]
            owned.discard(object_id)
            if not owned:
                del self._owned[owner]
        size = self.in_memory.pop(object_id, None)
        if size is not None:
            self.used -= size
        elif self.spilled.pop(object_id, None) is not None:
            _remove(self._spill_path(object_id))

    def restore(self, object_id: str) -> bool:
        """Bring a spilled object back into shared memory; False if it is unknown."""
        if object_id in self.in_memory:
            return True
        size = self.spilled.pop(object_id, None)
        if size is None:
            return False
        path = shm.segment_path("obj", object_id)
        tmp = path + ".restoring"
        shutil.copyfile(self._spill_path(object_id), tmp)
        os.rename(tmp, path)
        _remove(self._spill_path(object_id))
        self._account(object_id, size)
        return True

    def stats(self) -> dict[str, int]:
        """Numbers for ``ember status`` and tests."""
        return {"used": self.used, "capacity": self.capacity, "objects": len(self.in_memory),
                "spilled": len(self.spilled)}

    def _spill_over_cap(self, keep: str) -> None:
        while self.used > self.capacity:
            victim = next((oid for oid in self.in_memory if oid != keep), None)
            if victim is None:
                return
            size = self.in_memory.pop(victim)
            src = shm.segment_path("obj", victim)
            try:
                shutil.copyfile(src, self._spill_path(victim))
            except FileNotFoundError:  # freed meanwhile by its owner
                self.used -= size
                continue
            _remove(src)
            self.used -= size
            self.spilled[victim] = size

    def _spill_path(self, object_id: str) -> str:
        return os.path.join(self.spill_dir, object_id)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
