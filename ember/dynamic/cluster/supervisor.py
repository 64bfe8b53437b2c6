"""The driver's watch over the GCS and node manager it started: restarts, and failing fast.

Note [GCS restart]: the driver watches its GCS process (a pidfd on its I/O thread); when it
dies the driver starts a new one at the same address, up to ``GCS_RESTARTS`` times. The tables
(functions, actors, named actors, KV, jobs, subscriptions) survive with either backend: SQLite
reads its file back; the in-memory backend sends every change to the driver (``gcs_replica``),
which keeps a copy and hands it to the new GCS as a 0600 snapshot file in the session folder,
read before the new GCS binds its socket, so no request finds the tables empty. Messages sent
meanwhile wait in ZeroMQ until it listens; a message the GCS had received but not handled dies
with it, so the driver sends the state of its own actors again. A change the dying GCS made but
had not yet sent to the driver (a window of microseconds) is lost with the memory backend.

Note [node manager death]: the driver watches its node manager the same way. When it dies, its
workers die too (Note [parent death] in process.py), so every call already sent to them or
queued for a lease fails within the I/O thread's turn with ``NodeDiedError`` (tasks, without
retry: the node's death is reported, not hidden) or ``ActorNodeDiedError`` (actor calls: both
a NodeDiedError and an ActorDiedError); a lease asked of the dead node manager fails too, and a
late grant is given back. Objects borrowed from processes of the node are lost. The GCS marks
the node's actors DEAD, but for restartable actors of this driver (``max_restarts``), which
restart on the new node manager. The driver then restarts the node manager (up to
``NODE_MANAGER_RESTARTS`` times), Ray-like for a single node: calls made after the death run
on the new one. Once out of restarts, every later call fails with NodeDiedError at once. The
new node manager starts with an empty object store index: objects it had spilled are lost.
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

from ember.dynamic.core.core_worker import CoreWorker
from ember.dynamic.gcs.storage import MemoryStorage, write_snapshot
from ember._system.process import pidfd, session_dir, spawn

if TYPE_CHECKING:
    from ember.dynamic.core.submitter import Submitter

GCS, NODE_MANAGER = 0, 1
MODULES = ("ember.dynamic.gcs.server", "ember.dynamic.node_manager.server")


class Driver:
    """The processes a driver started (GCS, node manager) and its own CoreWorker."""

    GCS_RESTARTS = 5
    NODE_MANAGER_RESTARTS = 5

    def __init__(self, sid: str, core: CoreWorker, gcs_args: list[str],
                 nm_args: list[str]) -> None:
        self.sid = sid
        self.core = core
        self.args = (gcs_args, nm_args)
        self.procs: list[subprocess.Popen] = []
        self.restarts = [0, 0]
        self.stopping = False
        self.submitter: "Submitter | None" = None
        self.replica = MemoryStorage()
        core.endpoint.on("gcs_replica", self.replica.apply)

    def start(self) -> None:
        """Start the GCS and the node manager."""
        self.procs = [spawn(module, args) for module, args in zip(MODULES, self.args)]

    def watch(self, submitter: "Submitter") -> None:
        """Restart either process if it exits before shutdown; tell ``submitter`` of deaths."""
        self.submitter = submitter
        for which in (GCS, NODE_MANAGER):
            self._watch(which)

    def _watch(self, which: int) -> None:
        fd = pidfd(self.procs[which].pid)
        if fd is not None:
            self.core.endpoint.watch_fd(fd, lambda: self._exited(which, fd))

    def _exited(self, which: int, fd: int) -> None:
        os.close(fd)
        proc = self.procs[which]
        proc.wait()
        if self.stopping:
            return
        limit = (self.GCS_RESTARTS, self.NODE_MANAGER_RESTARTS)[which]
        restart = self.restarts[which] < limit
        if restart:
            self.restarts[which] += 1
            self.procs[which] = self._respawn(which)
            self._watch(which)
        if which == GCS and restart:
            self._republish_actors()
        if which == NODE_MANAGER:
            self._node_manager_died(
                f"the node manager (pid {proc.pid}) died (exit code {proc.returncode})", restart)

    def _respawn(self, which: int) -> subprocess.Popen:
        args = list(self.args[which])
        if which == GCS and args[2] == "memory":
            path = os.path.join(session_dir(self.sid), "gcs_snapshot.pkl")
            write_snapshot(path, self.replica.tables)
            args.append(path)
        return spawn(MODULES[which], args)

    def _republish_actors(self) -> None:
        """Tell a new GCS the state of this driver's actors again: the dead GCS may have
        died with an update unread in its socket."""
        with self.submitter.lock:
            updates = [(a.actor_id, {"state": "DEAD"} if a.dead is not None else
                        {"state": "ALIVE", "address": a.address, "worker_id": a.worker_id})
                       for a in self.submitter.actors.values()
                       if a.creation is not None and (a.dead is not None or a.address)]
        for actor_id, fields in updates:
            self.core.endpoint.send(self.core.gcs_address, "update_actor", actor_id, fields)

    def _node_manager_died(self, reason: str, restarted: bool) -> None:
        core = self.core
        if restarted:
            core.endpoint.send(core.nm_address, "register_client", core.address, os.getpid())
        keep = self.submitter.node_died(reason, restarted)
        core.endpoint.send(core.gcs_address, "node_died", keep)
        core.fail_borrowed(lambda owner: owner != core.address, reason)


class ClusterDriver:
    """A driver that joined a running cluster: it watches the node manager of its machine's
    node, whose death ends every call of this driver (Note [node manager death], without the
    restart: the node's daemon stops the node)."""

    def __init__(self, core: CoreWorker, submitter: "Submitter", nm_pid: int) -> None:
        self.core = core
        self.submitter = submitter
        self.stopping = False
        fd = pidfd(nm_pid)
        if fd is not None:
            core.endpoint.watch_fd(fd, lambda: self._exited(fd, nm_pid))

    def _exited(self, fd: int, pid: int) -> None:
        os.close(fd)
        if not self.stopping:
            reason = f"the node manager of this machine's node (pid {pid}) died"
            self.submitter.node_died(reason, restarted=False)
            self.core.fail_borrowed(lambda owner: owner != self.core.address, reason)

