"""A channel between processes on one node: a ring of slots in shared memory, waited on by futex.

The header's layout and each process's map of it are in ``shm_layout``; this module is the
protocol: the channel object, waiting, and the writer and reader ends.
"""

from __future__ import annotations

import os
import time
import uuid
import weakref
from typing import Any, Callable

import numpy

from ember.channels import futex, spin
from ember.channels.interface import (DEFAULT_NUM_SLOTS, Channel, ChannelReader, ChannelType,
                                      ChannelWriter)
from ember.channels.shm_layout import (PAGE, Control, Line, Mapping, SlotRecord, buffer_path,
                                       header_size, init_header, round_up)
from ember._system.process import start_time
from ember._system.serialization import deserialize, serialize
from ember._system.shm import Segment, segment_path, unlink
from ember.exceptions import (ChannelBrokenError, ChannelClosedError, ChannelTimeoutError,
                              ChannelValueTooLargeError)

DEFAULT_SLOT_CAPACITY = 64 * 1024

# Note [channel waiting]
# ~~~~~~~~~~~~~~~~~~~~~~
# A blocked call first polls its condition, calling sched_yield() between polls, then sleeps on
# the futex word of the party it waits for (the writer's word for a reader, the lagging reader's
# word for the writer) in slices of _SLICE_S. Yielding makes the spin cheap when cores are
# scarce: a process with work to do on this core runs at once, while a core with nothing else to
# do keeps polling instead of halting. That matters most in a VM, where waking a halted vCPU
# costs tens of microseconds: with four actors and a driver on two cores, fan-out latency went
# from ~125 to ~50 us (bare channels) against a spin without yields. How long it polls adapts
# per party and process: _HOT_SPIN_S if its last wait ended within that (values come at a steady
# rate: a 4-stage pipeline of 1 MiB values then never sleeps, +15 % executions/s), else
# _SPIN_S. So a graph that goes idle polls for at most _HOT_SPIN_S once, then sleeps.
# Lost wake-ups are impossible: the waiter sets its ``sleeping`` flag and loads the word *before*
# checking its condition, and the kernel sleeps only while the word still holds that value. A
# party that changes a condition stores it, bumps its word, then wakes the word only if some
# waiter's ``sleeping`` flag is set, looking again after a full fence if it saw none. Fence on one
# side, futex_wait's own barrier on the other: either the waker sees the flag, or the sleeper's
# kernel sees the new word. So a write or an ack costs a system call only when someone sleeps.
# Between slices the waiter checks that the peer it waits on is still alive (pid and start time,
# so a recycled pid does not count): a dead peer is ChannelBrokenError within a slice or two
# (which a compiled graph turns into ActorDiedError).
# Memory order: payload and slot record are stored before the sequence counter that publishes
# them, and read after it; x86-64 keeps stores in order and loads in order (TSO), which is what
# this relies on. A weakly ordered CPU (aarch64) would need fences between them as well.
_SPIN_S, _HOT_SPIN_S = spin.SPIN_S, spin.HOT_SPIN_S
_SLICE_S = 0.1

# Note [zero-copy lifetime]
# ~~~~~~~~~~~~~~~~~~~~~~~~~
# read() returns numpy arrays (and other out-of-band buffers) as read-only views of the slot's
# buffer, and they stay valid for as long as they live: the reader acks every value at once, but
# first pins the slot's buffer (its id, Note [slot buffers] in shm_layout.py) in its pin row when
# the value has such views. A writer that comes round to a slot whose buffer is pinned gives the
# buffer up for good (never written again; its memory goes with the last view) and puts the
# value in another buffer. The buffers of a value are slices of one root array with a weak
# reference on it; once the root is collected, the reader clears the pin at its next read. So a
# consumer that keeps results costs one fresh buffer per reuse of a slot, never a stall and
# never a copy; one that drops them (the usual loop) costs nothing. A value without such
# buffers (plain Python objects, bytes) is a full copy already and pins nothing.

# Note [buffer reuse]
# ~~~~~~~~~~~~~~~~~~~
# Fresh shared memory is slow to touch: each 4 KiB page costs a fault that allocates and zeroes
# it (~5 us in a VM: 0.3 s for 256 MiB, ten times the copy itself). So large buffers are kept
# and reused rather than made per value. A value of _SHARE_MIN bytes or more that is too big
# for its slot's buffer takes the smallest large-enough buffer of another slot whose value every
# reader has acked and nobody pins, and the two slots swap buffers; only when there is none does
# the writer create a new one (twice the old capacity at least) and drop the slot's old one. A
# stream of big values through one slot after another thus cycles through one or two buffers,
# mapped once in every process, instead of growing every slot of the ring: memory stays at what
# is in flight, and a round trip touches no fresh page once warm. A smaller value grows its own
# slot once: eight such buffers cost little, and the ring then never swaps (a swap scans every
# slot, a few microseconds that a 1 MiB copy would notice; a 16 MiB one does not).
_SHARE_MIN = 16 << 20


def _unlink_if_owner(mapping: Mapping, owner_pid: int) -> None:
    """Finalizer of a channel's creator: unlink, unless this is a forked child of the creator."""
    if os.getpid() == owner_pid:
        mapping.unlink()


class SharedMemoryChannel(Channel):
    """A channel in shared memory between processes of one node; pickle it to send it to a peer.

    ``slot_capacity`` is the initial size of each of the ``num_slots`` slots; a larger value
    moves its slot to a larger buffer (Note [buffer reuse]) up to ``max_size`` bytes (None: no
    limit; ``max_size=slot_capacity`` forbids growth). See Note [zero-copy lifetime].

    The object made here owns the segments: ``destroy()`` unlinks them, and so does its garbage
    collection or its process's exit. Copies (unpickled elsewhere) and handles only map them.
    """

    def __init__(self, num_readers: int = 1, num_slots: int = DEFAULT_NUM_SLOTS,
                 slot_capacity: int = DEFAULT_SLOT_CAPACITY, max_size: int | None = None) -> None:
        if num_readers < 1 or num_slots < 1 or slot_capacity < 64:
            raise ValueError(f"a channel needs num_readers >= 1, num_slots >= 1 and "
                             f"slot_capacity >= 64, got num_readers={num_readers}, "
                             f"num_slots={num_slots}, slot_capacity={slot_capacity}")
        if max_size is not None and max_size < slot_capacity:
            raise ValueError(f"max_size {max_size} is smaller than slot_capacity {slot_capacity}")
        capacity = round_up(slot_capacity, 64)
        path = segment_path("chan", uuid.uuid4().hex[:12])
        segment = Segment.create(path, header_size(num_readers, num_slots) + capacity * num_slots)
        self._set_fields(path, num_readers, num_slots, max_size)
        self._mapping = init_header(segment, num_readers, num_slots, max_size, capacity)
        # the creator owns the segments: destroy() frees them, else its collection or exit does
        weakref.finalize(self, _unlink_if_owner, self._mapping, os.getpid())

    def _set_fields(self, path: str, num_readers: int, num_slots: int,
                    max_size: int | None) -> None:
        self.path = path
        self.num_readers = num_readers
        self.num_slots = num_slots
        self.max_size = max_size
        self._mapping: Mapping | None = None

    @classmethod
    def _unpickle(cls, path: str, num_readers: int, num_slots: int,
                  max_size: int | None) -> "SharedMemoryChannel":
        channel = cls.__new__(cls)
        channel._set_fields(path, num_readers, num_slots, max_size)
        return channel

    def __reduce__(self) -> tuple:
        return (SharedMemoryChannel._unpickle,
                (self.path, self.num_readers, self.num_slots, self.max_size))

    def __repr__(self) -> str:
        return (f"SharedMemoryChannel({os.path.basename(self.path)!r}, "
                f"num_readers={self.num_readers}, num_slots={self.num_slots})")

    def writer(self) -> "SharedMemoryWriter":
        """Return the writer handle; it attaches to this process when first used."""
        return SharedMemoryWriter(self)

    def reader(self, index: int = 0) -> "SharedMemoryReader":
        """Return the handle of reader ``index``; it attaches to this process when first used."""
        self.check_reader_index(index)
        return SharedMemoryReader(self, index)

    def _map(self) -> Mapping:
        """Return this process's mapping of the header, opening the segment on first use."""
        if self._mapping is None:
            try:
                self._mapping = Mapping(Segment.open(self.path))
            except FileNotFoundError:
                raise ChannelClosedError(
                    f"{self!r} was destroyed by its creator; it cannot be used any more") from None
        return self._mapping

    def close(self) -> None:
        """Set the closed flag and wake every waiter in every process; idempotent, never blocks."""
        try:
            self._map().close()
        except ChannelClosedError:
            pass

    def destroy(self) -> None:
        """Close the channel and unlink its segments; the memory goes with the last mapping."""
        try:
            self._map().unlink()
        except ChannelClosedError:
            pass

    def _wait(self, me: int, poll: Callable[[], int], timeout: float | None, what: str) -> None:
        """Block party ``me`` until ``poll()`` returns -1 (see Note [channel waiting]).

        Otherwise ``poll()`` returns the party (reader index, or num_readers for the writer)
        whose futex word the caller sleeps on, and whose process must stay alive.
        """
        mapping = self._mapping
        control = mapping.control
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        if timeout != 0:
            spin_end = start + (_HOT_SPIN_S if mapping.hot[me] else _SPIN_S)
            if self._spin(control, poll, spin_end if deadline is None else min(spin_end, deadline)):
                mapping.hot[me] = True
                return
        next_liveness_check = start + _SLICE_S
        my_line = mapping.lines[me]
        my_line.sleeping = 1
        try:
            while True:
                party = poll()
                if party < 0:
                    return
                expected = mapping.lines[party].word
                if control.closed:
                    raise ChannelClosedError(
                        f"{self!r} was closed; {what} is not possible any more")
                again = poll()  # after loading the word: did the condition change meanwhile?
                if again < 0:
                    return
                if again != party:
                    continue
                now = time.monotonic()
                if now >= next_liveness_check:
                    self._check_alive(party, what)
                    next_liveness_check = now + _SLICE_S
                if deadline is not None and now >= deadline:
                    raise ChannelTimeoutError(self._timeout_message(party, what, timeout))
                wait_s = _SLICE_S if deadline is None else min(_SLICE_S, deadline - now)
                futex.wait(mapping.word_addresses[party], expected, wait_s)
        finally:
            my_line.sleeping = 0
            mapping.hot[me] = time.monotonic() - start < _HOT_SPIN_S

    @staticmethod
    def _spin(control: Control, poll: Callable[[], int], end: float) -> bool:
        """Poll, yielding the core between polls, until ``end`` (time.monotonic); True if the
        condition came true (Note [channel waiting])."""
        return spin.spin(lambda: control.closed or poll() < 0, end) and not control.closed

    def _check_alive(self, party: int, what: str) -> None:
        line = self._mapping.lines[party]
        pid = line.pid
        if pid and start_time(pid) != line.start_time and line.pid == pid:
            role = "writer" if party == self.num_readers else f"reader {party}"
            raise ChannelBrokenError(
                f"the {role} process {pid} of {self!r} died while this process waited to {what}; "
                f"the graph cannot go on, tear it down (its actor may be restarted)")

    def _timeout_message(self, party: int, what: str, timeout: float | None) -> str:
        if party == self.num_readers:
            why = "no new value was written"
        else:
            why = (f"all {self.num_slots} slots hold values that reader {party} has not "
                   f"released (read past) yet")
        return (f"{what} on {self!r} timed out after {timeout} s: {why}; retry, or pass a "
                f"longer timeout")

    def _attach(self, party: int) -> Line:
        """Register this process as ``party`` (pid and start time) and return its line."""
        line = self._map().lines[party]
        pid = os.getpid()
        line.start_time = start_time(pid) or 0
        line.pid = pid
        return line


class _Buffers:
    """One end's mappings of a channel's buffers, by id (Note [slot buffers]): a buffer is
    mapped once, whichever slot it is in, and unmapped once no slot holds it. ``views`` (id ->
    view of the whole buffer, read-only for a reader) is read directly on the hot path."""

    __slots__ = ("_mapping", "_writable", "views", "_segments")

    def __init__(self, mapping: Mapping, writable: bool) -> None:
        self._mapping = mapping
        self._writable = writable
        self.views: dict[int, memoryview] = {}
        self._segments: dict[int, Segment] = {}

    def map(self, record: SlotRecord) -> memoryview:
        """Map the buffer of ``record`` (not mapped yet), unmapping those no slot holds."""
        live = self._mapping.live_buffers()
        for buffer in [b for b in self.views if b not in live]:
            self.drop(buffer)
        segment, view = self._mapping.map_buffer(record, self._writable)
        self.add(record.buffer, segment, view if self._writable else view.toreadonly())
        return self.views[record.buffer]

    def add(self, buffer: int, segment: Segment | None, view: memoryview) -> None:
        """Keep the mapping of ``buffer``."""
        self.views[buffer] = view
        if segment is not None:
            self._segments[buffer] = segment

    def drop(self, buffer: int) -> None:
        """Unmap ``buffer`` (once the last value viewing it is freed)."""
        self.views.pop(buffer, None)
        segment = self._segments.pop(buffer, None)
        if segment is not None:
            segment.close()


class SharedMemoryWriter(ChannelWriter):
    """The writing end of a SharedMemoryChannel; pickles as (channel, role)."""

    __slots__ = ("channel", "_mapping", "_seq", "_buffers", "_what", "_line", "_max_size",
                 "_pin_indices")

    def __init__(self, channel: SharedMemoryChannel) -> None:
        self.channel = channel
        self._mapping: Mapping | None = None   # set by attach(), with the fields below
        self._seq = 0
        self._what = f"a value written to {channel!r}"

    def __reduce__(self) -> tuple:
        return (SharedMemoryWriter, (self.channel,))

    def attach(self) -> None:
        """Register this process as the writer (done by the first write otherwise)."""
        if self._mapping is None:
            channel = self.channel
            self._line = channel._attach(channel.num_readers)
            self._seq = self._line.seq
            mapping = channel._mapping
            self._buffers = _Buffers(mapping, writable=True)
            self._max_size = mapping.control.max_size
            self._pin_indices = [range(slot, len(mapping.pins), mapping.pin_row)
                                 for slot in range(channel.num_slots)]
            self._mapping = mapping

    def write(self, value: Any, timeout: float | None = None) -> None:
        """Serialize ``value`` into the next slot and publish it to every reader."""
        if self._mapping is None:
            self.attach()
        channel, mapping = self.channel, self._mapping
        if mapping.control.closed:
            raise ChannelClosedError(f"{channel!r} was closed; write is not possible any more")
        frame = serialize(value, self._what)
        size = frame.frame_size
        if size > self._max_size:
            raise ChannelValueTooLargeError(
                f"a value of {size} bytes does not fit in {channel!r}, whose max_size is "
                f"{channel.max_size} bytes; create the channel with a larger max_size (or None)")
        self.wait_writable(timeout)
        seq = self._seq
        slot = seq % channel.num_slots
        frame.write_into(self._slot_view(seq, slot, size))
        mapping.slots[slot].length = size
        self._line.seq = seq + 1            # publish: payload and record first, sequence last
        self._seq = seq + 1
        mapping.signal(channel.num_readers, mapping.reader_lines)

    def wait_writable(self, timeout: float | None = None) -> None:
        """Wait until every reader has read past the slot that the next write needs."""
        if self._mapping is None:
            self.attach()
        channel = self.channel
        bound = self._seq - channel.num_slots
        for line in self._mapping.reader_lines:
            if line.seq <= bound:
                channel._wait(channel.num_readers, self._lagging_reader, timeout, "write")
                break

    def _lagging_reader(self) -> int:
        """Return a reader that still holds the slot the next write needs, or -1 if it is free."""
        bound = self._seq - self.channel.num_slots
        for index, line in enumerate(self._mapping.reader_lines):
            if line.seq <= bound:
                return index
        return -1

    def _slot_view(self, seq: int, slot: int, size: int) -> memoryview:
        """Return a writable view of ``size`` bytes for value ``seq`` in ``slot``: first give
        up a buffer that a reader still views, then find a larger one if the value does not
        fit (Notes [zero-copy lifetime] and [buffer reuse])."""
        record = self._mapping.slots[slot]
        if record.buffer and self._pinned(slot, record.buffer):
            self._give_up(record)
        if size > record.capacity:
            self._make_room(seq, slot, size)
        view = self._buffers.views.get(record.buffer)
        if view is None:
            view = self._buffers.map(record)
        return view[:size]

    def _pinned(self, slot: int, buffer: int) -> bool:
        """Whether a reader still has views of ``buffer``, read from ``slot``."""
        pins, mark = self._mapping.pins, buffer + 1
        for index in self._pin_indices[slot]:
            if pins[index] == mark:
                return True
        return False

    def _give_up(self, record: SlotRecord) -> None:
        """Leave the buffer of ``record`` to the views that use it; the slot has none now."""
        buffer = record.buffer
        record.buffer, record.offset, record.capacity = 0, 0, 0
        self._drop(buffer)

    def _drop(self, buffer: int) -> None:
        """Forget ``buffer``, which no slot holds any more: unlink it if it has a segment."""
        if buffer > self.channel.num_slots:
            unlink(buffer_path(self.channel.path, buffer))
            self._buffers.drop(buffer)

    def _make_room(self, seq: int, slot: int, size: int) -> None:
        """Give ``slot`` a buffer of at least ``size`` bytes: for a large value, swap in the
        smallest that fits from a slot whose value every reader acked and nobody views; else
        create one (Note [buffer reuse])."""
        mapping, num_slots = self._mapping, self.channel.num_slots
        record = mapping.slots[slot]
        acked = min(line.seq for line in mapping.reader_lines)  # values below it are done
        spare: SlotRecord | None = None
        for other_slot, other in enumerate(mapping.slots if size >= _SHARE_MIN else ()):
            if (other.capacity >= size and other_slot != slot
                    and (spare is None or other.capacity < spare.capacity)
                    and seq - (slot - other_slot) % num_slots < acked   # its last value
                    and not self._pinned(other_slot, other.buffer)):
                spare = other
        if spare is not None:
            mine = record.buffer, record.offset, record.capacity
            record.buffer, record.offset, record.capacity = (spare.buffer, spare.offset,
                                                             spare.capacity)
            spare.buffer, spare.offset, spare.capacity = mine
            return
        old = record.buffer
        capacity = self._grown_capacity(record.capacity, size)
        buffer, segment = mapping.create_buffer(capacity)
        self._buffers.add(buffer, segment, segment.buf)
        record.buffer, record.offset, record.capacity = buffer, 0, capacity
        self._drop(old)
        if mapping.control.closed:  # destroy() may have missed the new segment
            segment.unlink()

    def _grown_capacity(self, capacity: int, size: int) -> int:
        """The capacity a slot of ``capacity`` grows to for a value of ``size`` bytes."""
        grown = round_up(max(size, 2 * capacity), PAGE)
        if self.channel.max_size is not None:
            grown = max(size, min(grown, self.channel.max_size))
        return grown

    def close(self) -> None:
        """Close the whole channel."""
        self.channel.close()


class _Root(weakref.ref):
    """A weak reference to the root array of a value read, keyed by its (slot, buffer)."""

    __slots__ = ("key",)


class SharedMemoryReader(ChannelReader):
    """One reading end of a SharedMemoryChannel; pickles as (channel, index)."""

    __slots__ = ("channel", "index", "_mapping", "_seq", "_buffers", "_what", "_reading",
                 "_roots", "_freed", "_line", "_writer_line", "_pin_base")

    def __init__(self, channel: SharedMemoryChannel, index: int) -> None:
        self.channel = channel
        self.index = index
        self._mapping: Mapping | None = None   # set by attach(), with the fields below
        self._seq = 0          # values read (and acked)
        self._what = f"a value read from {channel!r}"
        self._reading = (0, 0)   # (slot, buffer) of the value being read
        self._roots: dict[tuple[int, int], _Root] = {}   # live root per (slot, buffer)
        self._freed: list[_Root] = []   # roots collected whose pins are not cleared yet

    def __reduce__(self) -> tuple:
        return (SharedMemoryReader, (self.channel, self.index))

    def attach(self) -> None:
        """Register this process as reader ``index`` (done by the first read otherwise)."""
        if self._mapping is None:
            channel = self.channel
            self._line = channel._attach(self.index)
            self._seq = self._line.seq
            self._buffers = _Buffers(channel._mapping, writable=False)
            self._writer_line = channel._mapping.writer_line
            self._pin_base = self.index * channel._mapping.pin_row
            self._mapping = channel._mapping

    def read(self, timeout: float | None = None) -> Any:
        """Return the next value; its zero-copy views stay valid while they live (see
        Note [zero-copy lifetime])."""
        if self._mapping is None:
            self.attach()
        channel, mapping = self.channel, self._mapping
        if self._freed:
            self._clear_pins()
        seq = self._seq
        if self._writer_line.seq <= seq:
            try:
                channel._wait(self.index, self._poll, timeout, "read")
            except ChannelClosedError:
                if self._writer_line.seq <= seq:   # else: written before the close, still read
                    raise
        slot = seq % channel.num_slots
        record = mapping.slots[slot]
        buffer = record.buffer
        view = self._buffers.views.get(buffer)
        if view is None:
            try:
                view = self._buffers.map(record)
            except FileNotFoundError:
                raise ChannelClosedError(f"{channel!r} was destroyed by its creator; its values "
                                         f"cannot be read any more") from None
        frame = view[:record.length]
        self._reading = (slot, buffer)
        try:
            return deserialize(frame, self._what, self._pin)
        finally:
            self._seq = seq + 1
            self._line.seq = seq + 1      # the ack, after any pin
            mapping.signal(self.index, mapping.writer_lines)

    def _poll(self) -> int:
        return -1 if self._writer_line.seq > self._seq else self.channel.num_readers

    def _pin(self, view: memoryview) -> Any:
        """Return a root array over ``view`` (of the value being read), and pin its slot until
        the root is collected (Note [zero-copy lifetime])."""
        root = numpy.asarray(view)   # a read-only uint8 array; frombuffer would try writing first
        key = slot, buffer = self._reading
        ref = self._roots[key] = _Root(root, self._freed.append)
        ref.key = key
        self._mapping.pins[self._pin_base + slot] = buffer + 1
        return root

    def _clear_pins(self) -> None:
        """Clear the pins of the roots collected since the last call. The weak reference
        callbacks (in any thread) only queue; pins are cleared here, in the reading thread, so
        that one thread writes them and no lock is needed."""
        freed, roots, pins = self._freed, self._roots, self._mapping.pins
        while freed:
            ref = freed.pop()
            slot, buffer = key = ref.key
            if roots.get(key) is ref:
                del roots[key]
                if pins[self._pin_base + slot] == buffer + 1:
                    pins[self._pin_base + slot] = 0

    def close(self) -> None:
        """Close the whole channel."""
        self.channel.close()


class SharedMemoryType(ChannelType):
    """The transport for an edge between two processes of one node."""

    def __init__(self, slot_capacity: int = DEFAULT_SLOT_CAPACITY,
                 max_size: int | None = None) -> None:
        self.slot_capacity = slot_capacity
        self.max_size = max_size

    def create_channel(self, num_readers: int = 1, *,
                       num_slots: int = DEFAULT_NUM_SLOTS) -> SharedMemoryChannel:
        """Create a SharedMemoryChannel in this session's shared memory."""
        return SharedMemoryChannel(num_readers, num_slots, self.slot_capacity, self.max_size)

    def __repr__(self) -> str:
        return f"SharedMemoryType(slot_capacity={self.slot_capacity}, max_size={self.max_size})"
