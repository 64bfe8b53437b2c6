"""Communicators: point-to-point and collective tensor ops over torch.distributed process groups."""

from __future__ import annotations

import datetime
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable

import torch
import torch.distributed as dist

from ember._system.cluster_auth import NODE_IP_ENV
from ember.exceptions import ChannelTimeoutError, TensorTransportError
from ember.gpu.recv_pool import receive_pool
from ember.gpu.tensors import REDUCE_OPS, TensorMeta
DEFAULT_TIMEOUT_S = 300.0


class Communicator(ABC):
    """A fixed group of ranks that exchange tensors; subclass it to bring your own transport.

    Every call blocks until the op is done on the host for CPU tensors; for CUDA tensors it may
    return once the op is ordered on the caller's current stream (as NCCL does).
    """

    @property
    @abstractmethod
    def rank(self) -> int:
        """This process's rank in the group."""

    @property
    @abstractmethod
    def world_size(self) -> int:
        """The number of ranks in the group."""

    @property
    @abstractmethod
    def backend(self) -> str:
        """The transport's name, e.g. "nccl" or "gloo"."""

    @abstractmethod
    def send(self, tensor: torch.Tensor, peer: int) -> None:
        """Send ``tensor`` to rank ``peer``."""

    @abstractmethod
    def recv(self, like: torch.Tensor | TensorMeta, peer: int) -> torch.Tensor:
        """Receive from ``peer`` into ``like`` (a tensor), or into a new tensor with ``like``'s shape/dtype."""

    @abstractmethod
    def allreduce(self, tensor: torch.Tensor, op: str = "sum",
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """Reduce ``tensor`` over all ranks into ``out`` (a new tensor if None; ``tensor`` itself for in place)."""

    @abstractmethod
    def allgather(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along dim 0, in rank order."""

    @abstractmethod
    def reducescatter(self, tensor: torch.Tensor, op: str = "sum",
                      out: torch.Tensor | None = None) -> torch.Tensor:
        """Reduce ``tensor`` over all ranks and keep this rank's 1/world_size chunk of dim 0."""

    @abstractmethod
    def destroy(self) -> None:
        """Free the group; idempotent. Ops after it raise TensorTransportError."""

    def initialize(self, rank: int, world_size: int) -> None:
        """Join the group as ``rank`` of ``world_size``; a compiled graph calls it in each member
        process on its own copy of a user communicator (see Note [user communicators])."""


# Note [user communicators]
# A Communicator given as a transport (``with_tensor_transport(comm)``, a collective's
# ``transport=comm``) is pickled into every actor of its edge or collective. There the graph calls
# ``initialize(rank, world_size)`` on the copy (ranks: the actors sorted by id for an edge, the
# bind order for a collective) and then uses it like a built-in group; teardown destroys the copy.


def reduce_op(op: str) -> dist.ReduceOp:
    """The torch ReduceOp for one of "sum", "product", "min", "max", "avg"."""
    try:
        return {"sum": dist.ReduceOp.SUM, "product": dist.ReduceOp.PRODUCT,
                "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX,
                "avg": dist.ReduceOp.AVG}[op]
    except KeyError:
        raise ValueError(f"reduce op {op!r} is not one of {REDUCE_OPS}") from None


# Note [one store per process]
# Rendezvous goes through a torch Store. The rank-0 process of a group hosts a TCPStore server
# (once per process, on a free port) and hands its (host, port) to the other ranks by whatever
# channel the caller has (the compile step, the GCS KV store); they connect a client, again once
# per process and address. Every group lives on that store under its own PrefixStore name, so
# many groups share one server. Names must be unique per store: a group rebuilt under an old name
# would read the old group's keys.
_stores_lock = threading.Lock()
_hosted: dict[str, tuple[dist.Store, tuple[str, int]]] = {}
_clients: dict[tuple[str, int], dist.Store] = {}


def node_ip() -> str:
    """The address other ranks reach this process at: its cluster node's IP, else loopback."""
    return os.environ.get(NODE_IP_ENV) or "127.0.0.1"


def host_store(host: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
               ) -> tuple[dist.Store, tuple[str, int]]:
    """This process's TCPStore server (started once, free port) and the (host, port) peers dial.

    ``host`` is the address other ranks reach this process at (``node_ip()`` by default).
    """
    host = host or node_ip()
    with _stores_lock:
        if host not in _hosted:
            store = dist.TCPStore(host, 0, None, True, datetime.timedelta(seconds=timeout_s),
                                  wait_for_workers=False)
            _hosted[host] = (store, (host, int(store.port)))
        return _hosted[host]


def connect_store(address: tuple[str, int], timeout_s: float = DEFAULT_TIMEOUT_S) -> dist.Store:
    """A client of the TCPStore at ``address`` (one per process and address; the local server if ours)."""
    host, port = address
    with _stores_lock:
        hosted = _hosted.get(host)
        if hosted is not None and hosted[1][1] == port:
            return hosted[0]
        key = (host, int(port))
        if key not in _clients:
            _clients[key] = dist.TCPStore(host, int(port), None, False,
                                          datetime.timedelta(seconds=timeout_s))
        return _clients[key]


def close_stores() -> None:
    """Drop this process's store server and clients (ember.shutdown); live groups keep theirs."""
    with _stores_lock:
        _hosted.clear()
        _clients.clear()


class TorchCommunicator(Communicator):
    """A torch.distributed process group built without init_process_group: gloo on CPU, NCCL on CUDA."""

    def __init__(self, name: str, rank: int, world_size: int, store: dist.Store,
                 device: str | torch.device = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range of world size {world_size}")
        self._name = name
        self._rank = rank
        self._world_size = world_size
        self._device = torch.device(device)
        self._timeout = datetime.timedelta(seconds=timeout_s)
        self._broken: str | None = None
        prefixed = dist.PrefixStore(name, store)
        if self._device.type == "cuda":
            self._pg = _nccl_group(prefixed, rank, world_size, self._device, self._timeout)
            self._backend = "nccl"
        else:
            options = dist.ProcessGroupGloo._Options()
            options._timeout = self._timeout
            # the address other nodes reach this process at (Note [cluster sockets]); the
            # hostname gloo would look up is the same for every node of a machine
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=node_ip())]
            self._pg = dist.ProcessGroupGloo(prefixed, rank, world_size, options)
            self._backend = "gloo"

    @property
    def name(self) -> str:
        """The group's name on its store."""
        return self._name

    @property
    def rank(self) -> int:
        """This process's rank in the group."""
        return self._rank

    @property
    def world_size(self) -> int:
        """The number of ranks in the group."""
        return self._world_size

    @property
    def backend(self) -> str:
        """ "gloo" or "nccl"."""
        return self._backend

    @property
    def device(self) -> torch.device:
        """The device that received tensors are allocated on."""
        return self._device

    def send(self, tensor: torch.Tensor, peer: int) -> None:
        """Send ``tensor`` to rank ``peer``."""
        self.isend(tensor, peer)()

    def isend(self, tensor: torch.Tensor, peer: int) -> Callable[[], None]:
        """Start sending ``tensor`` to rank ``peer``; return the call that waits for it."""
        self._check_peer(peer)
        work = self._group().send([tensor.contiguous()], peer, 0)
        return lambda: self._wait(work, f"send to rank {peer}")

    def recv(self, like: torch.Tensor | TensorMeta, peer: int) -> torch.Tensor:
        """Receive from ``peer`` into ``like`` (a tensor), or into a new tensor with ``like``'s shape/dtype."""
        return self.irecv(like, peer)()

    def irecv(self, like: torch.Tensor | TensorMeta, peer: int) -> Callable[[], torch.Tensor]:
        """Post a receive like ``recv``'s; return the call that waits for it and gives the tensor."""
        self._check_peer(peer)
        if isinstance(like, TensorMeta):   # on the CPU in warm memory (Note [receive pool])
            buf = (receive_pool.empty(like.shape, like.dtype) if self._device.type == "cpu"
                   else torch.empty(like.shape, dtype=like.dtype, device=self._device))
        else:
            buf = like
        target = buf if buf.is_contiguous() else torch.empty_like(buf, memory_format=torch.contiguous_format)
        work = self._group().recv([target], peer, 0)

        def wait() -> torch.Tensor:
            self._wait(work, f"recv from rank {peer}")
            if target is not buf:
                buf.copy_(target)
            return buf
        return wait

    def allreduce(self, tensor: torch.Tensor, op: str = "sum",
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """Reduce ``tensor`` over all ranks into ``out`` (a new tensor if None; ``tensor`` itself for in place)."""
        options = dist.AllreduceOptions()
        options.reduceOp = self._reduce_op(op, tensor)
        out = _output(tensor, out)
        self._wait(self._group().allreduce([out], options), f"allreduce({op})")
        return out

    def allgather(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along dim 0, in rank order."""
        tensor = tensor.contiguous()
        shape = (self._world_size * tensor.shape[0], *tensor.shape[1:]) if tensor.dim() else (self._world_size,)
        if out is None:
            out = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
        elif tuple(out.shape) != shape or not out.is_contiguous():
            raise TensorTransportError(f"allgather output has shape {tuple(out.shape)}, needs a "
                                       f"contiguous {shape}")
        self._wait(self._group()._allgather_base(out, tensor), "allgather")
        return out

    def reducescatter(self, tensor: torch.Tensor, op: str = "sum",
                      out: torch.Tensor | None = None) -> torch.Tensor:
        """Reduce ``tensor`` over all ranks and keep this rank's 1/world_size chunk of dim 0."""
        if tensor.dim() == 0 or tensor.shape[0] % self._world_size:
            raise TensorTransportError(f"reducescatter needs dim 0 divisible by the world size "
                                       f"{self._world_size}, got shape {tuple(tensor.shape)}")
        tensor = tensor.contiguous()
        shape = (tensor.shape[0] // self._world_size, *tensor.shape[1:])
        if out is None:
            out = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
        elif tuple(out.shape) != shape or not out.is_contiguous():
            raise TensorTransportError(f"reducescatter output has shape {tuple(out.shape)}, needs a "
                                       f"contiguous {shape}")
        options = dist.ReduceScatterOptions()
        options.reduceOp = self._reduce_op(op, tensor)
        self._wait(self._group()._reduce_scatter_base(out, tensor, options), f"reducescatter({op})")
        return out

    def destroy(self) -> None:
        """Shut the process group down; idempotent."""
        pg, self._pg = self._pg, None
        if pg is not None:
            try:
                pg.shutdown()
            except RuntimeError:
                pass  # a backend without shutdown, or one whose peers are already gone

    def __repr__(self) -> str:
        return (f"TorchCommunicator(name={self._name!r}, rank={self._rank}, "
                f"world_size={self._world_size}, backend={self._backend!r})")

    def _group(self) -> dist.ProcessGroup:
        """The live process group, or a clear error after destroy or a failed op."""
        if self._pg is None:
            raise TensorTransportError(f"{self!r} was destroyed")
        if self._broken is not None:
            raise TensorTransportError(f"{self!r} is broken by an earlier failure ({self._broken}); "
                                       f"destroy it and build a new group")
        return self._pg

    def _check_peer(self, peer: int) -> None:
        """Reject a peer outside the group or equal to this rank."""
        if not 0 <= peer < self._world_size or peer == self._rank:
            raise ValueError(f"peer {peer} is not another rank of {self!r}")

    def _reduce_op(self, op: str, tensor: torch.Tensor) -> dist.ReduceOp:
        """The ReduceOp for ``op``, refusing "avg" on integer tensors."""
        if op == "avg" and not (tensor.is_floating_point() or tensor.is_complex()):
            raise ValueError(f"allreduce op 'avg' needs a floating tensor, got {tensor.dtype}")
        return reduce_op(op)

    def _wait(self, work: dist.Work, what: str) -> None:
        """Wait for ``work``: on the host for gloo, on the current stream for NCCL."""
        start = time.monotonic()
        try:
            if self._backend == "nccl":
                work.wait()  # orders the current stream after the op; the NCCL watchdog times out
            else:
                work.wait(self._timeout)
        except RuntimeError as exc:
            # Note [a failed op breaks the group]: gloo closes the pair on a timeout and NCCL
            # aborts its communicator, so no later op on this group could succeed.
            self._broken = f"{what}: {exc}"
            if time.monotonic() - start >= self._timeout.total_seconds():
                raise ChannelTimeoutError(f"{what} on {self!r} timed out after "
                                          f"{self._timeout.total_seconds()} s") from exc
            raise TensorTransportError(f"{what} on {self!r} failed (a peer may have died): "
                                       f"{exc}") from exc


def _output(tensor: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The tensor an in-place collective writes: ``out``, or a contiguous copy of ``tensor``."""
    if out is None:
        return tensor.clone(memory_format=torch.contiguous_format)
    if out is not tensor:
        out.copy_(tensor)
    if not out.is_contiguous():
        raise TensorTransportError("collective output must be contiguous")
    return out


def _nccl_group(store: dist.Store, rank: int, world_size: int, device: torch.device,
                timeout: datetime.timedelta) -> dist.ProcessGroup:
    """A standalone ProcessGroupNCCL bound to ``device``, connected eagerly."""
    if not dist.is_nccl_available():
        raise TensorTransportError("NCCL is not available in this torch build; use CPU tensors "
                                   "(gloo) or the CUDA IPC transport")
    from torch.distributed import ProcessGroupNCCL

    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    options = ProcessGroupNCCL.Options()
    options._timeout = timeout
    pg = ProcessGroupNCCL(store, rank, world_size, options)
    pg.eager_connect_single_device(device)
    return pg


class CommunicatorRegistry:
    """Per-process, reference-counted communicators keyed by the set of actors they connect.

    A graph acquires the group for its actors at compile time and releases it at teardown; a second
    graph over the same actors gets the same group, and the last release destroys it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, list] = {}  # key -> [communicator, count]

    def acquire(self, key: Hashable, create: Callable[[], Communicator]) -> Communicator:
        """The communicator for ``key``, made with ``create()`` the first time; counts one user."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [create(), 0]
            entry[1] += 1
            return entry[0]

    def release(self, key: Hashable) -> None:
        """Drop one user of ``key``'s communicator; the last one destroys it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise KeyError(f"no communicator registered for {key!r}")
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._entries[key]
        entry[0].destroy()

    def get(self, key: Hashable) -> Communicator | None:
        """The live communicator for ``key``, if any."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry[0]

    def keys(self) -> list[Hashable]:
        """The keys of the live communicators (the dynamic layer's tensor transport looks for a
        group holding two actors among them, Note [one registry])."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        """Destroy every communicator (process exit, ember.shutdown)."""
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for communicator, _ in entries:
            communicator.destroy()


communicator_registry = CommunicatorRegistry()
