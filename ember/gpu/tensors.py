"""Tensors apart from their value: split a value into metadata and tensors, rebuild it, check type hints."""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from ember.exceptions import TensorTransportError

if TYPE_CHECKING:
    import torch

# Note [transport names]: the one vocabulary of how tensors travel, for compiled-graph edges
# and GPU objects alike. "auto" lets ember choose; "ipc" is CUDA IPC on one GPU; "nccl" a
# communicator's send/recv (NCCL on GPUs, gloo on CPUs); "gloo" asks for gloo by name (GPU
# objects); "cpu" host copies in the CPU message; "handoff" is what the planner answers for two
# ends in one process (never asked for). Channels themselves are type objects, not names.
AUTO, IPC, NCCL, CPU, GLOO, HANDOFF = "auto", "ipc", "nccl", "cpu", "gloo", "handoff"
TRANSPORTS = (AUTO, IPC, NCCL, CPU)             # what a compiled graph's hint may ask for
OBJECT_TRANSPORTS = (GLOO, NCCL, IPC, AUTO)     # what a GPU object may ask for
REDUCE_OPS = ("sum", "product", "min", "max", "avg")


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """What a receiver needs to allocate a tensor: shape, dtype and the sender's device."""

    shape: tuple[int, ...]
    dtype: "torch.dtype"
    device: str

    @classmethod
    def of(cls, tensor: "torch.Tensor") -> "TensorMeta":
        """The metadata of ``tensor``."""
        return cls(tuple(tensor.shape), tensor.dtype, str(tensor.device))

    @property
    def nbytes(self) -> int:
        """Bytes of a contiguous tensor with this shape and dtype."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count * self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class TensorPlaceholder:
    """Stands in the metadata skeleton for the tensor at ``index`` of the tensor list."""

    index: int


# Note [what split_tensors descends into]
# Lists, tuples (named tuples too), dicts and dataclass instances are walked; their tensors are
# replaced by TensorPlaceholder(i). Any other object is left as it is (and so travels, tensors and
# all, through the CPU channel's pickling). Containers without tensors are returned unchanged, not
# copied, so the skeleton of a tensor-free value is the value itself. The walks are module
# functions, not recursive closures: a closure that calls itself is a reference cycle, which
# would hold the tensor list (100 MiB received a moment ago) until the cyclic GC ran.
def split_tensors(value: Any, select: Callable[["torch.Tensor"], bool] | None = None,
                  ) -> tuple[Any, list["torch.Tensor"]]:
    """Return (skeleton with placeholders, tensors) for the selected tensors nested in ``value``."""
    torch = sys.modules.get("torch")
    if torch is None:  # no tensor can exist in a process that never imported torch
        return value, []
    tensors: list[torch.Tensor] = []
    return _split(value, torch.Tensor, select, tensors), tensors


def _split(item: Any, tensor_type: type, select: Callable[["torch.Tensor"], bool] | None,
           tensors: list["torch.Tensor"]) -> Any:
    """``item`` with its selected tensors appended to ``tensors`` and replaced by placeholders."""
    if isinstance(item, tensor_type):
        if select is not None and not select(item):
            return item
        tensors.append(item)
        return TensorPlaceholder(len(tensors) - 1)
    return _map_children(item, lambda child: _split(child, tensor_type, select, tensors))


def merge_tensors(skeleton: Any, tensors: Sequence["torch.Tensor"]) -> Any:
    """Rebuild the value that ``split_tensors`` took apart, putting ``tensors`` back in place."""
    return _merge(skeleton, tensors) if tensors else skeleton


def _merge(item: Any, tensors: Sequence["torch.Tensor"]) -> Any:
    """``item`` with its placeholders replaced by ``tensors``."""
    if isinstance(item, TensorPlaceholder):
        if item.index >= len(tensors):
            raise TensorTransportError(f"placeholder for tensor {item.index} but only "
                                       f"{len(tensors)} tensors arrived")
        return tensors[item.index]
    return _map_children(item, lambda child: _merge(child, tensors))


def _map_children(item: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to the children of a container (see Note [what split_tensors descends into])."""
    if isinstance(item, list):
        new = [fn(child) for child in item]
        return item if all(a is b for a, b in zip(new, item)) else new
    if isinstance(item, tuple):
        children = [fn(child) for child in item]
        if all(a is b for a, b in zip(children, item)):
            return item
        return type(item)(*children) if hasattr(item, "_fields") else type(item)(children)
    if isinstance(item, dict):
        mapped = {key: fn(child) for key, child in item.items()}
        if all(mapped[key] is child for key, child in item.items()):
            return item
        new = copy.copy(item)  # keeps the dict subclass (OrderedDict, defaultdict)
        new.update(mapped)
        return new
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        changed = {}
        for field in dataclasses.fields(item):
            child = getattr(item, field.name)
            new_child = fn(child)
            if new_child is not child:
                changed[field.name] = new_child
        if not changed:
            return item
        new = copy.copy(item)
        for name, child in changed.items():
            object.__setattr__(new, name, child)  # also works on frozen dataclasses
        return new
    return item


class TorchTensorType:
    """A type hint for tensors on a graph edge: fixed shape/dtype (checked at run time) and a transport.

    Mirrors Ray's ``TorchTensorType``. ``shape`` entries may be None for a free dimension;
    ``transport`` is "auto", "ipc", "nccl", "cpu", or a user ``Communicator`` to send through
    (typed ``Any`` here: communicator.py builds on this module, not the other way).
    """

    def __init__(self, shape: Sequence[int | None] | None = None, dtype: "torch.dtype | None" = None,
                 transport: "str | Any" = AUTO) -> None:
        if isinstance(transport, str) and transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of {TRANSPORTS} or a Communicator")
        self.shape = None if shape is None else tuple(shape)
        self.dtype = dtype
        self.transport = transport

    @property
    def static(self) -> bool:
        """Whether shape and dtype are fully known ahead, so metadata need not travel per value."""
        return self.shape is not None and None not in self.shape and self.dtype is not None

    def meta(self, device: str) -> TensorMeta:
        """The metadata of every tensor on this edge; only for a ``static`` hint."""
        if not self.static:
            raise ValueError(f"{self!r} does not fix both shape and dtype")
        return TensorMeta(tuple(int(dim) for dim in self.shape), self.dtype, device)

    def check(self, meta: "TensorMeta | torch.Tensor", where: str = "") -> None:
        """Raise TensorTransportError when ``meta`` (or a tensor) breaks this hint; ``where`` names the edge."""
        if not isinstance(meta, TensorMeta):
            meta = TensorMeta.of(meta)
        at = f" at {where}" if where else ""
        if self.dtype is not None and meta.dtype != self.dtype:
            raise TensorTransportError(
                f"tensor{at} has dtype {meta.dtype} but its type hint declares {self.dtype}; "
                f"convert it (tensor.to({self.dtype})) or fix the hint {self!r}")
        if self.shape is not None:
            ok = len(meta.shape) == len(self.shape) and all(
                want is None or want == got for want, got in zip(self.shape, meta.shape))
            if not ok:
                raise TensorTransportError(
                    f"tensor{at} has shape {tuple(meta.shape)} but its type hint declares "
                    f"{self.shape}; reshape it or fix the hint {self!r}")

    def __repr__(self) -> str:
        transport = self.transport if isinstance(self.transport, str) else type(self.transport).__name__
        return f"TorchTensorType(shape={self.shape}, dtype={self.dtype}, transport={transport!r})"


def check_tensors(metas: Sequence["TensorMeta | torch.Tensor"], hint: TorchTensorType | None,
                  where: str = "") -> None:
    """Check every received tensor against ``hint`` (no-op without a hint)."""
    if hint is None:
        return
    for i, meta in enumerate(metas):
        hint.check(meta, f"{where} tensor {i}" if where else f"tensor {i}")


@dataclasses.dataclass(frozen=True)
class TensorEdge:
    """How the tensors of one channel travel: a transport per reader and the group for "nccl"."""

    transports: tuple[str, ...]              # per reader: "nccl", "ipc" or "cpu"
    device: str = "cuda"                     # tensors taken out of the value: "cuda" or "cpu"
    hint: TorchTensorType | None = None
    group: Hashable = None                   # communicator registry key of the "nccl" readers
    writer_rank: int = -1
    reader_ranks: tuple[int, ...] = ()       # per reader: its rank in the group, -1 if not "nccl"
    overlap: bool = False                    # communicate on the process's CommStream
    where: str = ""                          # the node, for error messages
