"""What ``execute`` returns: ``CompiledDAGRef`` (``ref.get()``, ``ember.get(ref)``, or
``await ref``) and the ``CompiledDAGFuture`` that ``await cdag.execute_async(x)`` gives.

Note [two awaits]
~~~~~~~~~~~~~~~~~
As in Ray, ``fut = await cdag.execute_async(x)`` submits (waiting, off the event loop, for room
under back-pressure) and gives a future, one per output for a MultiOutputNode; ``await fut``
gives the value. ``await cdag.execute(x)`` is ember's one-await shortcut: a ref is awaitable.
Either way the blocking read runs on the graph's thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Any, Protocol

from ember.exceptions import CapacityExceededError, ChannelError, EmberError


class CompiledDAG(Protocol):
    """What a ref needs of the compiled graph that made it (``compiled_dag.CompiledDAG``,
    which builds on this module, not the other way)."""

    _buffer: Any          # its ResultBuffer (results.py)
    _returns_list: bool   # a MultiOutputNode: one ref per output

    def get_id(self) -> str: ...

    def _async_pool(self) -> Executor: ...


class CompiledDAGRef:
    """One output of one execution of a compiled graph; ``get()`` or ``ember.get(ref)``."""

    __slots__ = ("_dag", "_seq", "_index", "_value", "_done", "__weakref__")

    def __init__(self, dag: CompiledDAG, seq: int, index: int = 0) -> None:
        self._dag = dag
        self._seq = seq
        self._index = index
        self._done = False
        self._value: tuple[bool, Any] | None = None

    def get(self, timeout: float | None = None) -> Any:
        """Wait for the result and return it, or raise the method's error (a TaskError that is
        also the original class), ResultTimeoutError (Note [timeouts] in ember/exceptions.py),
        ActorDiedError, DAGTeardownError, or RayCgraphCapacityExceeded (only with
        ``max_buffered_results``)."""
        if not self._done:
            try:
                value = (True, self._dag._buffer.get(self._seq, self._index, timeout))
            except (ChannelError, CapacityExceededError):
                raise           # not the execution's outcome: it may still come, or never
            except EmberError as exc:   # the execution's own error, or ActorDiedError
                value = (False, exc)
            self._value, self._done = value, True
        return unwrap(self._value)

    def __ember_get__(self, timeout: float | None = None) -> Any:
        return self.get(timeout)

    def __await__(self):
        return _await_get(self._dag, self.get)

    def __del__(self) -> None:
        if not self._done:
            try:
                self._dag._buffer.dropped.append((self._seq, self._index))
            except Exception:  # noqa: BLE001
                pass

    def __repr__(self) -> str:
        channel = self._index if self._dag._returns_list else None
        return (f"CompiledDAGRef({self._dag.get_id()}, execution_index={self._seq}, "
                f"channel_index={channel})")


class CompiledDAGRefList(list):
    """The refs of a MultiOutputNode's outputs, one per output (as Ray returns them);
    ``get()`` returns every value, raising the first error."""

    def get(self, timeout: float | None = None) -> list:
        deadline = None if timeout is None else time.monotonic() + timeout
        return [ref.get(None if deadline is None else max(0.0, deadline - time.monotonic()))
                for ref in self]

    def __ember_get__(self, timeout: float | None = None) -> list:
        return self.get(timeout)

    def __await__(self):
        return _await_get(self[0]._dag, self.get)


class CompiledDAGFuture:
    """One output of one execution, from ``await cdag.execute_async(x)``; ``await future``
    gives the value (Note [two awaits])."""

    __slots__ = ("_ref",)

    def __init__(self, ref: CompiledDAGRef) -> None:
        self._ref = ref

    def __await__(self):
        return self._ref.__await__()

    def get(self, timeout: float | None = None) -> Any:
        return self._ref.get(timeout)

    def __ember_get__(self, timeout: float | None = None) -> Any:
        return self._ref.get(timeout)

    def __repr__(self) -> str:
        return f"CompiledDAGFuture({self._ref!r})"


def _await_get(dag: "CompiledDAG", get: Any):
    """Await ``get()`` run on the graph's thread pool."""
    return asyncio.get_running_loop().run_in_executor(dag._async_pool(), get).__await__()


def unwrap(result: tuple[bool, Any]) -> Any:
    ok, value = result
    if ok:
        return value
    raise value
