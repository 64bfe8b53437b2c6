"""The runtime inside every ember process (driver or worker): objects, ownership, get/put/wait.

Note [ownership]: the process that creates an object (by ``put`` or by submitting the task that
returns it) owns it. The owner keeps the object's state (pending, value inline, value in shared
memory, error) and its reference count: local ``ObjectRef`` instances, borrowers (other processes
holding refs) and refs *in transit* (serialized, not yet deserialized). When all three are zero
the object is freed: its entry is dropped and its segment, if any, removed (Note [who unlinks]).

Note [who unlinks]: the owner unlinks a freed object's segment itself, at once, and then tells
the node manager, which drops it from its accounting and deletes a spilled copy. Freeing never
waits on the node manager, so a busy node manager cannot make /dev/shm grow (a loop of puts
outruns it easily on a loaded machine). Processes that still map the segment keep their views.

Note [borrow order]: a process that deserializes a ref it does not own sends ``borrow`` to the
owner before anything else it sends there; a process that serializes a borrowed ref first sends
``transit``. Messages between two processes keep their order (messaging.py), so an owner never
sees a borrower's release before the add that precedes it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Callable

from ember._system import shm
from ember.dynamic.core import value_transport
from ember.dynamic.rpc.messaging import Endpoint
from ember.dynamic.objects.transfer import Node, Puller, this_node
from ember.dynamic.core.object_ref import ObjectRef
from ember.dynamic.objects.segment_writer import SegmentWriter
from ember._system.serialization import Serialized, deserialize, serialize
from ember.exceptions import (GetTimeoutError, ObjectFreedError, ObjectLostError,
                              OwnerDiedError)

INLINE_MAX = 100 * 1024
RESTORE_ATTEMPTS = 10
ASK_AGAIN_S = 1.0

PENDING, INLINE, IN_SHM, FAILED = range(4)


class Entry:
    """What a process knows about one object."""

    __slots__ = ("state", "payload", "owner", "owned", "event", "callbacks", "local",
                 "borrowers", "transit", "pins")

    def __init__(self, owner: str, owned: bool) -> None:
        self.state = PENDING
        self.payload: Any = None
        self.owner = owner
        self.owned = owned
        self.event: threading.Event | None = None
        # callbacks and borrowers are made on first use: most entries never need them, and an
        # empty set costs 216 bytes per pending task's result
        self.callbacks: list[Callable[[], None]] | None = None
        self.local = 0
        self.borrowers: set[str] | None = None
        self.transit = 0
        self.pins = 0

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the object has a value or an error."""
        if self.callbacks is None:
            self.callbacks = []
        self.callbacks.append(callback)


class CoreWorker:
    """Objects and messaging of one process; submitters and executors build on it."""

    def __init__(self, address: str, nm_address: str, gcs_address: str,
                 worker_id: str | None) -> None:
        self.address = address
        self.nm_address = nm_address
        self.gcs_address = gcs_address
        self.worker_id = worker_id
        self.actor_id: str | None = None   # set in the worker that hosts an actor
        self.endpoint = Endpoint(address, "driver" if worker_id is None else "worker")
        self.address = self.endpoint.address   # a TCP port is known once bound
        self.node = this_node(nm_address)       # Note [objects across nodes]
        self.lock = threading.RLock()
        self.objects: dict[str, Entry] = {}
        self._ids = itertools.count()
        self._id_prefix = f"{os.getpid():x}{os.urandom(3).hex()}"
        self.function_cache: dict[str, Any] = {}
        self.segments = SegmentWriter()
        self.puller = Puller(self.segments)
        self.exported: set[str] = set()
        self.executing_task = threading.local()
        # (worker id or None, address or None, reason, whether its whole node was lost)
        self.death_listeners: list[Callable[[str | None, str | None, str, bool], None]] = []
        self.on_free: dict[str, list[Callable[[], None]]] = {}  # owned oid -> run once freed
        self.rebuild: Callable[[str], bool] = lambda oid: False   # Note [lineage]
        self.pub_listeners: dict[str, Callable[[str, Any], None]] = {}  # GCS channel -> handler
        ep = self.endpoint
        ep.on("get_object", self._on_get_object)
        ep.on("borrow", self._on_borrow)
        ep.on("unborrow", self._on_unborrow)
        ep.on("transit", self._on_transit)
        ep.on("object_value", self._on_object_value)
        ep.on("worker_died", self._on_worker_died)
        ep.on("watch_free", self._on_watch_free)
        ep.on("pub", self._on_pub)

    # ---- ids and lifecycle -------------------------------------------------------------------

    def new_id(self) -> str:
        """A new id, unique in the cluster."""
        return f"{self._id_prefix}{next(self._ids):x}"

    def start(self) -> None:
        """Start receiving messages."""
        self.endpoint.start()

    def stop(self, free_owned: bool = False) -> None:
        """Stop messaging; refs left alive no longer count (``free_owned``: first remove the
        segments of the objects this process owns, as a driver leaving a cluster must)."""
        if free_owned:
            with self.lock:
                held = [(oid, e.payload[1]) for oid, e in self.objects.items()
                        if e.owned and e.state == IN_SHM]
                self.objects.clear()
            for oid, node in held:
                self.free_segments([oid], node)
        self.segments.close()
        self.endpoint.stop()

    def gcs_call(self, kind: str, *fields: Any, timeout: float = 30.0) -> Any:
        """Ask the GCS (``ask``); the driver restarts a dead one (Note [GCS restart])."""
        return self.ask(self.gcs_address, kind, *fields, timeout=timeout)

    def ask(self, address: str, kind: str, *fields: Any, timeout: float = 30.0) -> Any:
        """Send a request and wait for the answer, asking again if it is slow to come.

        A GCS or node manager killed with requests unread loses them, and so does a socket
        that has not yet noticed the death; the driver restarts either process at the same
        address (supervisor.py). Asking again after 1, 2, 4... s reaches the new one. The
        requests sent this way must be idempotent (a resent ``kv_put`` with
        ``overwrite=False`` would answer False).
        """
        deadline = time.monotonic() + timeout
        wait = ASK_AGAIN_S
        while True:
            answer = self.endpoint.request(address, kind, *fields)
            try:
                return answer.result(max(0.0, min(wait, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise GetTimeoutError(f"no answer to {kind!r} from {address} within "
                                          f"{timeout} s; is that ember process alive?") from None
            wait *= 2

    # ---- reference counting ------------------------------------------------------------------

    def owned_ref(self, oid: str) -> ObjectRef:
        """A ref to a new object ``oid`` that this process owns and will resolve."""
        with self.lock:
            self.objects[oid] = Entry(self.address, True)
        return ObjectRef(oid, self.address, self)

    def add_local_ref(self, oid: str, owner: str) -> None:
        """An ObjectRef for ``oid`` was created in this process.

        A ref this process owns but has no entry for is stale: the object was freed (or never
        made here); it reads as ObjectFreedError at once instead of waiting for a value that
        nobody will produce. New objects get their entry first, through ``owned_ref``.
        """
        with self.lock:
            entry = self.objects.get(oid)
            if entry is None:
                entry = self.objects[oid] = Entry(owner, owner == self.address)
                if entry.owned:
                    entry.state, entry.payload = FAILED, ObjectFreedError(
                        f"ObjectRef({oid}) was freed: its last reference was gone before this "
                        f"one was made (e.g. by unpickling a ref after the value was released)")
            entry.local += 1

    def remove_local_ref(self, oid: str) -> None:
        """An ObjectRef for ``oid`` was collected."""
        try:
            with self.lock:
                entry = self.objects.get(oid)
                if entry is None:
                    return
                entry.local -= 1
                self._maybe_release(oid, entry)
        except Exception:  # noqa: BLE001 - runs in __del__, possibly at interpreter exit
            pass

    def pin(self, oid: str) -> None:
        """Keep an owned object alive until ``unpin`` (e.g. while a task uses it)."""
        with self.lock:
            entry = self.objects.get(oid)
            if entry is not None:
                entry.pins += 1

    def unpin(self, oid: str) -> None:
        """Undo one ``pin``."""
        with self.lock:
            entry = self.objects.get(oid)
            if entry is not None:
                entry.pins -= 1
                self._maybe_release(oid, entry)

    def note_serialized(self, ref: ObjectRef) -> None:
        """A ref is being pickled: count it in transit at its owner (Note [borrow order])."""
        if ref.owner == self.address:
            with self.lock:
                entry = self.objects.get(ref.id)
                if entry is not None:
                    entry.transit += 1
        else:
            # leaves before the message that carries the ref (Note [batched messages])
            self.endpoint.send(ref.owner, "transit", ref.id, hold=False)

    def note_deserialized(self, ref: ObjectRef) -> None:
        """A ref was unpickled here: register as a borrower with its owner."""
        if ref.owner == self.address:
            with self.lock:
                entry = self.objects.get(ref.id)
                if entry is not None and entry.transit > 0:
                    entry.transit -= 1
            return
        with self.lock:
            first = self.objects[ref.id].local == 1
        self.endpoint.send(ref.owner, "borrow", ref.id, self.address, first)

    def _on_transit(self, oid: str) -> None:
        with self.lock:
            entry = self.objects.get(oid)
            if entry is not None:
                entry.transit += 1

    def _on_borrow(self, oid: str, borrower: str, first: bool) -> None:
        with self.lock:
            entry = self.objects.get(oid)
            if entry is None:
                return
            if entry.transit > 0:
                entry.transit -= 1
            if first:
                if entry.borrowers is None:
                    entry.borrowers = set()
                entry.borrowers.add(borrower)

    def _on_unborrow(self, oid: str, borrower: str) -> None:
        with self.lock:
            entry = self.objects.get(oid)
            if entry is not None:
                if entry.borrowers:
                    entry.borrowers.discard(borrower)
                self._maybe_release(oid, entry)

    def _maybe_release(self, oid: str, entry: Entry) -> None:
        if entry.local > 0:
            return
        if not entry.owned:
            del self.objects[oid]
            self.endpoint.send(entry.owner, "unborrow", oid, self.address)
            return
        if entry.borrowers or entry.transit > 0 or entry.pins > 0 or entry.state == PENDING:
            return
        del self.objects[oid]
        if entry.state == IN_SHM:
            self.free_segments([oid], entry.payload[1])
        if self.on_free:
            for callback in self.on_free.pop(oid, ()):
                callback()

    def when_freed(self, oid: str, callback: Callable[[], None]) -> None:
        """Run ``callback`` once this process frees its object ``oid``."""
        self.on_free.setdefault(oid, []).append(callback)

    def _on_watch_free(self, oid: str, watcher: str) -> None:
        """Tell ``watcher`` when this owner frees ``oid`` (Note [value transports])."""
        with self.lock:
            entry = self.objects.get(oid)
            if entry is not None and entry.owned:
                self.when_freed(oid, lambda: self.endpoint.send(watcher, "value_freed", oid))
                return
        self.endpoint.send(watcher, "value_freed", oid)

    def free_segments(self, oids: list[str], node: Node | None = None) -> None:
        """Remove freed objects' segments and their spilled copies (Note [who unlinks]); those
        of another node through its node manager (Note [objects across nodes])."""
        if node is not None and node.node_id != self.node.node_id:
            self.endpoint.send(node.nm_address, "obj_delete", oids)
            return
        for oid in oids:
            path = shm.segment_path("obj", oid)
            self.segments.release(path)
            shm.unlink(path)
        self.endpoint.send(self.nm_address, "obj_free", oids)

    # ---- storing values ----------------------------------------------------------------------

    def put(self, value: Any, transport: str | None = None) -> ObjectRef:
        """Store ``value`` as a new object owned by this process (its tensors kept here by
        ``transport``, Note [value transports])."""
        oid = self.new_id()
        ref = self.owned_ref(oid)   # first: a transport watches its entry
        try:
            value = value_transport.export(transport, value, oid, self.address)
            ser = serialize(value, "the value passed to ember.put")
        except BaseException as exc:
            self.resolve(oid, FAILED, exc)
            raise
        state, payload = self.store_serialized(oid, ser)
        self.resolve(oid, state, payload)
        return ref

    def store_serialized(self, oid: str, ser: Serialized,
                         owner: str | None = None) -> tuple[int, Any]:
        """Place a serialized value: inline bytes when small, else its own shm segment (the
        payload is then its size and this node, Note [objects across nodes]) that the node
        removes when its owner (this process unless given) ends (Note [owner ends])."""
        if ser.frame_size <= INLINE_MAX:
            return INLINE, ser.to_bytes()
        path = shm.segment_path("obj", oid)
        try:
            self.segments.write(path, ser)
        except FileExistsError:
            shm.unlink(path)  # left by an attempt of a retried task that died before reporting
            self.segments.write(path, ser)
        self.endpoint.send(self.nm_address, "obj_sealed", oid, ser.frame_size,
                           owner or self.address)
        return IN_SHM, (ser.frame_size, self.node)

    def resolve(self, oid: str, state: int, payload: Any) -> None:
        """Record an object's outcome (value or error) and wake whoever waits for it."""
        with self.lock:
            entry = self.objects.get(oid)
            if entry is None:
                if state == IN_SHM and payload is not None:
                    self.free_segments([oid], payload[1])
                return
            entry.state = state
            entry.payload = payload
            callbacks, entry.callbacks = entry.callbacks or (), None
            event = entry.event
            self._maybe_release(oid, entry)
        if event is not None:
            event.set()
        for callback in callbacks:
            callback()

    def when_ready(self, ref: ObjectRef, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on some thread) once ``ref`` has a value or an error."""
        with self.lock:
            entry = self.objects.get(ref.id)
            if entry is not None and entry.state == PENDING:
                entry.on_ready(callback)
                if not entry.owned:
                    self._fetch(ref)
                return
        callback()

    def is_ready(self, ref: ObjectRef) -> bool:
        """Whether ``ref`` has a value or an error here, without waiting."""
        entry = self.objects.get(ref.id)
        return entry is not None and entry.state != PENDING

    # ---- reading values ----------------------------------------------------------------------

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
        """Wait for each ref and return the values; errors are raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for ref in refs:
            if not self.is_ready(ref):
                self.wait_ready(ref, deadline)
        return [self.value_of(ref) for ref in refs]

    def get_one(self, ref: ObjectRef, timeout: float | None) -> Any:
        """Wait for one ref and return its value."""
        if not self.is_ready(ref):
            self.wait_ready(ref, None if timeout is None else time.monotonic() + timeout)
        return self.value_of(ref)

    def wait_ready(self, ref: ObjectRef, deadline: float | None) -> None:
        """Block until ``ref`` is ready; GetTimeoutError past ``deadline``."""
        with self.lock:
            entry = self.objects.get(ref.id)
            if entry is None:
                raise ObjectFreedError(f"{ref} was freed; keep a reference while you need it")
            if entry.state != PENDING:
                return
            if entry.event is None:
                entry.event = threading.Event()
            event = entry.event
            if not entry.owned:
                self._fetch(ref)
        self._blocked(True)
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(remaining):
                raise GetTimeoutError(
                    f"get timed out after waiting for {ref}; the task that makes it may still "
                    f"be running. Raise the timeout, or use ember.wait to poll.")
        finally:
            self._blocked(False)

    def _blocked(self, blocked: bool) -> None:
        if self.worker_id is not None and getattr(self.executing_task, "active", False):
            self.endpoint.send(self.nm_address, "worker_blocked", self.worker_id, blocked)

    def value_of(self, ref: ObjectRef) -> Any:
        """The value of a ready ref (raises its error)."""
        entry = self.objects.get(ref.id)
        if entry is None:
            raise ObjectFreedError(f"{ref} was freed; keep a reference while you need it")
        if entry.state == INLINE:
            return value_transport.resolve(deserialize(entry.payload, f"the value of {ref}"))
        if entry.state == IN_SHM:
            return value_transport.resolve(self.read_object(ref.id, entry.payload[1]))
        if entry.state == FAILED:
            raise entry.payload
        raise ObjectLostError(f"{ref} has no value yet")

    def read_object(self, oid: str, node: Node) -> Any:
        """Read an object in shared memory of this node, or pull it from another one."""
        if node.node_id == self.node.node_id:
            return self.read_shm(oid)
        return deserialize(self.puller.pull(oid, node), f"object {oid}")

    def read_shm(self, oid: str) -> Any:
        """Map an object's segment (restoring it from spill if needed) and read it zero-copy."""
        path = shm.segment_path("obj", oid)
        # A restore for another reader can spill this object again before we map it (the cap
        # may hold only a few objects): ask again, a bounded number of times.
        for _ in range(RESTORE_ATTEMPTS):
            try:
                seg = shm.Segment.open(path)
            except FileNotFoundError:
                if not self.ask(self.nm_address, "obj_restore", oid):
                    break
                continue
            return deserialize(seg.buf.toreadonly(), f"object {oid}")
        raise ObjectLostError(f"object {oid} is gone from the object store (freed or lost)")

    # ---- borrowed objects: asking the owner --------------------------------------------------

    def _fetch(self, ref: ObjectRef) -> None:
        self.endpoint.send(ref.owner, "get_object", self.address, ref.id)

    def _on_get_object(self, reply_to: str, oid: str) -> None:
        """A borrower asks for a value: answer now, or once the value exists."""
        with self.lock:
            entry = self.objects.get(oid)
            if entry is None:
                self.endpoint.send(reply_to, "object_value", oid, FAILED, ObjectFreedError(
                    f"object {oid} was freed by its owner"))
                return
            if entry.state == PENDING:
                entry.on_ready(lambda: self._on_get_object(reply_to, oid))
                return
            state, payload = entry.state, entry.payload
        self.endpoint.send(reply_to, "object_value", oid, state, payload)

    def _on_object_value(self, oid: str, state: int, payload: Any) -> None:
        self.resolve(oid, state, payload)

    def _on_pub(self, channel: str, key: str, value: Any) -> None:
        """A GCS table this process subscribed to changed (``subscribe`` in gcs/server.py)."""
        listener = self.pub_listeners.get(channel)
        if listener is not None:
            listener(key, value)

    # ---- process deaths ----------------------------------------------------------------------

    def fail_borrowed(self, owners: Callable[[str], bool], reason: str) -> None:
        """Fail waits on borrowed objects whose owner (``owners(address)`` true) died."""
        with self.lock:
            lost = [oid for oid, e in self.objects.items()
                    if not e.owned and e.state == PENDING and owners(e.owner)]
        for oid in lost:
            self.resolve(oid, FAILED, OwnerDiedError(
                f"object {oid} is lost: its owner process died ({reason})"))

    def _lose_objects_on(self, nm_address: str, reason: str) -> None:
        """Objects whose only copy was on a node that died: rebuilt where their task can run
        again (Note [lineage] in lineage.py), asked of their owner again where borrowed, else
        lost."""
        with self.lock:
            lost = [oid for oid, e in self.objects.items()
                    if e.state == IN_SHM and e.payload[1].nm_address == nm_address]
            for oid in lost:
                entry = self.objects[oid]
                if entry.state != IN_SHM:
                    continue   # rebuilt with another result of its task
                if not entry.owned:
                    self.unresolve(oid)   # the next get asks the owner, who may rebuild it
                elif not self.rebuild(oid):
                    entry.state, entry.payload = FAILED, ObjectLostError(
                        f"object {oid} is lost: it lived only on a node that died ({reason})")

    def unresolve(self, oid: str) -> None:
        """Make a lost object pending again (it is being rebuilt or fetched anew)."""
        entry = self.objects.get(oid)
        if entry is not None:
            entry.state, entry.payload, entry.event = PENDING, None, None

    def _on_worker_died(self, worker_id: str | None, address: str | None, reason: str,
                        node_lost: bool = False) -> None:
        if address is not None:
            self.endpoint.forget_peer(address)
            self.fail_borrowed(lambda owner: owner == address, reason)
            if node_lost:
                self._lose_objects_on(address, reason)
        for listener in self.death_listeners:
            listener(worker_id, address, reason, node_lost)
