"""Submitting calls: tasks over leased workers, actor calls straight to the actor's process.

Normal tasks of one resource shape share a ``LeasePool`` (lease_pool.py, Note [spreading
tasks]). Actor calls go to the actor's address in submission order. Results come back as
``task_done`` messages; a worker's death fails or retries its calls.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ember.dynamic.core.core_worker import FAILED, CoreWorker
from ember.dynamic.core.lease_pool import LeasePool, pool_key
from ember.dynamic.core.lineage import Lineage
from ember.dynamic.core.object_ref import ObjectRef
from ember.dynamic.core.task_spec import PendingCall, encode_args, release_args, resolve_refs
from ember.exceptions import (ActorDiedError, ActorNodeDiedError, NodeDiedError,
                              TaskCancelledError, TaskError)


@dataclass
class ActorState:
    """What a process that holds an actor handle knows of the actor."""

    actor_id: str
    address: str | None = None
    worker_id: str | None = None
    nm_address: str | None = None   # the node manager of its worker
    node_id: str | None = None      # the node it runs on
    dead: BaseException | None = None
    queue: deque = field(default_factory=deque)
    inflight: dict[str, PendingCall] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    creation: PendingCall | None = None
    resources: dict[str, float] = field(default_factory=dict)
    restarts_left: int = 0
    max_task_retries: int = 0
    restartable: bool = False
    detached: bool = False          # lifetime="detached": no process owns it (Ray: the GCS)

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
        self.lineage = Lineage(core, self.requeue)
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
        fut = self.request_lease(resources, actor.actor_id, owned=not actor.detached)

        def granted(fut) -> None:
            with self.lock:
                try:
                    worker_id, address, gpu_ids, nm_address, node_id = fut.result()
                except Exception as exc:  # noqa: BLE001 - cannot place the actor
                    dead = ActorNodeDiedError if isinstance(exc, NodeDiedError) else ActorDiedError
                    self.actor_died(actor, dead(
                        f"actor {actor.actor_id} could not be created: {exc}"))
                    actor.ready.set()
                    return
                actor.worker_id, actor.address, actor.nm_address = worker_id, address, nm_address
                actor.node_id = node_id
                self.dispatch(actor.creation, address, gpu_ids)
                actor.inflight[actor.creation.task_id] = actor.creation
                core.endpoint.send(core.gcs_address, "update_actor", actor.actor_id, {
                    "state": "ALIVE", "address": address, "worker_id": worker_id,
                    "nm_address": nm_address, "node_id": node_id})
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
                actor.nm_address, actor.node_id = info.get("nm_address"), info.get("node_id")
                actor.ready.set()
                self.flush_actor(actor)

    # ---- node manager death (Note [node manager death] in supervisor.py) ----------------------

    def requeue(self, call: PendingCall) -> None:
        """Submit ``call`` again on its pool (Note [lineage]: rebuilding a lost result)."""
        self.calls[call.task_id] = call
        self.pools[call.pool_key].enqueue(call)

    def request_lease(self, resources: dict[str, float], actor_id: str | None,
                      owned: bool = True, private: bool = False) -> Future:
        """Ask the node manager for a worker; NodeDiedError if it dies before it answers.
        ``owned``: the worker ends with this process (not so for a detached actor);
        ``private``: it serves nobody after this lease (Note [private leases])."""
        core = self.core
        fut: Future = Future()
        with self.lock:
            if self.node_gone is not None:
                fut.set_exception(self.node_gone)
                return fut
            self.lease_requests.add(fut)
        asked = core.endpoint.request(core.nm_address, "request_lease", resources, actor_id,
                                      core.address if owned else "", False, private)

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
