"""Channels whose readers are reached by different transports: a part per transport, one writer.

Note [mixed edges]
~~~~~~~~~~~~~~~~~~
A value read on the writer's node and on other nodes travels to each reader by the transport of
that reader's node: ``ByNodeType`` gives the readers on the writer's node one channel of its
``same_node`` type and the others one of its ``cross_node`` type. When all readers agree it
makes that one channel and nothing else; otherwise a ``CompositeChannel`` over the parts, whose
reader ``i`` is simply the handle of its part, and whose writer waits until every part has room
before it writes to any (``wait_writable``), so that a timeout changes nothing anywhere and the
readers see the same values in the same order. Each part serializes the value on its own (a
bare array costs nothing to frame; a pickled object is pickled once per part).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ember.channels.interface import (DEFAULT_NUM_SLOTS, Channel, ChannelReader, ChannelType,
                                      ChannelWriter)


class ByNodeType(ChannelType):
    """Per reader, ``same_node`` if it runs on ``writer_node``, else ``cross_node`` (Note
    [mixed edges])."""

    def __init__(self, writer_node: str, reader_nodes: Sequence[str], same_node: ChannelType,
                 cross_node: ChannelType) -> None:
        self.writer_node = writer_node
        self.reader_nodes = tuple(reader_nodes)
        self.same_node = same_node
        self.cross_node = cross_node

    def create_channel(self, num_readers: int = 1, *,
                       num_slots: int = DEFAULT_NUM_SLOTS) -> Channel:
        """One channel of the readers' common type, else a CompositeChannel of both."""
        if num_readers != len(self.reader_nodes):
            raise ValueError(f"{num_readers} readers for a type that places "
                             f"{len(self.reader_nodes)}")
        local = [i for i, node in enumerate(self.reader_nodes) if node == self.writer_node]
        far = [i for i, node in enumerate(self.reader_nodes) if node != self.writer_node]
        if not far or not local:
            kind = self.same_node if not far else self.cross_node
            return kind.create_channel(num_readers, num_slots=num_slots)
        parts = [(self.same_node.create_channel(len(local), num_slots=num_slots), local),
                 (self.cross_node.create_channel(len(far), num_slots=num_slots), far)]
        return CompositeChannel(parts)

    def __repr__(self) -> str:
        return (f"ByNodeType({self.writer_node!r} -> {list(self.reader_nodes)}, "
                f"{self.same_node!r} / {self.cross_node!r})")


class CompositeChannel(Channel):
    """Readers split over parts, each a channel of its own transport; pickles with its parts."""

    def __init__(self, parts: Sequence[tuple[Channel, Sequence[int]]]) -> None:
        self.parts = [channel for channel, _ in parts]
        self.num_readers = sum(len(readers) for _, readers in parts)
        self.num_slots = self.parts[0].num_slots
        self.routes: list[tuple[int, int]] = [(0, 0)] * self.num_readers  # reader -> (part, index)
        for p, (_, readers) in enumerate(parts):
            for sub, reader in enumerate(readers):
                self.routes[reader] = (p, sub)

    def writer(self) -> "CompositeWriter":
        """The writer of every part."""
        return CompositeWriter([part.writer() for part in self.parts])

    def reader(self, index: int = 0) -> ChannelReader:
        """Reader ``index``: the handle of its part."""
        self.check_reader_index(index)
        part, sub = self.routes[index]
        return self.parts[part].reader(sub)

    def rendezvous_readers(self) -> tuple[int, ...]:
        """The readers whose parts need them prepared in their processes."""
        return tuple(i for i, (part, sub) in enumerate(self.routes)
                     if sub in self.parts[part].rendezvous_readers())

    def prepare_reader(self, index: int) -> Any:
        part, sub = self.routes[index]
        return self.parts[part].prepare_reader(sub)

    def set_reader_address(self, index: int, address: Any) -> None:
        part, sub = self.routes[index]
        self.parts[part].set_reader_address(sub, address)

    def close(self) -> None:
        """Close every part."""
        for part in self.parts:
            part.close()

    def destroy(self) -> None:
        """Destroy every part."""
        for part in self.parts:
            part.destroy()

    def __repr__(self) -> str:
        return f"CompositeChannel({', '.join(map(repr, self.parts))})"


class CompositeWriter(ChannelWriter):
    """Writes each value to every part, once all of them have room (Note [mixed edges])."""

    __slots__ = ("writers",)

    def __init__(self, writers: list[ChannelWriter]) -> None:
        self.writers = writers

    def attach(self) -> None:
        for writer in self.writers:
            writer.attach()

    def wait_writable(self, timeout: float | None = None) -> None:
        """Wait until every part has a free slot; the deadline covers them all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for writer in self.writers:
            writer.wait_writable(None if deadline is None
                                 else max(0.0, deadline - time.monotonic()))

    def write(self, value: Any, timeout: float | None = None) -> None:
        """Send ``value`` to the readers of every part."""
        self.wait_writable(timeout)
        for writer in self.writers:
            writer.write(value, None)   # each has room: none of them waits

    def close(self) -> None:
        """Close every part."""
        for writer in self.writers:
            writer.close()
