"""What travels to a worker for one call: arguments split into a pickled body and resolved refs.

Top-level ObjectRef arguments are resolved by the caller before dispatch (Ray's semantics: the
task sees values), so a worker rarely has to ask anyone for them: a small value travels inline,
a large one is named by its segment. Refs nested in containers travel as refs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ember.dynamic.core import value_transport
from ember.dynamic.core.core_worker import FAILED, IN_SHM, INLINE, INLINE_MAX, CoreWorker
from ember.dynamic.core.object_ref import ObjectRef
from ember._system.serialization import deserialize, serialize

_HOLE = "__ember_ref_arg__"


@dataclass
class PendingCall:
    """A submitted call whose results are not yet known to its owner."""

    task_id: str
    kind: str
    target: str
    body: tuple
    arg_refs: list[tuple[Any, ObjectRef]]
    return_ids: list[str]
    retries_left: int = 0
    retry_exceptions: Any = False
    pinned: list[str] = field(default_factory=list)
    address: str | None = None
    gpu_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    ready: bool = False
    pool_key: tuple = ()

    def deps(self) -> list[ObjectRef]:
        """The owned refs this call must wait for before dispatch."""
        return [ref for _, ref in self.arg_refs]


def encode_args(core: CoreWorker, args: tuple, kwargs: dict, what: str
                ) -> tuple[tuple, list[tuple[Any, ObjectRef]], list[str]]:
    """Split arguments into a body (inline or in shm), top-level refs, and the ids pinned."""
    arg_refs: list[tuple[Any, ObjectRef]] = []
    if any(isinstance(a, ObjectRef) for a in args):
        plain = []
        for i, a in enumerate(args):
            if isinstance(a, ObjectRef):
                arg_refs.append((i, a))
                plain.append(_HOLE)
            else:
                plain.append(a)
        args = tuple(plain)
    if kwargs and any(isinstance(v, ObjectRef) for v in kwargs.values()):
        plain_kw = {}
        for k, v in kwargs.items():
            if isinstance(v, ObjectRef):
                arg_refs.append((k, v))
                plain_kw[k] = _HOLE
            else:
                plain_kw[k] = v
        kwargs = plain_kw
    ser = serialize((args, kwargs), f"the arguments of {what}")
    pinned = [ref.id for _, ref in arg_refs if ref.owner == core.address]
    for oid in pinned:
        core.pin(oid)
    if ser.frame_size <= INLINE_MAX:
        return ("i", ser.to_bytes()), arg_refs, pinned
    body_id = core.new_id()
    core.store_serialized(body_id, ser)
    return ("s", (body_id, core.node)), arg_refs, pinned


def release_args(core: CoreWorker, call: "PendingCall") -> None:
    """Unpin a finished call's argument objects and free its argument segment."""
    for oid in call.pinned:
        core.unpin(oid)
    call.pinned = []
    if call.body[0] == "s":
        body_id, node = call.body[1]
        core.free_segments([body_id], node)


def resolve_refs(core: CoreWorker, arg_refs: list[tuple[Any, ObjectRef]]
                 ) -> tuple[list[tuple[Any, str, Any]], BaseException | None]:
    """Turn ready top-level refs into (key, kind, payload); return the first error among them."""
    resolved = []
    for key, ref in arg_refs:
        entry = core.objects.get(ref.id)
        if entry is not None and entry.owned and entry.state == INLINE:
            resolved.append((key, "i", entry.payload))
        elif entry is not None and entry.owned and entry.state == IN_SHM:
            resolved.append((key, "s", (ref.id, entry.payload[1])))
        elif entry is not None and entry.owned and entry.state == FAILED:
            return [], entry.payload
        else:
            resolved.append((key, "r", ref))
    return resolved, None


def decode_args(core: CoreWorker, body: tuple, resolved: list) -> tuple[tuple, dict]:
    """Rebuild ``(args, kwargs)`` inside the worker."""
    kind, payload = body
    if kind == "i":
        args, kwargs = deserialize(payload, "the task's arguments")
    else:
        args, kwargs = core.read_object(*payload)
    if resolved:
        args = list(args)
        for key, rkind, rpayload in resolved:
            if rkind == "i":
                value = value_transport.resolve(deserialize(rpayload, "an argument"))
            elif rkind == "s":
                value = value_transport.resolve(core.read_object(*rpayload))
            else:
                value = core.get_one(rpayload, None)
            if isinstance(key, int):
                args[key] = value
            else:
                kwargs[key] = value
    return tuple(args), kwargs
