"""ObjectRef: a handle to a value that a task or ``put`` produces, counted for garbage collection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ember.dynamic.core.process_runtime import current_core

if TYPE_CHECKING:
    import asyncio


class ObjectRef:
    """A future value, owned by the process that created it (Note [ownership] in core_worker)."""

    __slots__ = ("id", "owner", "_core", "__weakref__")

    def __init__(self, object_id: str, owner: str, core: Any) -> None:
        self.id = object_id
        self.owner = owner
        self._core = core
        core.add_local_ref(object_id, owner)

    def __del__(self) -> None:
        core = self._core
        if core is not None:
            core.remove_local_ref(self.id)

    def __reduce__(self):
        self._core.note_serialized(self)
        return (_rebuild, (self.id, self.owner))

    def hex(self) -> str:
        """The object id as text."""
        return self.id

    def binary(self) -> bytes:
        """The object id as bytes (Ray's ``ObjectRef.binary``)."""
        return self.id.encode()

    def task_id(self) -> "TaskID":
        """The id of the task that makes this object (for ``put``, the id of the put itself).

        A task's return ids are ``<task id>.<index>`` (submitter.py), so the task id is their
        prefix; it equals ``get_runtime_context().get_task_id()`` inside that task.
        """
        return TaskID(self.id.rsplit(".", 1)[0])

    def __repr__(self) -> str:
        return f"ObjectRef({self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def future(self) -> "asyncio.Future":
        """An asyncio future of the value, for the running event loop."""
        import asyncio
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def resolve() -> None:
            try:
                value = self._core.get_one(self, 0)
            except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting task
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, fut, value, None)

        self._core.when_ready(self, resolve)
        return fut

    def __await__(self):
        return self.future().__await__()


class ID:
    """An id in Ray's form (``TaskID``, ``JobID``, ...): ``hex()``, ``binary()``, ``is_nil()``."""

    __slots__ = ("_id",)

    def __init__(self, hex_id: str) -> None:
        self._id = hex_id

    def hex(self) -> str:
        """The id as text."""
        return self._id

    def binary(self) -> bytes:
        """The id as bytes."""
        return self._id.encode()

    def is_nil(self) -> bool:
        """Whether this is the empty id (never, for a real task)."""
        return not self._id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ID) and type(other) is type(self) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)


class TaskID(ID):
    """A task's id, as ``ObjectRef.task_id()`` returns it."""


def _settle(fut: "asyncio.Future", value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _rebuild(object_id: str, owner: str) -> ObjectRef:
    core = current_core()
    ref = ObjectRef(object_id, owner, core)
    core.note_deserialized(ref)
    return ref
