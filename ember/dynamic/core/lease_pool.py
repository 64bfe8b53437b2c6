"""Lease pools: the tasks of one resource shape and the workers leased to run them.

A ``LeasePool`` asks the node manager for leases, hands each queued task to an idle leased
worker (queuing more on a busy one only as Note [spreading tasks] allows), and returns a lease
after it has been idle for ``IDLE_LEASE_S``; a lease names the node manager that granted it
(Note [spillback] in node_table.py). The ``Submitter`` (submitter.py) owns the pools, and a
pool reaches it only through ``PoolOwner``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
import threading
from concurrent.futures import Future
from typing import Any, Protocol

from ember.dynamic.core.core_worker import FAILED
from ember.dynamic.core.task_spec import PendingCall
from ember.exceptions import NodeDiedError, TaskCancelledError, WorkerCrashedError



class PoolOwner(Protocol):
    """What a lease pool needs of the submitter that owns it (the ``Submitter``)."""

    core: Any                        # the process's CoreWorker
    lock: threading.RLock
    pools: "dict[tuple, LeasePool]"

    def dispatch(self, call: PendingCall, address: str, gpu_ids: list[int]) -> None: ...

    def request_lease(self, resources: dict[str, float], actor_id: str | None,
                      owned: bool = True, private: bool = False) -> Future: ...

    def finish(self, call: PendingCall, results: list) -> None: ...

    def waiting_for_resources(self, other_than: "LeasePool") -> bool: ...

# Note [spreading tasks]: a task goes to a leased worker with nothing in flight; while tasks wait
# and no lease request is outstanding, the pool asks the node manager for one more lease (up to
# MAX_LEASES), so work spreads over every core the node has free. A task is queued behind a
# running one on a busy worker (up to PIPELINE_DEPTH in flight per worker) only when both hold:
#   - no new lease can come: the node manager said ``lease_busy`` about the outstanding request
#     (no free resources or no room for another worker), or the pool holds MAX_LEASES;
#   - the task's function is known to be short: its recent run times (an average over the
#     worker's busy time per task, measured here) are under PIPELINE_MAX_TASK_S.
# Otherwise it waits here, where whichever worker frees first (or a new lease) takes it: four
# 1 s sleeps on 4 CPUs run at once, four 400 ms CPU tasks on 2 CPUs run two by two, and long
# tasks of uneven length never wait behind each other while a worker idles. A flood of tiny
# tasks on a full node still keeps PIPELINE_DEPTH in flight per worker, so a worker never idles
# for the round trip between two tasks; misjudging a task as short costs at most
# PIPELINE_DEPTH - 1 tasks of waiting, and only while the node is full. A function not yet seen
# to finish counts as long. The lease request stays queued at the node manager after
# ``lease_busy`` and is granted when resources free up; the pool then stops pipelining until the
# node says it is full again. Meanwhile idle leases of this process's other pools go back at
# once (not after IDLE_LEASE_S), since the node may be full only because of them.
PIPELINE_DEPTH = 4
PIPELINE_MAX_TASK_S = 0.01
MAX_LEASES = 64
IDLE_LEASE_S = 0.2
DURATION_WEIGHT = 0.25  # weight of the newest sample in a function's average run time


def pool_key(resources: dict[str, float], private: tuple | None = None) -> tuple:
    """The key of the lease pool for tasks that ask for ``resources`` (and a private tag)."""
    return tuple(sorted(resources.items())), private


def _function_id(call: PendingCall) -> str:
    """The function a task runs (its target is the id, or (id, extras) with options)."""
    return call.target[0] if isinstance(call.target, tuple) else call.target


@dataclass
class Lease:
    """A worker leased from the node manager."""

    worker_id: str
    address: str
    gpu_ids: list[int]
    nm_address: str   # the node manager that granted it (Note [spillback] in node_table.py)
    inflight: dict[str, PendingCall] = field(default_factory=dict)
    idle_generation: int = 0  # bumped each time the lease goes idle; its timer checks it
    dispatched: int = 0
    head_since: float = 0.0  # when the oldest task in flight began running (about)


class LeasePool:
    """Leases and queued tasks of one resource shape."""

    def __init__(self, submitter: PoolOwner, resources: dict[str, float],
                 private: tuple | None = None) -> None:
        self.submitter = submitter
        self.resources = resources
        self.private = private is not None  # Note [private leases] in remote_function.py
        self.max_calls = int(dict(private or ()).get("max_calls") or 0)
        self.key = pool_key(resources, private)
        self.queue: deque[PendingCall] = deque()
        self.leases: dict[str, Lease] = {}
        self.requesting = False
        self.node_full = False  # the outstanding request waits for resources (lease_busy)
        self.run_time: dict[str, float] = {}  # function id -> average seconds per task

    def enqueue(self, call: PendingCall) -> None:
        """Queue a task whose arguments are ready, and dispatch what can go."""
        self.queue.append(call)
        self.pump()

    def pump(self) -> None:
        """Dispatch queued tasks (Note [spreading tasks]); ask for a lease if work still waits."""
        while self.queue:
            call = self.queue[0]
            if call.cancelled:
                self.queue.popleft()
                continue
            lease = self._lease_for(call)
            if lease is None:
                break
            self.queue.popleft()
            if not lease.inflight:
                lease.head_since = time.monotonic()
            self.submitter.dispatch(call, lease.address, lease.gpu_ids)
            lease.inflight[call.task_id] = call
            lease.dispatched += 1
        if self.queue and not self.requesting and len(self.leases) < MAX_LEASES:
            self.requesting = True
            self.submitter.request_lease(self.resources, None, private=self.private
                                         ).add_done_callback(self._granted)

    def _lease_for(self, call: PendingCall) -> Lease | None:
        """The lease ``call`` should go to now, or None if it should wait here."""
        lease = min((l for l in self.leases.values() if not self._spent(l)),
                    key=lambda l: len(l.inflight), default=None)
        if lease is None or not lease.inflight:
            return lease
        if (len(lease.inflight) < PIPELINE_DEPTH
                and (self.node_full or len(self.leases) >= MAX_LEASES)
                and self.run_time.get(_function_id(call), math.inf) < PIPELINE_MAX_TASK_S):
            return lease
        return None

    def node_busy(self) -> None:
        """The node manager cannot grant our outstanding request now: free what this process
        holds idle in other pools, and pipeline short tasks meanwhile."""
        if self.requesting:
            self.node_full = True
            for pool in self.submitter.pools.values():
                if pool is not self:
                    pool.give_back_idle()
            self.pump()

    def _granted(self, fut) -> None:
        with self.submitter.lock:
            self.requesting = self.node_full = False
            try:
                worker_id, address, gpu_ids, nm_address, _ = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. SchedulingError: fail the queue
                queued, self.queue = list(self.queue), deque()
                for call in queued:
                    self.submitter.finish(call, [(FAILED, exc)] * len(call.return_ids))
                return
            self.leases[worker_id] = Lease(worker_id, address, gpu_ids, nm_address)
            self.pump()
            self._maybe_return(worker_id)

    def task_finished(self, call: PendingCall) -> None:
        """A task of this pool ended: note its run time, refill its worker or let it go idle."""
        lease = next((l for l in self.leases.values() if call.task_id in l.inflight), None)
        if lease is not None:
            del lease.inflight[call.task_id]
            now = time.monotonic()
            sample = now - lease.head_since
            fid = _function_id(call)
            average = self.run_time.get(fid)
            self.run_time[fid] = sample if average is None else (
                average + DURATION_WEIGHT * (sample - average))
            lease.head_since = now
            if self._spent(lease) and not lease.inflight:
                self._end_private(lease)
            self.pump()
            self._maybe_return(lease.worker_id)

    def _spent(self, lease: Lease) -> bool:
        return bool(self.max_calls) and lease.dispatched >= self.max_calls

    def _end_private(self, lease: Lease) -> None:
        """Drop a private lease and let its worker exit (it never serves anyone else)."""
        del self.leases[lease.worker_id]
        self.submitter.core.endpoint.send(lease.address, "exit")

    def _maybe_return(self, worker_id: str) -> None:
        lease = self.leases.get(worker_id)
        if lease is None or lease.inflight or self.queue:
            return
        if self.submitter.waiting_for_resources(self):
            self._give_back(lease)
            return
        lease.idle_generation += 1
        generation = lease.idle_generation

        def give_back() -> None:
            with self.submitter.lock:
                if (lease.idle_generation == generation and not lease.inflight and not self.queue
                        and self.leases.get(worker_id) is lease):
                    self._give_back(lease)

        self.submitter.core.endpoint.call_later(IDLE_LEASE_S, give_back)

    def give_back_idle(self) -> None:
        """Return every idle lease now (another pool of this process waits for resources)."""
        if not self.queue:
            for lease in [l for l in self.leases.values() if not l.inflight]:
                self._give_back(lease)

    def _give_back(self, lease: Lease) -> None:
        if self.private:
            self._end_private(lease)
            return
        core = self.submitter.core
        del self.leases[lease.worker_id]
        core.endpoint.send(lease.nm_address, "return_lease", lease.worker_id)

    def worker_died(self, worker_id: str | None, address: str | None, reason: str,
                    node_lost: bool) -> None:
        """A leased worker (known by id or address) died: retry or fail its tasks."""
        lease = self.leases.pop(worker_id, None) if worker_id is not None else None
        if lease is None and address is not None:
            lease = next((l for l in self.leases.values() if l.address == address), None)
            if lease is not None:
                del self.leases[lease.worker_id]
        if lease is None:
            return
        crashed = NodeDiedError if node_lost else WorkerCrashedError
        for call in lease.inflight.values():
            if call.cancelled:
                self.submitter.finish(call, [(FAILED, TaskCancelledError(
                    f"task {call.task_id} was cancelled"))] * len(call.return_ids))
            elif call.retries_left != 0:
                call.retries_left -= 1
                self.queue.append(call)
            else:
                self.submitter.finish(call, [(FAILED, crashed(
                    f"the worker running task {call.task_id} died ({reason}) and the task has "
                    f"no retries left; raise max_retries to retry it"))] * len(call.return_ids))
        self.pump()
