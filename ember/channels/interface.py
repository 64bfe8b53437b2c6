"""The interface every channel transport implements, and the type objects that create channels.

A channel has one writer and ``num_readers`` readers; every reader sees every value, in order.
At most ``num_slots`` values are in flight: written and not yet read by every reader. A full
channel blocks its writer (back-pressure), an empty one blocks its readers.

Note [channel timeouts]
~~~~~~~~~~~~~~~~~~~~~~~
Channels follow Note [timeouts] in ember/exceptions.py. Every blocking call takes ``timeout``:
seconds as a float; ``None`` waits without limit (a channel still notices a dead peer and a
close while it waits); ``0`` tries once.
A call that runs out of time raises ``ChannelTimeoutError``, which is also a ``TimeoutError``,
and changes nothing: the same call can be retried. ``*_nowait`` is the call with ``timeout=0``.

Note [channel close]
~~~~~~~~~~~~~~~~~~~~
``close()`` ends the channel for every handle in every process: it is idempotent, never blocks,
and wakes every blocked reader and writer with ``ChannelClosedError``; later writes raise the
same. A value written before the close is never lost to it: readers still get every such value,
then ``ChannelClosedError`` (as a Go channel drains). So a result that was complete when a peer
died and the graph closed its channels is still delivered. ``destroy()`` (by the channel's
creator) closes it and frees its memory; what was not read by then is gone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

DEFAULT_NUM_SLOTS = 8


class ChannelWriter(ABC):
    """The writing end of a channel."""

    __slots__ = ()

    @abstractmethod
    def write(self, value: Any, timeout: float | None = None) -> None:
        """Send ``value`` to every reader, waiting for a free slot (see Note [channel timeouts])."""

    def write_nowait(self, value: Any) -> None:
        """Send ``value`` if a slot is free now, else raise ChannelTimeoutError."""
        self.write(value, timeout=0)

    def wait_writable(self, timeout: float | None = None) -> None:
        """Wait until the next write finds a free slot for every reader (Note [channel
        timeouts]); that write then does not wait. A composite channel waits on all its parts
        before it writes to any, so that a timeout leaves every part as it was."""
        raise NotImplementedError(f"{type(self).__name__} cannot wait for room apart from a write")

    def attach(self) -> None:
        """Register this process as the writer now, not at the first write (so peers watch it)."""

    @abstractmethod
    def close(self) -> None:
        """Close the whole channel (see Note [channel close])."""


class ChannelReader(ABC):
    """One reading end of a channel; it sees every value written, in order."""

    __slots__ = ()

    @abstractmethod
    def read(self, timeout: float | None = None) -> Any:
        """Return the next value, waiting for one (see Note [channel timeouts])."""

    def read_nowait(self) -> Any:
        """Return the next value if one is there, else raise ChannelTimeoutError."""
        return self.read(timeout=0)

    def attach(self) -> None:
        """Register this process as the reader now, not at the first read (so peers watch it)."""

    def release(self) -> None:
        """Give back what the value last read still holds (a GPU slot); the views of that value
        may change after this. Values of host channels own their memory: nothing to do."""

    @abstractmethod
    def close(self) -> None:
        """Close the whole channel (see Note [channel close])."""


class Channel(ABC):
    """The shared state of a channel, from which the writer and reader handles are made."""

    num_readers: int
    num_slots: int

    @abstractmethod
    def writer(self) -> ChannelWriter:
        """Return the writer handle (use it from one process and thread at a time)."""

    @abstractmethod
    def reader(self, index: int = 0) -> ChannelReader:
        """Return the handle of reader ``index`` (0 <= index < num_readers)."""

    @abstractmethod
    def close(self) -> None:
        """Close the channel for every handle (see Note [channel close])."""

    def rendezvous_readers(self) -> tuple[int, ...]:
        """The readers that must be prepared in their own processes (``prepare_reader``) and
        their addresses given to the creator (``set_reader_address``) before the writer
        attaches: none for a node-local channel (Note [tcp channel rendezvous] in tcp.py)."""
        return ()

    def prepare_reader(self, index: int) -> Any:
        """Set reader ``index`` up in this process, its reader's, and return its address."""
        raise NotImplementedError(f"{type(self).__name__} needs no rendezvous")

    def set_reader_address(self, index: int, address: Any) -> None:
        """Record in the creator's object where reader ``index`` was prepared; copies pickled
        afterwards carry it to the writer."""
        raise NotImplementedError(f"{type(self).__name__} needs no rendezvous")

    def check_reader_index(self, index: int) -> None:
        """Raise ValueError unless ``index`` names one of this channel's readers."""
        if not 0 <= index < self.num_readers:
            raise ValueError(f"reader index {index} is out of range of {self.num_readers}")

    @abstractmethod
    def destroy(self) -> None:
        """Close the channel and free its memory; called once, by its creator."""

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()


class ChannelType(ABC):
    """A transport: the compiler picks one per edge and never branches on it afterwards."""

    @abstractmethod
    def create_channel(self, num_readers: int = 1, *,
                       num_slots: int = DEFAULT_NUM_SLOTS) -> Channel:
        """Create a channel with one writer, ``num_readers`` readers and ``num_slots`` slots."""
