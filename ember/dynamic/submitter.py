"""Submitting calls: tasks over leased workers, actor calls straight to the actor's process.

Normal tasks of one resource shape share a ``LeasePool``: the pool asks the node manager for
leases, hands each queued task to an idle leased worker (queuing more on a busy one only as
Note [spreading tasks] allows), and returns a lease after it has been idle for ``IDLE_LEASE_S``.
Actor calls go to the actor's address in submission order. Results come back as ``task_done``
messages; a worker's death fails or retries its calls.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ember.dynamic.core_worker import FAILED, CoreWorker
from ember.dynamic.lineage import Lineage
from ember.dynamic.object_ref import ObjectRef
from ember.dynamic.task_spec import PendingCall, encode_args, release_args, resolve_refs
from ember.exceptions import (ActorDiedError, ActorNodeDiedError, NodeDiedError,
                              TaskCancelledError, TaskError, WorkerCrashedError)

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

    def __init__(self, submitter: "Submitter", resources: dict[str, float],
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
            self.submitter.request_lease(self.resources, None).add_done_callback(self._granted)

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
                worker_id, address, gpu_ids, nm_address = fut.result()
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


@dataclass
class ActorState:
    """What a process that holds an actor handle knows of the actor."""

    actor_id: str
    address: str | None = None
    worker_id: str | None = None
    nm_address: str | None = None   # the node manager of its worker
    dead: BaseException | None = None
    queue: deque = field(default_factory=deque)
    inflight: dict[str, PendingCall] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    creation: PendingCall | None = None
    resources: dict[str, float] = field(default_factory=dict)
    restarts_left: int = 0
    max_task_retries: int = 0
    restartable: bool = False

    def __post_init__(self) -> None:
        self.restartable = self.restartable or self.restarts_left != 0


class Submitter:
    """All calls this process has submitted and not yet seen finish."""

    def __init__(self, core: CoreWorker) -> None:
        self.core = core
        self.lock = core.lock
        self.calls: dict[str, PendingCall] = {}
        self.pools: dict[tuple, LeasePool] = {}
        self.actors: dict[str, ActorState] = {}
        self.subscribed = False
        self.lease_requests: set[Future] = set()
        self.node_gone: NodeDiedError | None = None
        self.lineage = Lineage(self)
        core.endpoint.on("task_done", self._on_task_done)
        core.pub_listeners["actors"] = self._on_actor_update
        core.endpoint.on("lease_busy", self._on_lease_busy)
        core.death_listeners.append(self._on_worker_died)

    # ---- submission --------------------------------------------------------------------------

    def submit_task(self, function_id: str, what: str, args: tuple, kwargs: dict,
                    resources: dict[str, float], num_returns: int, max_retries: int,
                    retry_exceptions: Any, private: tuple | None = None,
                    gate: ObjectRef | None = None) -> list[ObjectRef]:
        """Submit a task; return refs to its results (``private``: a lease tag of its own;
        ``gate``: a ref to wait for before placing it, ``_after_gate``)."""
        call, refs = self._new_call("task", function_id, what, args, kwargs, num_returns)
        call.retries_left = max_retries
        call.retry_exceptions = retry_exceptions
        key = pool_key(resources, private)
        with self.lock:
            pool = self.pools.get(key)
            if pool is None:
                pool = self.pools[key] = LeasePool(self, resources, private)
            call.pool_key = pool.key  # one tuple per pool, not per pending task
            self._when_args_ready(call, lambda: pool.enqueue(call), gate)
        return refs

    def submit_actor_call(self, actor: ActorState, method: str, args: tuple, kwargs: dict,
                          num_returns: int) -> list[ObjectRef]:
        """Submit a method call on an actor; calls run in submission order."""
        call, refs = self._new_call("actor_call", method, f"{method}", args, kwargs, num_returns)
        call.body = (actor.actor_id,) + (call.body,)
        call.retries_left = actor.max_task_retries
        with self.lock:
            if actor.dead is not None:
                self.finish(call, [(FAILED, actor.dead)] * num_returns)
                return refs
            actor.queue.append(call)
            self._when_args_ready(call, lambda: self.flush_actor(actor))
        return refs

    def create_actor(self, actor: ActorState, class_id: str, what: str, args: tuple,
                     kwargs: dict, resources: dict[str, float], options: dict,
                     gate: ObjectRef | None = None) -> None:
        """Lease a dedicated worker for an actor and send it the constructor call."""
        call, _ = self._new_call("create_actor", class_id, what, args, kwargs, 0)
        call.body = (actor.actor_id, call.body, options)
        actor.creation = call
        actor.resources = resources
        with self.lock:
            self.actors[actor.actor_id] = actor
            self._when_args_ready(call, lambda: self._lease_actor(actor, resources), gate)

    def _lease_actor(self, actor: ActorState, resources: dict[str, float]) -> None:
        core = self.core
        fut = self.request_lease(resources, actor.actor_id)

        def granted(fut) -> None:
            with self.lock:
                try:
                    worker_id, address, gpu_ids, nm_address = fut.result()
                except Exception as exc:  # noqa: BLE001 - cannot place the actor
                    dead = ActorNodeDiedError if isinstance(exc, NodeDiedError) else ActorDiedError
                    self.actor_died(actor, dead(
                        f"actor {actor.actor_id} could not be created: {exc}"))
                    actor.ready.set()
                    return
                actor.worker_id, actor.address, actor.nm_address = worker_id, address, nm_address
                self.dispatch(actor.creation, address, gpu_ids)
                actor.inflight[actor.creation.task_id] = actor.creation
                core.endpoint.send(core.gcs_address, "update_actor", actor.actor_id, {
                    "state": "ALIVE", "address": address, "worker_id": worker_id,
                    "nm_address": nm_address})
                actor.ready.set()
                self.flush_actor(actor)

        fut.add_done_callback(granted)

    def flush_actor(self, actor: ActorState) -> None:
        """Send queued calls whose arguments are ready, in order, once the actor has an address."""
        if actor.address is None:
            return
        while actor.queue and actor.queue[0].ready:
            call = actor.queue.popleft()
            self.dispatch(call, actor.address, [])
            actor.inflight[call.task_id] = call

    def _new_call(self, kind: str, target: str, what: str, args: tuple, kwargs: dict,
                  num_returns: int) -> tuple[PendingCall, list[ObjectRef]]:
        core = self.core
        task_id = core.new_id()
        return_ids = [f"{task_id}.{i}" for i in range(num_returns)]
        refs = [core.owned_ref(rid) for rid in return_ids]
        body, arg_refs, pinned = encode_args(core, args, kwargs, what)
        call = PendingCall(task_id, kind, target, body, arg_refs, return_ids, pinned=pinned)
        self.calls[task_id] = call
        return call, refs

    def waiting_for_resources(self, other_than: LeasePool) -> bool:
        """Whether a pool other than ``other_than`` has tasks waiting for resources the node
        lacks (its idle leases then go back at once instead of after IDLE_LEASE_S)."""
        return any(pool.node_full and pool.queue for pool in self.pools.values()
                   if pool is not other_than)

    def _on_lease_busy(self, resources: dict[str, float]) -> None:
        with self.lock:
            for pool in list(self.pools.values()):
                if pool.resources == resources:
                    pool.node_busy()

    def _when_args_ready(self, call: PendingCall, then, gate: ObjectRef | None = None) -> None:
        deps = call.deps()
        if gate is not None:
            deps.append(gate)
            then = self._after_gate(call, gate, then)
        pending = [ref for ref in deps
                   if ref.owner == self.core.address and not self.core.is_ready(ref)]
        if not pending:
            call.ready = True
            then()
            return
        remaining = [len(pending)]

        def one_ready() -> None:
            with self.lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    call.ready = True
                    then()

        for ref in pending:
            self.core.when_ready(ref, one_ready)

    def _after_gate(self, call: PendingCall, gate: ObjectRef, then):
        """``then``, unless ``gate`` (the ready ref of the placement group the call is placed
        in, placement_group.py) failed: then the call fails with its error."""
        def run() -> None:
            try:
                self.core.value_of(gate)
            except BaseException as exc:  # noqa: BLE001 - e.g. the group was removed
                if call.kind != "create_actor":
                    self.finish(call, [(FAILED, exc)] * len(call.return_ids))
                    return
                actor = self.actors[call.body[0]]
                self.actor_died(actor, ActorDiedError(
                    f"actor {actor.actor_id} could not be created: {exc}"))
                self.core.endpoint.send(self.core.gcs_address, "update_actor", actor.actor_id,
                                        {"state": "DEAD"})
                return
            then()
        return run

    def dispatch(self, call: PendingCall, address: str, gpu_ids: list[int]) -> None:
        """Send a call whose arguments are ready to ``address``."""
        resolved, error = resolve_refs(self.core, call.arg_refs)
        if error is not None:
            self.finish(call, [(FAILED, error)] * len(call.return_ids))
            return
        call.address = address
        call.gpu_ids = gpu_ids
        self.core.endpoint.send(address, call.kind, call.task_id, call.target, call.body,
                                resolved, call.return_ids, self.core.address, gpu_ids)

    # ---- completion --------------------------------------------------------------------------

    def _on_task_done(self, task_id: str, results: list) -> None:
        with self.lock:
            call = self.calls.get(task_id)
            if call is None:
                return
            if call.kind == "create_actor":
                self._actor_created(call, results)
                return
            error = results[0][1] if results and results[0][0] == FAILED else None
            if (error is not None and call.kind == "task" and call.retries_left != 0
                    and not call.cancelled and _should_retry(call.retry_exceptions, error)):
                call.retries_left -= 1
                self.pools[call.pool_key].task_finished(call)
                self.pools[call.pool_key].enqueue(call)
                return
            self.finish(call, results)

    def finish(self, call: PendingCall, results: list) -> None:
        """Resolve a call's return objects and forget it."""
        self.calls.pop(call.task_id, None)
        if not self.lineage.keep(call, results):   # Note [lineage] in lineage.py
            release_args(self.core, call)
        if call.kind == "task":
            self.pools[call.pool_key].task_finished(call)
        elif call.kind == "actor_call":
            actor = self.actors.get(call.body[0])
            if actor is not None:
                actor.inflight.pop(call.task_id, None)
        for oid, (state, payload) in zip(call.return_ids, results):
            self.core.resolve(oid, state, payload)

    def _actor_created(self, call: PendingCall, results: list) -> None:
        actor = self.actors.get(call.body[0])
        self.calls.pop(call.task_id, None)
        if actor is None or not actor.restartable:
            release_args(self.core, call)  # a restartable actor keeps them for its next start
        if actor is None:
            return
        actor.inflight.pop(call.task_id, None)
        if results and results[0][0] == FAILED:
            cause = results[0][1]
            self.actor_died(actor, ActorDiedError(
                f"actor {actor.actor_id} died in its constructor: {cause}"))
            self.core.endpoint.send(actor.nm_address, "kill_worker", actor.worker_id, True)

    def actor_died(self, actor: ActorState, error: BaseException) -> None:
        """Fail every pending and future call of a dead actor with ``error``."""
        actor.dead = error
        actor.ready.set()
        if actor.creation is not None and actor.restartable:
            release_args(self.core, actor.creation)
        calls = list(actor.inflight.values()) + list(actor.queue)
        actor.inflight.clear()
        actor.queue.clear()
        for call in calls:
            if call.kind == "actor_call":
                self.finish(call, [(FAILED, error)] * len(call.return_ids))
            else:
                self.calls.pop(call.task_id, None)
                release_args(self.core, call)

    def _on_worker_died(self, worker_id: str | None, address: str | None, reason: str,
                        node_lost: bool) -> None:
        with self.lock:
            for pool in self.pools.values():
                pool.worker_died(worker_id, address, reason, node_lost)
            for actor in self.actors.values():
                if actor.dead is None and ((worker_id is not None and
                                            actor.worker_id == worker_id) or
                                           (address is not None and actor.address == address)):
                    self._actor_lost(actor, reason,
                                     ActorNodeDiedError if node_lost else ActorDiedError)

    def _actor_lost(self, actor: ActorState, reason: str,
                    dead: type[ActorDiedError] = ActorDiedError) -> None:
        if not actor.restartable or (actor.creation is not None and actor.restarts_left == 0):
            self.actor_died(actor, dead(
                f"the actor {actor.actor_id} is dead: its process {reason}. Calls on it fail "
                f"from now on; create a new actor (or set max_restarts)."))
            if actor.creation is not None:
                self.core.endpoint.send(self.core.gcs_address, "update_actor", actor.actor_id,
                                        {"state": "DEAD"})
            return
        actor.address = actor.worker_id = None
        actor.ready.clear()
        calls = [c for c in actor.inflight.values() if c.kind == "actor_call"]
        actor.inflight.clear()
        for call in reversed(calls):
            if call.retries_left != 0:
                call.retries_left -= 1
                actor.queue.appendleft(call)
            else:
                self.finish(call, [(FAILED, dead(
                    f"the actor {actor.actor_id} died ({reason}) while running this call; it "
                    f"is restarting. Set max_task_retries to retry such calls."))] *
                    len(call.return_ids))
        if actor.creation is None:
            return  # the owner restarts it; the GCS tells us its new address
        if actor.restarts_left > 0:
            actor.restarts_left -= 1
        self.calls[actor.creation.task_id] = actor.creation
        self.core.endpoint.send(self.core.gcs_address, "update_actor", actor.actor_id,
                                {"state": "RESTARTING"})
        self._lease_actor(actor, actor.resources)

    def watch_actor(self, actor: ActorState) -> None:
        """Follow a restartable actor that another process owns through GCS updates."""
        if not self.subscribed:
            self.subscribed = True
            self.core.endpoint.send(self.core.gcs_address, "subscribe", "actors",
                                    self.core.address)

    def _on_actor_update(self, actor_id: str, info: dict) -> None:
        with self.lock:
            actor = self.actors.get(actor_id)
            if actor is None or actor.creation is not None:
                return
            if info.get("state") == "DEAD" and actor.dead is None:
                self.actor_died(actor, ActorDiedError(f"the actor {actor_id} is dead and will "
                                                      f"not restart"))
            elif info.get("state") == "ALIVE" and info.get("address") != actor.address:
                actor.address, actor.worker_id = info["address"], info.get("worker_id")
                actor.nm_address = info.get("nm_address")
                actor.ready.set()
                self.flush_actor(actor)

    # ---- node manager death (Note [node manager death] in supervisor.py) ----------------------

    def request_lease(self, resources: dict[str, float], actor_id: str | None) -> Future:
        """Ask the node manager for a worker; NodeDiedError if it dies before it answers."""
        core = self.core
        fut: Future = Future()
        with self.lock:
            if self.node_gone is not None:
                fut.set_exception(self.node_gone)
                return fut
            self.lease_requests.add(fut)
        asked = core.endpoint.request(core.nm_address, "request_lease", resources, actor_id,
                                      core.address)

        def answered(asked: Future) -> None:
            with self.lock:
                self.lease_requests.discard(fut)
                if not fut.done():
                    if asked.exception() is not None:
                        fut.set_exception(asked.exception())
                    else:
                        fut.set_result(asked.result())
                elif asked.exception() is None:  # granted by a node manager born meanwhile
                    worker_id, nm_address = asked.result()[0], asked.result()[3]
                    core.endpoint.send(nm_address, "kill_worker" if actor_id else
                                       "return_lease", worker_id)

        asked.add_done_callback(answered)
        return fut

    def node_died(self, reason: str, restarted: bool) -> list[str]:
        """Fail every call and lease request sent to a dead node manager's node.

        Returns the ids of the actors this process owns that live on (restartable ones).
        """
        with self.lock:
            error = NodeDiedError(f"{reason}; the calls sent to its node did not finish")
            if not restarted:
                self.node_gone = NodeDiedError(f"{reason} and was not restarted; no call can "
                                               f"run in this session any more")
            waiting, self.lease_requests = self.lease_requests, set()
            for fut in waiting:
                fut.set_exception(error)
            for pool in self.pools.values():
                calls = [c for lease in pool.leases.values() for c in lease.inflight.values()]
                calls += pool.queue
                pool.leases.clear()
                pool.queue.clear()
                for call in calls:
                    self.finish(call, [(FAILED, error)] * len(call.return_ids))
            for actor in list(self.actors.values()):
                if actor.dead is not None:
                    continue
                if actor.creation is None:
                    self.actor_died(actor, ActorNodeDiedError(
                        f"the actor {actor.actor_id} is dead: {reason}"))
                elif actor.worker_id is not None:
                    self._actor_lost(actor, reason, ActorNodeDiedError)
            return [a.actor_id for a in self.actors.values()
                    if a.creation is not None and a.dead is None]

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        """Cancel the call that makes ``ref``: drop it if queued, else interrupt its worker."""
        task_id = ref.id.rsplit(".", 1)[0]
        with self.lock:
            call = self.calls.get(task_id)
            if call is None:
                return
            call.cancelled = True
            error = TaskCancelledError(f"task {task_id} was cancelled with ember.cancel")
            if call.address is None:
                self.finish(call, [(FAILED, error)] * len(call.return_ids))
                return
            self.core.endpoint.send(call.address, "cancel", task_id, force)


def _should_retry(retry_exceptions: Any, error: BaseException) -> bool:
    if retry_exceptions is True:
        return True
    if not retry_exceptions:
        return False
    cause = error.cause if isinstance(error, TaskError) else error
    return isinstance(cause, tuple(retry_exceptions))
