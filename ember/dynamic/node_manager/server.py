"""The node manager: worker pool, resource leases, process deaths and the object store of a node.

Callers ask it for a *lease* on a worker that fits a resource request, then send tasks to that
worker directly (the node manager is not on the per-task path). It starts workers on demand
(at most one per CPU for pooled work, plus one per actor), notices every worker's exit through
a pidfd, and tells all registered processes about it (``worker_died``). It owns the session's
shared memory: on exit, also after SIGTERM from a dead driver, it removes every segment.
Run as ``python -m ember.dynamic.node_manager.server <address> <ready_address> <gcs_address> <config>``.

Note [node death]: in a cluster, every node manager subscribes to the GCS's ``"nodes"``
channel. When a node is declared dead (Note [node heartbeats] in node_table.py), each node
manager tells each of its own processes (workers and drivers) that every process of the dead
node is gone, with the message a dead worker gets (``worker_died``) marked ``node_lost``: calls
on those processes fail (``NodeDiedError``, ``ActorNodeDiedError``) or retry elsewhere, objects
they owned are lost (``OwnerDiedError``), objects held in the dead node's memory are rebuilt or
lost (Note [lineage] in lineage.py); and it ends the actors and leases here that the dead
node's drivers and workers held (``client_gone``), as it does when a driver exits.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from ember._system import shm
from ember._system.auth import process_key
from ember._system.cluster_auth import NODE_IP_ENV
from ember.dynamic.node_manager.bundles import BundleTable
from ember.dynamic.rpc.messaging import Endpoint
from ember.dynamic.gcs.node_table import HEARTBEAT_S, node_timeout_s
from ember.dynamic.objects.store import ObjectStore
from ember.dynamic.objects.transfer import TRANSFER_ENV, TransferServer
from ember._system.process import (bind_to_parent, pidfd, remove_session_dir, session_dir,
                                   spawn, wait_until_done)
from ember.dynamic.common.resources import NodeResources, cpu_part
from ember.dynamic.objects.segment_writer import remove_spares
from ember.exceptions import SchedulingError


# Note [one math thread per worker]: like Ray, workers run BLAS/OpenMP with one thread unless
# the user set these variables: several workers each spinning a thread per core oversubscribe
# the machine and make a 3-stage numpy pipeline 50x slower on 2 cores.
WORKER_THREAD_ENV = {name: os.environ.get(name, "1") for name in (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


@dataclass
class Worker:
    """One worker process as the node manager sees it."""

    worker_id: str
    proc: subprocess.Popen
    address: str | None = None
    lease: "LeaseRequest | None" = None
    actor_id: str | None = None
    blocked: bool = False
    killed: str = ""  # why the node manager ended it, if it did


@dataclass
class LeaseRequest:
    """A caller's request for a worker that fits ``resources``."""

    reply_to: str
    rid: int
    resources: dict[str, float]
    actor_id: str | None
    owner: str
    gpu_ids: list[int] = field(default_factory=list)
    told_busy: bool = False
    spilled: bool = False      # forwarded here by another node (Note [spillback])
    private: bool = False      # its worker serves no one after it (Note [private leases])
    asked_spill: bool = False  # this node asked the GCS for another node already


class NodeManager:
    """Handlers of the node manager process."""

    def __init__(self, address: str, gcs_address: str, config: dict) -> None:
        self.sid = shm.session_id()
        self.dir = session_dir(self.sid)
        self.gcs_address = gcs_address
        self.resources = NodeResources(config["resources"])
        self.max_pool = max(1, int(config["resources"].get("CPU", 1)))
        self.store = ObjectStore(int(config["object_store_memory"]),
                                 os.path.join(self.dir, "spill"))
        os.makedirs(self.store.spill_dir, exist_ok=True)
        self.workers: dict[str, Worker] = {}
        self.idle: deque[Worker] = deque()
        self.pending: deque[LeaseRequest] = deque()
        self.starting = 0
        self.clients: dict[str, int] = {}
        self.worker_ids = itertools.count()
        self.done = threading.Event()
        self.endpoint = ep = Endpoint(address, "node-manager")
        ep.on("worker_ready", self.worker_ready)
        ep.on("register_client", self.register_client)
        ep.on("request_lease", self.request_lease)
        ep.on("return_lease", self.return_lease)
        ep.on("kill_worker", self.kill_worker)
        ep.on("worker_blocked", self.worker_blocked)
        ep.on("obj_sealed", self.store.sealed)
        ep.on("obj_free", lambda ids: [self.store.free(oid) for oid in ids])
        ep.on("obj_restore", lambda reply_to, rid, oid: ep.reply(reply_to, rid,
                                                                   self.store.restore(oid)))
        ep.on("resources", lambda reply_to, rid: ep.reply(
            reply_to, rid, (self.resources.total, self.resources.available, self.store.stats())))
        ep.on("shutdown", lambda: self.done.set())
        self.prestart = int(config.get("prestart", 0))
        self.worker_env = {**WORKER_THREAD_ENV, **config.get("worker_env", {})}  # job env_vars
        self.labels: dict[str, str] = config.get("labels", {})
        self.cluster = bool(config.get("cluster"))
        self.lost = False   # the cluster gave this node up: exit with an error
        self.transfer: TransferServer | None = None
        if self.cluster:   # Note [objects across nodes] in objects/transfer.py
            self.transfer = TransferServer(os.environ[NODE_IP_ENV], process_key(),
                                           self._restore_for_transfer)
            self.worker_env[TRANSFER_ENV] = self.transfer.address
            ep.on("obj_delete", self.delete_objects)
            ep.on("pub", self.node_changed)
            ep.on("client_gone", self.client_gone)
            ep.on("owner_gone", self.owner_gone)
        self.bundles = BundleTable(self)  # placement group bundles (Note [bundle resources])

    def start_worker(self) -> None:
        """Spawn one worker process; it reports back with ``worker_ready``."""
        wid = f"{os.getpid():x}w{next(self.worker_ids)}"
        proc = spawn("ember.dynamic.worker", [self.endpoint.address, self.gcs_address, wid],
                     env=self.worker_env)
        worker = Worker(wid, proc)
        self.workers[wid] = worker
        self.starting += 1
        fd = pidfd(proc.pid)
        if fd is not None:
            self.endpoint.watch_fd(fd, lambda: self.worker_exited(worker, fd))

    def worker_ready(self, worker_id: str, address: str) -> None:
        """A started worker is listening; give it to a waiting request or keep it idle."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        worker.address = address
        self.starting -= 1
        self.clients[address] = worker.proc.pid
        self.idle.append(worker)
        self.schedule()

    def register_client(self, address: str, pid: int) -> None:
        """A driver announces itself to receive ``worker_died`` messages."""
        self.clients[address] = pid
        fd = pidfd(pid) if self.cluster else None
        if fd is not None:   # the cluster outlives drivers: clean up after each one
            self.endpoint.watch_fd(fd, lambda: self._driver_exited(address, fd))

    def _driver_exited(self, address: str, fd: int) -> None:
        os.close(fd)
        self.client_gone(address)
        self.endpoint.send(self.gcs_address, "client_gone", address)

    def client_gone(self, address: str) -> None:
        """A driver (or a whole node's processes) ended: end the actors it owned here, take
        back its task leases (Ray ends a job's actors with its driver) and remove its objects
        and spare segments (Note [owner ends] in objects/store.py)."""
        pid = self.clients.pop(address, None)
        if pid:
            remove_spares(pid)
        self.owner_gone(address)
        for worker in list(self.workers.values()):
            lease = worker.lease
            if lease is None:
                continue
            if worker.actor_id is not None:
                if lease.owner == address:   # a detached actor's is "": nobody's
                    self.kill_worker(worker.worker_id)
            elif address in (lease.reply_to, lease.owner):
                self.return_lease(worker.worker_id)

    # ---- the cluster: Note [node heartbeats] and Note [node death] --------------------------

    def local_processes(self) -> list[str]:
        """Addresses of this node's processes: itself, its workers and its drivers."""
        return [self.endpoint.address, *(a for a, pid in self.clients.items() if pid)]

    def join_cluster(self, record: dict) -> None:
        """Register this node with the GCS, then heartbeat."""
        self.endpoint.call(self.gcs_address, "register_node", self.sid, record)
        self.last_ack = time.monotonic()
        self.endpoint.send(self.gcs_address, "subscribe", "nodes", self.endpoint.address)
        self.endpoint.call_soon(self._heartbeat)

    def report(self) -> None:
        """Send the GCS a heartbeat now (in a cluster): resources, load, processes."""
        if self.cluster:
            self.endpoint.request(self.gcs_address, "node_heartbeat", self.sid,
                                  self.resources.total, self.resources.available,
                                  self.local_processes()).add_done_callback(self._acked)

    def _acked(self, answer: Future) -> None:
        if answer.exception() is None and answer.result():
            self.last_ack = time.monotonic()
        elif answer.exception() is None:
            self._leave("the GCS declared this node dead")

    def _heartbeat(self) -> None:
        if self.done.is_set():
            return
        if time.monotonic() - self.last_ack > node_timeout_s():
            self._leave(f"the GCS at {self.gcs_address} did not answer for "
                        f"{node_timeout_s():g} s")
            return
        self.report()
        self.endpoint.call_later(HEARTBEAT_S, self._heartbeat)

    def _leave(self, why: str) -> None:
        """Stop this node manager with an error: the cluster is gone or gave this node up."""
        if not self.done.is_set():
            print(f"ember node manager of node {self.sid}: {why}; stopping", file=sys.stderr,
                  flush=True)
            self.lost = True
            self.done.set()

    def node_changed(self, channel: str, node_id: str, record: dict) -> None:
        """Note [node death]: another node died; tell this node's processes that each of its
        processes is gone (their calls fail or retry, their objects are lost)."""
        if channel != "nodes" or record.get("alive", True) or node_id == self.sid:
            return
        reason = (f"its node {node_id} ({record.get('node_ip')}) died: "
                  f"{record.get('death_reason', 'unknown')}")
        local = self.local_processes()[1:]
        for address in record.get("processes", ()):
            self.client_gone(address)
            self.endpoint.forget_peer(address)
            for client in local:
                self.endpoint.send(client, "worker_died", None, address, reason, True)

    def owner_gone(self, address: str) -> None:
        """The process at ``address`` ended: remove the objects it owned that are held here
        (Note [owner ends] in objects/store.py)."""
        self.delete_objects(self.store.owned_by(address))

    def delete_objects(self, oids: list[str]) -> None:
        """An owner on another node freed objects held here (Note [objects across nodes]), or
        their owner ended (Note [owner ends] in objects/store.py)."""
        for oid in oids:
            shm.unlink(shm.segment_path("obj", oid))
            self.store.free(oid)

    def _restore_for_transfer(self, oid: str) -> bool:
        """Restore a spilled object for the transfer server's thread, on the I/O thread."""
        done: Future = Future()
        self.endpoint.call_soon(lambda: done.set_result(self.store.restore(oid)))
        try:
            return done.result(timeout=30)
        except Exception:  # noqa: BLE001 - a stopped node manager restores nothing
            return False

    def request_lease(self, reply_to: str, rid: int, resources: dict, actor_id: str | None,
                      owner: str, spilled: bool = False, private: bool = False) -> None:
        """Queue a lease request, send it to another node (Note [spillback]), or refuse one
        that no node could ever hold."""
        req = LeaseRequest(reply_to, rid, resources, actor_id, owner, spilled=spilled,
                           private=private)
        if not self.resources.feasible(resources):
            if self.cluster and not spilled:
                self._spill(req, now=False)
            else:
                self._infeasible(req)
            return
        self.pending.append(req)
        self.schedule()

    def _infeasible(self, req: LeaseRequest) -> None:
        where = "no node of the cluster" if self.cluster else "no node"
        self.endpoint.reply(req.reply_to, req.rid, error=SchedulingError(
            f"{where} has the resources {req.resources}; this node has "
            f"{self.resources.total}. Ask for less, or start ember with more "
            f"(ember.init(num_cpus=..., num_gpus=..., resources=...) or ember start)."))

    def _spill(self, req: LeaseRequest, now: bool) -> None:
        """Ask the GCS for another node for ``req`` and forward it there (Note [spillback]);
        ``now``: the request fits here but must wait, so only a node with room now will do."""
        req.asked_spill = True
        asked = self.endpoint.request(self.gcs_address, "pick_node", req.resources, self.sid, now)

        def answered(asked) -> None:
            target = None if asked.exception() is not None else asked.result()
            if target is None:
                if not now:
                    self._infeasible(req)
                return   # stays queued here
            if now:
                if req not in self.pending:
                    return   # granted here meanwhile
                self.pending.remove(req)
            self.endpoint.send(target, "request_lease", req.reply_to, req.rid, req.resources,
                               req.actor_id, req.owner, True, req.private)

        asked.add_done_callback(answered)

    def schedule(self) -> None:
        """Grant waiting leases while resources and idle workers allow; start missing workers."""
        needed_actor = 0
        needed_pool: list[LeaseRequest] = []
        for req in list(self.pending):
            gpu_ids = self.resources.try_acquire(req.resources)
            if gpu_ids is None:
                if self.cluster and not req.spilled and not req.asked_spill:
                    self._spill(req, now=True)
                self._tell_busy(req)
                continue
            worker = self._idle_worker()
            if worker is None:
                self.resources.release(req.resources, gpu_ids)
                if req.actor_id:
                    needed_actor += 1
                else:
                    needed_pool.append(req)
                continue
            self.pending.remove(req)
            req.gpu_ids = gpu_ids
            worker.lease = req
            worker.actor_id = req.actor_id
            self.clients.setdefault(req.reply_to, 0)   # it hears of this worker's death
            self.endpoint.reply(req.reply_to, req.rid, (worker.worker_id, worker.address,
                                                        gpu_ids, self.endpoint.address, self.sid))
        room = max(0, self.max_pool - (self._pool_size() - self.starting))
        wanted = needed_actor + min(len(needed_pool), room)
        for _ in range(wanted - self.starting):
            self.start_worker()
        for req in needed_pool[room:]:  # the pool of workers is full: no worker for these
            self._tell_busy(req)

    def _tell_busy(self, req: LeaseRequest) -> None:
        """Tell a task pool that its request waits for others to finish (Note [spreading tasks]
        in lease_pool.py); the request stays queued and is granted later."""
        if req.actor_id is None and not req.told_busy:
            req.told_busy = True
            self.endpoint.send(req.reply_to, "lease_busy", req.resources)

    def return_lease(self, worker_id: str) -> None:
        """A caller is done with a worker: free its resources and make it idle."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.lease is None:
            return
        private = worker.lease.private
        self._release(worker)
        if private:   # it carries another job's env vars, say: it must not serve anyone else
            self.kill_worker(worker_id, force=False, reason="its private lease ended")
        elif worker.actor_id is None:
            self.idle.append(worker)
        self.schedule()

    def worker_blocked(self, worker_id: str, blocked: bool) -> None:
        """A worker waits in ``get``: lend its CPU to others until it runs again."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.lease is None or worker.blocked == blocked:
            return
        worker.blocked = blocked
        cpus = cpu_part(worker.lease.resources)
        if blocked:
            self.resources.release(cpus, [])
            self.max_pool += 1
            self.schedule()
        else:
            self.max_pool -= 1
            for k, v in cpus.items():
                if k in self.resources.total:  # not a bundle removed meanwhile
                    self.resources.available[k] = self.resources.available.get(k, 0.0) - v

    def kill_worker(self, worker_id: str, force: bool = True,
                    reason: str = "killed by ember.kill") -> None:
        """End a worker (``ember.kill`` of an actor, forced cancel, a removed bundle)."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.killed = reason
            worker.proc.send_signal(signal.SIGKILL if force else signal.SIGTERM)

    def worker_exited(self, worker: Worker, fd: int) -> None:
        """A worker process ended: free what it held and tell everyone."""
        os.close(fd)
        worker.proc.wait()
        self.workers.pop(worker.worker_id, None)
        remove_spares(worker.proc.pid)
        if worker.address is None:
            self.starting -= 1
        else:
            self.clients.pop(worker.address, None)
            self.endpoint.forget_peer(worker.address)
            self.owner_gone(worker.address)
            if self.cluster:   # what it owned on other nodes goes too (Note [owner ends])
                self.endpoint.send(self.gcs_address, "owner_gone", worker.address)
        if worker in self.idle:
            self.idle.remove(worker)
        if worker.lease is not None:
            self._release(worker)
        reason = worker.killed or f"exited with code {worker.proc.returncode}"
        for address in list(self.clients):
            self.endpoint.send(address, "worker_died", worker.worker_id, worker.address, reason)
        self.schedule()

    def shutdown(self) -> None:
        """End every worker and remove the session's shared memory and folder."""
        if self.transfer is not None:
            self.transfer.stop()
            self.endpoint.send(self.gcs_address, "node_stopped", self.sid)
        procs = [w.proc for w in self.workers.values()]
        for proc in procs:
            proc.kill()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.endpoint.stop()
        shm.cleanup_session(self.sid)
        remove_session_dir(self.sid)

    def _release(self, worker: Worker) -> None:
        lease = worker.lease
        worker.lease = None
        if lease is None:
            return
        resources = dict(lease.resources)
        if worker.blocked:
            worker.blocked = False
            self.max_pool -= 1
            for k in cpu_part(resources):
                resources.pop(k)
        self.resources.release(resources, lease.gpu_ids)

    def _idle_worker(self) -> Worker | None:
        while self.idle:
            worker = self.idle.popleft()
            if worker.worker_id in self.workers:
                return worker
        return None

    def _pool_size(self) -> int:
        return sum(1 for w in self.workers.values() if w.actor_id is None and not w.blocked)


def main() -> None:
    """Entry point of the node manager process."""
    bind_to_parent()
    address, ready_address, gcs_address, config = sys.argv[1:5]
    manager = NodeManager(address, gcs_address, json.loads(config))
    manager.endpoint.start()
    address = manager.endpoint.address
    record = {"address": address, "resources": manager.resources.total, "pid": os.getpid(),
              "labels": manager.labels}
    # registered before ready: the driver may read the node record at once
    if manager.cluster:
        manager.join_cluster({**record, "node_ip": os.environ[NODE_IP_ENV],
                              "transfer": manager.transfer.address})
    else:
        manager.endpoint.call(gcs_address, "kv_put", "nodes", manager.sid, record, True)
    manager.endpoint.send(ready_address, "process_ready", "node_manager", address)
    manager.endpoint.call_soon(lambda: [manager.start_worker() for _ in range(manager.prestart)])
    wait_until_done(manager.done)
    manager.shutdown()
    sys.exit(1 if manager.lost else 0)


if __name__ == "__main__":
    main()
