"""GPU objects: tensors an actor keeps after returning them, fetched by consumers point to point.

Note [GPU objects]
~~~~~~~~~~~~~~~~~~
A method marked ``@ember.method(tensor_transport=...)`` returns a value whose tensors stay in the
producing actor (``_Kept``, keyed by the object id); the object's value is a ``TensorStub``: the
value's skeleton, each tensor's shape/dtype/device, and where the producer lives. The stub
travels like any small value (Note [value transports]). Where it is deserialized:

* in the producer itself                -> the kept tensors, as they are;
* in a process that joins no group       -> a host copy: the producer writes the value with its
  (the driver, a plain task)                tensors on the CPU into an object-store segment, the
                                            reader copies it out and tells the producer to free it;
* "ipc", or "auto" on one physical GPU   -> CUDA IPC handles in the reply; the consumer clones;
* otherwise                               -> a communicator group that holds both actors: one that
                                            ``create_collective_group`` made, or a compiled graph's
                                            (Note [one registry]); a consumer outside every such
                                            group gets a TensorTransportError naming the fix.

Two-sided transfer: the consumer posts its receives (Note [receive first]), sends
``tensor_fetch`` to the producer's address and waits for the reply (in short slices, checking
that the producer lives). The producer never answers on the actor's method thread, which may be
busy: it answers a gloo fetch on its message thread (check that the tensors still match their
metadata, reply, start the asynchronous sends, which its sender thread waits for), and NCCL
fetches, host copies and IPC handles, which take longer, on its sender thread. A consumer holds
its group's lock from posting to the last receive, and a producer starts the sends of one
request after another, so the two ends' ops pair up in order. The owner of the object tells the
producer when the last reference is gone (``watch_free``) and the producer drops the tensors.

Note [receive first]
~~~~~~~~~~~~~~~~~~~~
gloo moves data once both ends have posted: a send that finds no posted receive announces
itself, the receiver answers when it posts, and only then do the bytes go, three crossings in
all. The consumer posts its receives (shapes from the stub) before it asks, so the producer's
sends find them waiting and the bytes go at once. The receives must then always be matched: on
an error (tensors gone, shape changed) the producer still sends zero tensors of the declared
shapes and puts the error in its reply. Only a producer without the group (or dead) cannot; that
leaves the receives posted, and the consumer raises at once. NCCL pairs a send and a receive on
the GPU whichever comes first, and a receive left unmatched there would hang its stream, so
NCCL consumers post theirs after a good reply. A large CPU receive lands in memory that an
earlier received tensor used and dropped (Note [receive pool] in recv_pool.py): first-touch
page faults of fresh memory cost more than the transfer.
"""

from __future__ import annotations

import functools
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch

from ember.dynamic.core import value_transport
from ember.dynamic.core.core_worker import INLINE
from ember.dynamic.core.process_runtime import current_core
from ember._system.process import pid_alive
from ember._system.serialization import deserialize, serialize
from ember.exceptions import (EmberError, GetTimeoutError, ObjectLostError,
                              TensorTransportError)
from ember.gpu.communicator import communicator_registry
from ember.gpu.tensors import (AUTO, GLOO, IPC, NCCL, OBJECT_TRANSPORTS, TensorMeta,
                               merge_tensors, split_tensors)
FETCH_TIMEOUT_S = 300.0
_LIVENESS_SLICE_S = 0.2


@dataclass(frozen=True)
class TensorStub:
    """The stored value of a GPU object: what a consumer needs to fetch its tensors."""

    oid: str
    transport: str
    producer: str                  # the producer's message address
    actor_id: str | None
    host: str
    pid: int
    gpu: str | None                # UUID of the GPU holding CUDA tensors (for "ipc"/"auto")
    skeleton: Any
    metas: tuple[TensorMeta, ...]


class _Kept:
    """Tensors a producer keeps for one object, with the metadata its stub promised."""

    __slots__ = ("tensors", "metas")

    def __init__(self, tensors: list[torch.Tensor], metas: tuple[TensorMeta, ...]) -> None:
        self.tensors = tensors
        self.metas = metas


class GpuObjects:
    """This process's kept tensors and the sender thread that serves them (Note [GPU objects])."""

    def __init__(self) -> None:
        self.kept: dict[str, _Kept] = {}
        self.lock = threading.Lock()
        self.freed = threading.Condition(self.lock)
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.group_locks: dict[Hashable, threading.Lock] = {}
        self.dead: set[str] = set()
        self.pending: dict[str, set] = {}   # producer address -> futures waiting on it
        self.counts: Counter = Counter()    # "sent:<how>" / "received:<how>", for tests and stats
        self._core: Any = None
        self._thread: threading.Thread | None = None

    # ---- producer ----------------------------------------------------------------------------

    def export(self, name: str, value: Any, oid: str, owner: str) -> Any:
        """Keep ``value``'s tensors here; return the stub stored as the object's value."""
        skeleton, tensors = split_tensors(value)
        if not tensors:
            return value
        _check_devices(name, tensors)
        core = self._started()
        if core.actor_id is None:
            raise TensorTransportError(
                f"tensor_transport={name!r} keeps tensors in the actor that makes the value, "
                f"and this process is not an actor (the driver and tasks join no group); call "
                f"ember.put(..., _tensor_transport=...) inside an actor, or drop the option")
        metas = tuple(TensorMeta.of(t) for t in tensors)
        gpu = _gpu_uuid(tensors[0].device.index or 0) if tensors[0].is_cuda else None
        with self.lock:
            self.kept[oid] = _Kept(tensors, metas)
        value_transport.watch_free(core, oid, owner, self._free)
        return TensorStub(oid, name, core.address, core.actor_id, socket.gethostname(),
                          os.getpid(), gpu, skeleton, metas)

    def _free(self, oid: str) -> None:
        with self.lock:
            self.kept.pop(oid, None)
            self.freed.notify_all()

    def wait_freed(self, tensor: torch.Tensor, timeout: float | None = None) -> None:
        """Block until no object of this process keeps ``tensor`` (then it may be changed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while any(t is tensor for kept in self.kept.values() for t in kept.tensors):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise GetTimeoutError(f"a tensor of shape {tuple(tensor.shape)} is still in a "
                                          f"GPU object after {timeout} s; drop its refs first")
                self.freed.wait(remaining)

    def _on_fetch(self, reply_to: str, rid: int, oid: str, how: str, arg: Any) -> None:
        """On the I/O thread: answer a gloo fetch at once (its sends are asynchronous); leave
        host copies, IPC handles and NCCL sends (whose first one between two ranks builds a
        communicator), which take a while, to the sender thread."""
        if how == "group" and arg[2] is not None:   # metas: a gloo receiver posted first
            self._answer(reply_to, rid, oid, how, arg)
        else:
            self.requests.put((reply_to, rid, oid, how, arg))

    def _serve(self) -> None:
        """The sender thread: slow answers, frees of host copies, and waits for sends."""
        while True:
            reply_to, rid, oid, how, arg = self.requests.get()
            if how == "freed":   # a reader is done with a host copy
                self._core.free_segments([arg])
            elif how == "sent":   # wait for the sends of a group fetch
                try:
                    for wait in arg:
                        wait()
                except EmberError:
                    pass   # the consumer died or the group broke: its recv reports it
            else:
                self._answer(reply_to, rid, oid, how, arg)

    def _answer(self, reply_to: str, rid: int, oid: str, how: str, arg: Any) -> None:
        """Check the kept tensors, reply, and for a group fetch start sending them."""
        core = self._core
        with self.lock:
            kept = self.kept.get(oid)
        try:
            if how == "group":
                return self._answer_group(reply_to, rid, oid, kept, *arg)
            _check_kept(oid, kept)
            if how == "host":
                copy_id = core.new_id()
                host = [t.detach().cpu() for t in kept.tensors]
                reply = (*core.store_serialized(copy_id, serialize(host, "a host copy")), copy_id)
            else:
                reply = _ipc_handles(kept.tensors)
        except EmberError as exc:
            core.endpoint.reply(reply_to, rid, error=exc)
            return
        self.counts[f"sent:{how}"] += 1   # before the reply: a reader of stats() sees it then
        core.endpoint.reply(reply_to, rid, reply)

    def _answer_group(self, reply_to: str, rid: int, oid: str, kept: _Kept | None,
                      key: Hashable, peer: int, metas: tuple[TensorMeta, ...] | None) -> None:
        """Send the tensors over group ``key``. With ``metas`` the consumer's receives are
        already posted (Note [receive first]): on an error the reply carries it and
        placeholders of the declared shapes still match them."""
        comm = communicator_registry.get(key)
        if comm is None:
            raise TensorTransportError(f"the producer (pid {os.getpid()}) no longer has the "
                                       f"group {key!r}")
        tensors, reply = None if kept is None else kept.tensors, None
        try:
            _check_kept(oid, kept)
        except EmberError as exc:
            if metas is None:
                raise
            tensors, reply = [torch.zeros(m.shape, dtype=m.dtype, device=comm.device)
                              for m in metas], ("failed", exc)
        self.counts["sent:group"] += 1
        self._core.endpoint.reply(reply_to, rid, reply)
        try:
            waits = [comm.isend(t.detach(), peer) for t in tensors]
        except EmberError:
            return   # the group broke: the consumer's receive reports it
        self.requests.put((None, 0, oid, "sent", waits))

    # ---- consumer ----------------------------------------------------------------------------

    def resolve(self, stub: TensorStub) -> Any:
        """The value ``stub`` stands for, with its tensors fetched here (Note [GPU objects])."""
        core = self._started()
        if stub.producer == core.address:
            with self.lock:
                kept = self.kept.get(stub.oid)
            if kept is None:
                raise ObjectLostError(f"the tensors of object {stub.oid} were freed")
            return merge_tensors(stub.skeleton, kept.tensors)
        if core.actor_id is None:
            return merge_tensors(stub.skeleton, self._fetch_host(core, stub))
        if stub.transport == IPC or (stub.transport == AUTO and stub.gpu is not None
                                     and torch.cuda.is_available()
                                     and stub.gpu == _gpu_uuid(torch.cuda.current_device())):
            handles = self._request(core, stub, IPC, None)
            self.counts["received:ipc"] += 1
            return merge_tensors(stub.skeleton, [_open_ipc(h).clone() for h in handles])
        return merge_tensors(stub.skeleton, self._fetch_group(core, stub))

    def stats(self) -> dict:
        """How many objects this process keeps, and the transfers it served and received."""
        with self.lock:
            return {"kept": len(self.kept), **self.counts}

    def _fetch_host(self, core: Any, stub: TensorStub) -> list[torch.Tensor]:
        self.counts["received:host"] += 1
        state, payload, copy_id = self._request(core, stub, "host", None)
        if state == INLINE:
            return deserialize(payload, "a host copy")
        try:
            return core.read_object(copy_id, payload[1])   # our own tensors (Note [tensor frames])
        finally:
            core.endpoint.send(stub.producer, "tensor_fetch", core.address, 0, stub.oid,
                               "freed", copy_id)

    def _fetch_group(self, core: Any, stub: TensorStub) -> list[torch.Tensor]:
        backend = _backend(stub)
        key = _find_group(backend, core.actor_id, stub.actor_id)
        comm = None if key is None else communicator_registry.get(key)
        if comm is None:
            raise TensorTransportError(
                f"actor {core.actor_id} is not in a {backend} collective group with actor "
                f"{stub.actor_id}, which produced object {stub.oid} with tensor_transport="
                f"{stub.transport!r}; put both in one group with ember.experimental.collective."
                f"create_collective_group([...], backend={'nccl' if backend == NCCL else 'torch_gloo'!r})")
        self.counts[f"received:{backend}"] += 1
        mine, peer = key.index(core.actor_id) - 1, key.index(stub.actor_id) - 1
        first = comm.backend == GLOO   # Note [receive first]
        with self._group_lock(key):
            waits = [comm.irecv(meta, peer) for meta in stub.metas] if first else []
            reply = self._request(core, stub, "group", (key, mine, stub.metas if first else None))
            try:
                waits = waits or [comm.irecv(meta, peer) for meta in stub.metas]
                out = [wait() for wait in waits]
            except EmberError as exc:
                if not _alive(stub):
                    raise _lost(stub) from exc
                raise
        if reply is not None:
            raise reply[1]
        return out

    def _request(self, core: Any, stub: TensorStub, how: str, arg: Any) -> Any:
        """Ask the producer for ``stub``'s tensors; wait for its answer, failing fast if it died."""
        fut = core.endpoint.request(stub.producer, "tensor_fetch", stub.oid, how, arg)
        with self.lock:
            if stub.producer in self.dead:
                raise _lost(stub)
            self.pending.setdefault(stub.producer, set()).add(fut)
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        try:
            while True:
                try:
                    return fut.result(_LIVENESS_SLICE_S)
                except TimeoutError:
                    if not _alive(stub):
                        raise _lost(stub) from None
                    if time.monotonic() > deadline:
                        raise GetTimeoutError(f"the producer of object {stub.oid} did not answer "
                                              f"within {FETCH_TIMEOUT_S} s") from None
        finally:
            with self.lock:
                self.pending.get(stub.producer, set()).discard(fut)

    def _on_worker_died(self, worker_id: str | None, address: str | None, reason: str,
                        node_lost: bool) -> None:
        if address is None:
            return
        with self.lock:
            self.dead.add(address)
            futures = self.pending.pop(address, set())
        for fut in futures:
            if not fut.done():
                fut.set_exception(ObjectLostError(f"the actor holding the tensors died ({reason})"))

    def _group_lock(self, key: Hashable) -> threading.Lock:
        with self.lock:
            return self.group_locks.setdefault(key, threading.Lock())

    def start(self) -> Any:
        """Serve fetches in this process (a group member calls it when joining)."""
        return self._started()

    def _started(self) -> Any:
        """This process's core, with the fetch handler and the sender thread installed once."""
        core = current_core()
        if self._core is not core:
            with self.lock:
                if self._core is not core:
                    self._core = core
                    core.endpoint.on("tensor_fetch", self._on_fetch)
                    core.death_listeners.append(self._on_worker_died)
                    if self._thread is None:   # one for the process, across ember.init()s
                        self._thread = threading.Thread(target=self._serve, daemon=True,
                                                        name="ember-gpu-objects")
                        self._thread.start()
        return core


def _check_devices(name: str, tensors: list[torch.Tensor]) -> None:
    """Refuse tensors on a device that transport ``name`` cannot carry."""
    want_cuda = {GLOO: False, NCCL: True, IPC: True}.get(name)
    for i, tensor in enumerate(tensors):
        if want_cuda is None:
            if tensor.device.type not in ("cpu", "cuda"):
                raise TensorTransportError(f"tensor {i} is on {tensor.device}; tensor_transport="
                                           f"'auto' carries cpu and cuda tensors")
        elif tensor.is_cuda != want_cuda or tensor.device.type not in ("cpu", "cuda"):
            need = "CUDA tensors: move it with .cuda()" if want_cuda else (
                "CPU tensors: move it with .cpu(), or use 'nccl' / 'ipc'")
            raise TensorTransportError(f"tensor {i} of the value is on {tensor.device}, but "
                                       f"tensor_transport={name!r} carries {need}")


def _check_kept(oid: str, kept: _Kept | None) -> None:
    """Refuse to send tensors that are gone, or whose shape or dtype changed since the stub was made."""
    if kept is None:
        raise ObjectLostError(f"the tensors of object {oid} are gone from their producer (pid "
                              f"{os.getpid()}); was the actor restarted?")
    for i, (tensor, meta) in enumerate(zip(kept.tensors, kept.metas)):
        if tuple(tensor.shape) != meta.shape or tensor.dtype != meta.dtype:
            raise TensorTransportError(
                f"tensor {i} of object {oid} now has shape {tuple(tensor.shape)} and dtype "
                f"{tensor.dtype}, but its ref declares shape {meta.shape} and dtype {meta.dtype}; "
                f"the producer changed it in place after returning it: return a copy instead")


def _backend(stub: TensorStub) -> str:
    if stub.transport in (GLOO, NCCL):
        return stub.transport
    return NCCL if any(m.device.startswith("cuda") for m in stub.metas) else GLOO


def _find_group(backend: str, me: str, producer: str | None) -> Hashable | None:
    """A live group key (backend, *actors in rank order) that holds both actors (Note [one registry])."""
    for key in communicator_registry.keys():
        if (isinstance(key, tuple) and key and key[0] == backend and me in key[1:]
                and producer in key[1:]):
            return key
    return None


def _alive(stub: TensorStub) -> bool:
    return stub.host != socket.gethostname() or pid_alive(stub.pid)


def _lost(stub: TensorStub) -> ObjectLostError:
    return ObjectLostError(f"object {stub.oid} is lost: the actor {stub.actor_id} (pid "
                           f"{stub.pid}) that holds its tensors died")


def _gpu_uuid(index: int) -> str | None:
    """The UUID of this process's CUDA device ``index`` (NVML, read once per process: CUDA
    fixes a process's visible devices when it starts)."""
    uuids = _visible_uuids()
    return uuids[index] if index < len(uuids) else None


@functools.cache
def _visible_uuids() -> list[str]:
    from ember.gpu.devices import visible_gpu_uuids
    return visible_gpu_uuids()


def _ipc_handles(tensors: list[torch.Tensor]) -> list[tuple]:
    """CUDA IPC handles of ``tensors`` (torch's own reductions, with their sync events)."""
    from torch.multiprocessing.reductions import reduce_tensor
    torch.cuda.current_stream().synchronize()
    return [reduce_tensor(t.detach()) for t in tensors]


def _open_ipc(handle: tuple) -> torch.Tensor:
    rebuild, args = handle
    return rebuild(*args)


objects = GpuObjects()
value_transport.register(OBJECT_TRANSPORTS, objects, TensorStub, objects.resolve)
