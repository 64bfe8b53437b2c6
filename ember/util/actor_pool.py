"""ActorPool: spread calls over a fixed set of actors, as Ray's ``ray.util.ActorPool`` does."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Iterator

from ember.dynamic.api import driver
from ember.dynamic.core.object_ref import ObjectRef
from ember.exceptions import GetTimeoutError


class ActorPool:
    """Runs ``fn(actor, value)`` on whichever actor of the pool is idle.

    Each submitted value waits until an actor is free; results come back in submission order
    (``get_next``) or as they finish (``get_next_unordered``).
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: list[Any] = list(actors)
        self._busy: dict[ObjectRef, tuple[int, Any]] = {}  # ref -> (submission index, actor)
        self._by_index: dict[int, ObjectRef] = {}
        self._queued: deque[tuple[Callable, Any]] = deque()
        self._next_submit = 0
        self._next_return = 0

    def map(self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` to every value; yield the results in the order of ``values``."""
        self._drain()
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Callable[[Any, Any], ObjectRef],
                      values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` to every value; yield the results as they finish."""
        self._drain()
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next_unordered()

    def submit(self, fn: Callable[[Any, Any], ObjectRef], value: Any) -> None:
        """Start ``fn(actor, value)`` on an idle actor, or queue it until one is free."""
        if not self._idle:
            self._queued.append((fn, value))
            return
        actor = self._idle.pop()
        ref = fn(actor, value)
        self._busy[ref] = (self._next_submit, actor)
        self._by_index[self._next_submit] = ref
        self._next_submit += 1

    def has_next(self) -> bool:
        """Whether a submitted value's result is still to be returned."""
        return bool(self._busy) or bool(self._queued)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order; TimeoutError when it is not ready in time.

        With ``ignore_if_timedout`` a timeout is not raised and the call waits on (Ray's rule).
        """
        if not self.has_next():
            raise StopIteration("no more results to get")
        ref = self._by_index.get(self._next_return)
        if ref is None:
            raise ValueError("get_next cannot follow get_next_unordered; use one of the two")
        if (timeout is not None and not driver.wait([ref], timeout=timeout)[0]
                and not ignore_if_timedout):
            raise TimeoutError(f"timed out after {timeout} s waiting for result "
                               f"{self._next_return}")
        self._next_return += 1
        self._forget(ref)
        return driver.get(ref)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Whichever result finishes first; TimeoutError when none does in time."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ready, _ = driver.wait(list(self._busy), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError(f"timed out after {timeout} s waiting for a result")
        self._forget(ready[0])
        return driver.get(ready[0])

    def has_free(self) -> bool:
        """Whether an actor is idle and nothing waits for one."""
        return bool(self._idle) and not self._queued

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool (None when none is idle)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it may start a queued value at once)."""
        busy = {a for _, a in self._busy.values()}
        if actor in self._idle or actor in busy:
            raise ValueError("the actor is already in the pool")
        self._became_idle(actor)

    def _forget(self, ref: ObjectRef) -> None:
        index, actor = self._busy.pop(ref)
        del self._by_index[index]
        self._became_idle(actor)

    def _became_idle(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._queued:
            self.submit(*self._queued.popleft())

    def _drain(self) -> None:
        """Collect what earlier submissions left, so a new map starts clean."""
        while self.has_next():
            try:
                self.get_next_unordered(timeout=0)
            except (TimeoutError, GetTimeoutError):
                self.get_next_unordered()
