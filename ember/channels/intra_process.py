"""A channel whose writer and readers live in one process: a bounded buffer under a Condition.

Values are handed over as they are, without a copy (like Ray's intra-process channel), so a
reader must not mutate a value that other readers also get.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections import deque
from typing import Any, Callable

from ember.channels import spin
from ember.channels.interface import (DEFAULT_NUM_SLOTS, Channel, ChannelReader, ChannelType,
                                      ChannelWriter)
from ember.exceptions import ChannelClosedError, ChannelTimeoutError


class _State:
    """What every handle of one channel shares: the buffered values and each reader's position."""

    def __init__(self, num_readers: int, num_slots: int) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.values: deque[Any] = deque()
        self.first_seq = 0                      # sequence number of values[0]
        self.write_seq = 0                      # values written so far
        self.read_seqs = [0] * num_readers      # values each reader has taken
        self.num_slots = num_slots
        self.closed = False


# Note [intra-process channel identity]: a channel travels (pickled inside a schedule) as its key;
# every copy unpickled in one process finds the same state here, so its writer and readers meet.
_STATES: "weakref.WeakValueDictionary[str, _State]" = weakref.WeakValueDictionary()
_STATES_LOCK = threading.Lock()


class IntraProcessChannel(Channel):
    """A channel for a writer and readers in the same process (threads or one loop)."""

    def __init__(self, num_readers: int = 1, num_slots: int = DEFAULT_NUM_SLOTS,
                 key: str | None = None) -> None:
        if num_readers < 1 or num_slots < 1:
            raise ValueError(f"a channel needs num_readers >= 1 and num_slots >= 1, got "
                             f"num_readers={num_readers}, num_slots={num_slots}")
        self.num_readers = num_readers
        self.num_slots = num_slots
        self.key = key or uuid.uuid4().hex
        with _STATES_LOCK:
            state = _STATES.get(self.key)
            if state is None:
                state = _State(num_readers, num_slots)
                _STATES[self.key] = state
        self._state = state

    def __reduce__(self) -> tuple:
        return (IntraProcessChannel, (self.num_readers, self.num_slots, self.key))

    def __repr__(self) -> str:
        return (f"IntraProcessChannel(key={self.key!r}, num_readers={self.num_readers}, "
                f"num_slots={self.num_slots})")

    def writer(self) -> "IntraProcessWriter":
        """Return the writer handle."""
        return IntraProcessWriter(self)

    def reader(self, index: int = 0) -> "IntraProcessReader":
        """Return the handle of reader ``index``."""
        self.check_reader_index(index)
        return IntraProcessReader(self, index)

    def close(self) -> None:
        """Close the channel and wake every blocked handle (see Note [channel close])."""
        state = self._state
        with state.cond:
            state.closed = True
            state.cond.notify_all()

    def destroy(self) -> None:
        """Close the channel, drop the values not read yet and forget its state in this process."""
        self.close()
        state = self._state
        with state.cond:
            state.values.clear()
            state.first_seq = state.write_seq
            state.read_seqs[:] = [state.write_seq] * len(state.read_seqs)
        with _STATES_LOCK:
            if _STATES.get(self.key) is self._state:
                del _STATES[self.key]

    def _wait(self, ready: Callable[[], bool], timeout: float | None, what: str,
              drain: bool = False) -> None:
        """Wait under the lock until ``ready()``; raise on close (unless ``drain`` and ready:
        a reader still gets the values written before the close) or timeout."""
        state = self._state
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if state.closed and not (drain and ready()):
                raise ChannelClosedError(f"{self!r} is closed; {what} is not possible")
            if ready():
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ChannelTimeoutError(
                    f"{what} on {self!r} timed out after {timeout} s; retry, or give a longer "
                    f"timeout")
            spin.pay_debts()   # Note [deferred acks] in spin.py
            state.cond.wait(remaining)


class IntraProcessWriter(ChannelWriter):
    """The writing end of an IntraProcessChannel."""

    def __init__(self, channel: IntraProcessChannel) -> None:
        self.channel = channel

    def write(self, value: Any, timeout: float | None = None) -> None:
        """Append ``value`` for every reader, waiting while ``num_slots`` values are in flight."""
        state = self.channel._state
        with state.cond:
            self.channel._wait(
                lambda: state.write_seq - min(state.read_seqs) < state.num_slots,
                timeout, "write")
            state.values.append(value)
            state.write_seq += 1
            state.cond.notify_all()

    def close(self) -> None:
        """Close the whole channel."""
        self.channel.close()


class IntraProcessReader(ChannelReader):
    """One reading end of an IntraProcessChannel."""

    def __init__(self, channel: IntraProcessChannel, index: int) -> None:
        self.channel = channel
        self.index = index

    def read(self, timeout: float | None = None) -> Any:
        """Return the next value, waiting for one."""
        state = self.channel._state
        index = self.index
        with state.cond:
            self.channel._wait(lambda: state.write_seq > state.read_seqs[index], timeout, "read",
                               drain=True)
            seq = state.read_seqs[index]
            value = state.values[seq - state.first_seq]
            state.read_seqs[index] = seq + 1
            if min(state.read_seqs) > state.first_seq:  # every reader took the oldest value
                state.values.popleft()
                state.first_seq += 1
                state.cond.notify_all()
            return value

    def close(self) -> None:
        """Close the whole channel."""
        self.channel.close()


class IntraProcessType(ChannelType):
    """The transport for an edge whose two ends live in the same process."""

    def create_channel(self, num_readers: int = 1, *,
                       num_slots: int = DEFAULT_NUM_SLOTS) -> IntraProcessChannel:
        """Create an IntraProcessChannel."""
        return IntraProcessChannel(num_readers, num_slots)

    def __repr__(self) -> str:
        return "IntraProcessType()"
