"""The driver's side of a compiled graph's outputs: read in execution order into a buffer, each
handed out once, whatever order the refs are fetched in (Notes [fast fail], [capacity] and
[dead actors] in compiled_dag.py)."""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from typing import Any

from ember.engine.executor import RaisedError
from ember.engine.graph_health import GraphHealth
from ember.engine.options import CompileOptions
from ember.engine.refs import unwrap
from ember.exceptions import (CapacityExceededError, ChannelBrokenError, ChannelClosedError,
                              ChannelTimeoutError, DAGTeardownError, EmberError,
                              ResultTimeoutError)

SLICE_S = 0.25           # how often a waiting driver checks the actors' processes
_FAILED_FAST = object()  # what a read gives when another output failed (Note [fast fail])


class ResultBuffer:
    """Reads the outputs of each execution, in order, and keeps them until their refs take
    them; ``read_lock`` is held by whoever reads, ``next_read`` is the oldest unread."""

    def __init__(self, options: CompileOptions, health: GraphHealth, outputs: list[int],
                 readers: list[tuple[int, Any]]) -> None:
        self._options = options
        self._health = health
        self._outputs = outputs                  # the graph's output nodes, in output order
        self._readers = readers                  # (node, reader) of each output channel
        self.read_lock = threading.Lock()
        self._lock = threading.Lock()            # guards _results (never held while waiting)
        self.next_read = 0
        self._results: dict[int, list] = {}      # seq -> (ok, value) per output, None: taken
        self._partial: dict[int, Any] = {}       # output node -> value, of the execution read
        self.dropped: deque[tuple[int, int]] = deque()   # (seq, output) of refs dropped
        self._dropped_unread: set[tuple[int, int]] = set()
        self._failed_fast = -1                   # execution failed fast, still being read

    def __len__(self) -> int:
        """How many executions have results waiting here."""
        return len(self._results)

    def get(self, seq: int, index: int, timeout: float | None) -> Any:
        """Return output ``index`` of execution ``seq`` (for ``CompiledDAGRef.get``)."""
        if seq not in self._results:
            self._wait_for(seq, timeout)
        return unwrap(self._take(seq, index))

    def _wait_for(self, seq: int, timeout: float | None) -> None:
        """Read results (in execution order) until execution ``seq``'s is in the buffer."""
        if timeout is None:
            timeout = self._options.get_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while seq not in self._results:
            if seq < self.next_read:
                raise EmberError(f"the result of execution {seq} was already handed out")
            self._check_pending(seq)
            if not self.read_lock.acquire(timeout=remaining(deadline, -1)):
                raise _get_timeout_error(seq, timeout)
            try:
                while seq not in self._results and seq >= self.next_read:
                    self._check_pending(seq)
                    self.read_next(deadline, timeout, submitting=False, waiting_for=seq)
            finally:
                self.read_lock.release()

    def _check_pending(self, seq: int) -> None:
        if seq not in self._results:
            self._health.check_pending(seq)

    def _take(self, seq: int, index: int, missing_ok: bool = False) -> tuple[bool, Any] | None:
        """Hand out output ``index`` of a buffered execution; forget the execution once every
        output was handed out (or its ref dropped)."""
        with self._lock:
            parts = self._results.get(seq)
            part = parts[index] if parts is not None else None
            if part is None:
                if missing_ok:
                    return None
                raise EmberError(f"output {index} of execution {seq} was already handed out")
            parts[index] = None
            if not any(parts):
                del self._results[seq]
        return part

    def read_next(self, deadline: float | None, timeout: float | None, submitting: bool,
                  waiting_for: int = -1) -> None:
        """Read the outputs of the oldest unread execution into the buffer (under the read
        lock). A timeout keeps what was read, so the next call goes on from there."""
        seq = self.next_read
        limit = self._options.max_buffered_results
        if limit is not None and len(self._results) >= limit and seq != self._failed_fast:
            raise CapacityExceededError(
                f"The compiled graph can't have more than {limit} buffered results, and you "
                f"currently have {len(self._results)} buffered results. Call `ray.get()` on "
                "CompiledDAGRef's (or await on CompiledDAGFuture's) to retrieve results, or "
                "increase `_max_buffered_results` if buffering is desired, note that this "
                "will increase driver memory usage.")
        for node, reader in self._readers:
            if node in self._partial:
                continue
            value = self._read_output(reader, deadline, timeout, submitting, waiting_for)
            if value is _FAILED_FAST:
                return
            self._partial[node] = value
            if type(value) is RaisedError and self._fail_fast(seq, value):
                return
        parts: list[tuple[bool, Any] | None] = []
        for node in self._outputs:
            value = self._partial[node]
            parts.append((False, value.exc) if type(value) is RaisedError else (True, value))
        self._partial.clear()
        if seq == self._failed_fast:     # its result is the error, handed out already
            self._failed_fast = -1
        else:
            self._results[seq] = parts   # before next_read moves: see _wait_for
        self.next_read = seq + 1
        while self.dropped:  # refs dropped without get: their outputs are not kept
            dropped, index = self.dropped.popleft()
            if dropped >= self.next_read:
                self._dropped_unread.add((dropped, index))
            else:
                self._take(dropped, index, missing_ok=True)
        if self._dropped_unread:
            for index in range(len(parts)):
                if (seq, index) in self._dropped_unread:
                    self._dropped_unread.discard((seq, index))
                    self._take(seq, index, missing_ok=True)

    def _fail_fast(self, seq: int, error: RaisedError) -> bool:
        """Make ``error`` the result of every output of execution ``seq`` while some of its
        outputs are unread; return whether it did (Note [fast fail])."""
        if seq == self._failed_fast or len(self._partial) == len(self._readers):
            return False
        self._failed_fast = seq
        with self._lock:
            self._results[seq] = [(False, copy.copy(error.exc)) for _ in self._outputs]
        return True

    def _poll_outputs(self, reading: Any) -> bool:
        """Read the outputs of the current execution that are already there (all but the
        one being waited for); return whether one of them failed fast."""
        for node, reader in self._readers:
            if reader is reading or node in self._partial:
                continue
            try:
                value = reader.read_nowait()
            except ChannelTimeoutError:
                continue
            except (ChannelClosedError, ChannelBrokenError):
                return False     # the read waited for sees it too, and reports it
            self._partial[node] = value
            if type(value) is RaisedError and self._fail_fast(self.next_read, value):
                return True
        return False

    def _read_output(self, reader: Any, deadline: float | None, timeout: float | None,
                     submitting: bool, waiting_for: int) -> Any:
        poll = len(self._readers) > 1 and self.next_read != self._failed_fast
        health = self._health
        while True:
            left = remaining(deadline, None)
            wait = SLICE_S if left is None else min(SLICE_S, left)
            try:
                value = reader.read(wait)
            except ChannelTimeoutError:
                if poll and self._poll_outputs(reader):
                    return _FAILED_FAST
                health.check_actors()
                if left is not None and left <= SLICE_S:
                    if submitting:
                        raise submit_timeout_error(self._options, timeout) from None
                    raise _get_timeout_error(waiting_for, timeout) from None
                continue
            except ChannelClosedError:
                if health.torn_down:
                    raise DAGTeardownError("Channel closed: the compiled graph was torn down "
                                           "while a result was awaited") from None
                raise health.loop_ended() from None
            except ChannelBrokenError as exc:
                raise health.broken_channel(exc) from None
            return value   # zero-copy arrays stay valid while they live (Note [zero-copy lifetime])


def submit_timeout_error(options: CompileOptions, timeout: float | None) -> ChannelTimeoutError:
    """The error of an ``execute`` that found no room within ``submit_timeout``."""
    return ChannelTimeoutError(
        f"execute waited {timeout} s for room: max_inflight_executions="
        f"{options.max_inflight_executions} executions are pending and the oldest has not "
        f"finished; get results sooner, or compile with a larger submit_timeout or "
        f"max_inflight_executions")


def _get_timeout_error(seq: int, timeout: float | None) -> ResultTimeoutError:
    return ResultTimeoutError(
        f"execution {seq} of the compiled graph did not finish within {timeout} s; it is "
        f"still running: call get again, or pass a longer timeout")


def remaining(deadline: float | None, none_value: Any) -> Any:
    """Seconds left to ``deadline`` (at least 0), or ``none_value`` without one."""
    if deadline is None:
        return none_value
    return max(0.0, deadline - time.monotonic())
