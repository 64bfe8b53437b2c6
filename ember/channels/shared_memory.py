"""A channel between processes on one node: a ring of slots in shared memory, waited on by futex.

Layout of the channel's segment (``ember_<session>_chan_<id>``), native (little) endian::

    control line  magic, version, num_readers, num_slots, max_size, closed flag
    N+1 lines     one per reader, then the writer's: seq (u64: values acked / written), pid,
                  start time, futex word (u32), sleeping flag (u32)
    slot table    per slot: generation, offset, length (of the frame), capacity
    pin table     per reader, from a line of its own: per slot, 1 + the generation it pins, or 0
    slot data     generation 0 of every slot, page aligned after the header

A slot that has grown lives in its own segment, ``<channel name>_s<slot>_g<generation>``.
Each 64-byte line (and pin row) has one writer process, so processes do not share cache lines
they write.
"""

from __future__ import annotations

import ctypes
import os
import time
import uuid
import weakref
from typing import Any, Callable

import numpy

from ember.channels import futex
from ember.channels.interface import (DEFAULT_NUM_SLOTS, Channel, ChannelReader, ChannelType,
                                      ChannelWriter)
from ember.dynamic.serialization import deserialize, serialize
from ember.dynamic.shm import Segment, segment_path, unlink
from ember.exceptions import (ActorDiedError, ChannelClosedError, ChannelTimeoutError,
                              ChannelValueTooLargeError)

DEFAULT_SLOT_CAPACITY = 64 * 1024
_MAGIC = 0x52424D45  # b"EMBR"
_VERSION = 2
_PAGE = 4096
_NO_LIMIT = (1 << 64) - 1
_U32 = 0xFFFFFFFF

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
# so a recycled pid does not count): a dead peer is ActorDiedError within a slice or two.
# Memory order: payload and slot record are stored before the sequence counter that publishes
# them, and read after it; x86-64 keeps stores in order and loads in order (TSO), which is what
# this relies on. A weakly ordered CPU (aarch64) would need fences between them as well.
_SPIN_S = 50e-6
_HOT_SPIN_S = 1e-3
_SLICE_S = 0.1

# Note [zero-copy lifetime]
# ~~~~~~~~~~~~~~~~~~~~~~~~~
# read() returns numpy arrays (and other out-of-band buffers) as read-only views of the slot, and
# they stay valid for as long as they live: the reader acks every value at once, but first pins
# the slot's generation in its pin row when the value has such views. A writer that comes round
# to a slot pinned at its current generation moves the slot to a new segment (the next
# generation) instead of overwriting it; the old memory goes with the last view. The buffers of
# a value are slices of one root array with a weak reference on it; once the root is collected,
# the reader clears the pin at its next read. So a consumer that keeps results costs one
# fresh segment per reuse of a slot, never a stall and never a copy; one that drops them (the
# usual loop) costs nothing. A value without such buffers (plain Python objects) is a full copy
# already and pins nothing.


class _Control(ctypes.Structure):
    _fields_ = [("magic", ctypes.c_uint32), ("version", ctypes.c_uint32),
                ("num_readers", ctypes.c_uint32), ("num_slots", ctypes.c_uint32),
                ("max_size", ctypes.c_uint64), ("closed", ctypes.c_uint32),
                ("_pad", ctypes.c_uint8 * 36)]


class _Line(ctypes.Structure):
    """One party's line: its sequence (values written or acked), identity, futex word, and
    whether it sleeps on another party's word (see Note [channel waiting])."""

    _fields_ = [("seq", ctypes.c_uint64), ("pid", ctypes.c_uint64),
                ("start_time", ctypes.c_uint64), ("word", ctypes.c_uint32),
                ("sleeping", ctypes.c_uint32), ("_pad", ctypes.c_uint8 * 32)]


class _SlotRecord(ctypes.Structure):
    _fields_ = [("generation", ctypes.c_uint64), ("offset", ctypes.c_uint64),
                ("length", ctypes.c_uint64), ("capacity", ctypes.c_uint64)]


assert ctypes.sizeof(_Control) == 64 and ctypes.sizeof(_Line) == 64


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _pin_table(num_readers: int, num_slots: int) -> tuple[int, int]:
    """Return (offset of the pin table, u64 entries per reader row)."""
    offset = _round_up(64 * (num_readers + 2) + ctypes.sizeof(_SlotRecord) * num_slots, 64)
    return offset, _round_up(8 * num_slots, 64) // 8


def _header_size(num_readers: int, num_slots: int) -> int:
    offset, row = _pin_table(num_readers, num_slots)
    return _round_up(offset + 8 * row * num_readers, _PAGE)


def _start_time(pid: int) -> int | None:
    """Return the start time (clock ticks since boot) of live process ``pid``; None if dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):  # a zombie has died; only its parent has not reaped it yet
        return None
    return int(fields[19])


def _slot_path(path: str, slot: int, generation: int) -> str:
    """Return the path of the segment of ``slot`` once it has grown to ``generation`` (> 0)."""
    return f"{path}_s{slot}_g{generation}"


def _map_slot(header: Segment, slot: int,
              record: "_SlotRecord") -> tuple[Segment | None, memoryview]:
    """Map the current generation of ``slot``: (its own segment or None, a view of its bytes)."""
    if record.generation == 0:
        return None, header.buf[record.offset:record.offset + record.capacity]
    segment = Segment.open(_slot_path(header.path, slot, record.generation))
    return segment, segment.buf


class _Mapping:
    """One process's map of a channel header: ctypes views of its lines, slots and futex words."""

    __slots__ = ("segment", "control", "lines", "word_addresses", "reader_lines", "writer_lines",
                 "writer_line", "slots", "hot", "pin_row", "pins")

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        mm = segment.mmap
        self.control = _Control.from_buffer(mm, 0)
        if self.control.magic != _MAGIC or self.control.version != _VERSION:
            raise ValueError(f"{segment.path} is not an ember channel segment (version {_VERSION})")
        num_readers, num_slots = self.control.num_readers, self.control.num_slots
        # lines[0..N-1] are the readers', lines[N] the writer's (see the module docstring)
        self.lines = [_Line.from_buffer(mm, 64 * (i + 1)) for i in range(num_readers + 1)]
        self.word_addresses = [futex.word_address(mm, 64 * (i + 1) + _Line.word.offset)
                               for i in range(num_readers + 1)]
        table = 64 * (num_readers + 2)
        self.reader_lines = self.lines[:-1]
        self.writer_lines = self.lines[-1:]
        self.writer_line = self.lines[-1]
        self.slots = [_SlotRecord.from_buffer(mm, table + ctypes.sizeof(_SlotRecord) * i)
                      for i in range(num_slots)]
        self.hot = [False] * (num_readers + 1)   # per party: its last wait was short
        pin_offset, self.pin_row = _pin_table(num_readers, num_slots)
        self.pins = segment.buf[pin_offset:pin_offset + 8 * self.pin_row * num_readers].cast("Q")

    def signal(self, party: int, waiters: list[_Line]) -> None:
        """Bump the futex word of ``party``; wake it if one of ``waiters`` sleeps."""
        line = self.lines[party]
        line.word = (line.word + 1) & _U32
        for waiter in waiters:   # a flag seen set needs no fence: waking is always safe
            if waiter.sleeping:
                break
        else:
            futex.fence()
            for waiter in waiters:
                if waiter.sleeping:
                    break
            else:
                return
        futex.wake(self.word_addresses[party])

    def close(self) -> None:
        """Set the closed flag, then bump every futex word and wake every sleeper."""
        self.control.closed = 1
        for party, line in enumerate(self.lines):
            line.word = (line.word + 1) & _U32
            futex.wake(self.word_addresses[party])

    def unlink(self) -> None:
        """Close the channel and unlink its segments; the memory goes with the last mapping."""
        self.close()
        for slot, record in enumerate(self.slots):
            if record.generation:
                unlink(_slot_path(self.segment.path, slot, record.generation))
        self.segment.unlink()


def _unlink_if_owner(mapping: _Mapping, owner_pid: int) -> None:
    """Finalizer of a channel's creator: unlink, unless this is a forked child of the creator."""
    if os.getpid() == owner_pid:
        mapping.unlink()


class SharedMemoryChannel(Channel):
    """A channel in shared memory between processes of one node; pickle it to send it to a peer.

    ``slot_capacity`` is the initial size of each of the ``num_slots`` slots; a larger value
    grows its slot (a new segment the readers follow) up to ``max_size`` bytes (None: no limit;
    ``max_size=slot_capacity`` forbids growth). See Note [zero-copy lifetime].

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
        capacity = _round_up(slot_capacity, 64)
        header = _header_size(num_readers, num_slots)
        path = segment_path("chan", uuid.uuid4().hex[:12])
        segment = Segment.create(path, header + capacity * num_slots)
        control = _Control.from_buffer(segment.mmap, 0)
        control.num_readers, control.num_slots = num_readers, num_slots
        control.max_size = _NO_LIMIT if max_size is None else max_size
        control.version = _VERSION
        control.magic = _MAGIC
        self._set_fields(path, num_readers, num_slots, max_size)
        self._mapping = _Mapping(segment)
        for i, record in enumerate(self._mapping.slots):
            record.offset, record.capacity = header + capacity * i, capacity
        # the creator owns the segments: destroy() frees them, else its collection or exit does
        weakref.finalize(self, _unlink_if_owner, self._mapping, os.getpid())

    def _set_fields(self, path: str, num_readers: int, num_slots: int,
                    max_size: int | None) -> None:
        self.path = path
        self.num_readers = num_readers
        self.num_slots = num_slots
        self.max_size = max_size
        self._mapping: _Mapping | None = None

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

    def _map(self) -> _Mapping:
        """Return this process's mapping of the header, opening the segment on first use."""
        if self._mapping is None:
            try:
                self._mapping = _Mapping(Segment.open(self.path))
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
    def _spin(control: _Control, poll: Callable[[], int], end: float) -> bool:
        """Poll, yielding the core between polls, until ``end`` (time.monotonic); True if the
        condition came true (Note [channel waiting])."""
        yield_core, now = os.sched_yield, time.monotonic
        while not control.closed:
            if poll() < 0:
                return True
            if now() > end:
                return False
            yield_core()
        return False

    def _check_alive(self, party: int, what: str) -> None:
        line = self._mapping.lines[party]
        pid = line.pid
        if pid and _start_time(pid) != line.start_time and line.pid == pid:
            role = "writer" if party == self.num_readers else f"reader {party}"
            raise ActorDiedError(
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

    def _attach(self, party: int) -> _Line:
        """Register this process as ``party`` (pid and start time) and return its line."""
        line = self._map().lines[party]
        pid = os.getpid()
        line.start_time = _start_time(pid) or 0
        line.pid = pid
        return line


class SharedMemoryWriter(ChannelWriter):
    """The writing end of a SharedMemoryChannel; pickles as (channel, role)."""

    __slots__ = ("channel", "_mapping", "_seq", "_slot_views", "_what", "_line", "_max_size",
                 "_pin_indices")

    def __init__(self, channel: SharedMemoryChannel) -> None:
        self.channel = channel
        self._mapping: _Mapping | None = None   # set by attach(), with the fields below
        self._seq = 0
        self._slot_views: list[tuple[int, Segment | None, memoryview] | None] = []
        self._what = f"a value written to {channel!r}"

    def __reduce__(self) -> tuple:
        return (SharedMemoryWriter, (self.channel,))

    def attach(self) -> None:
        """Register this process as the writer (done by the first write otherwise)."""
        if self._mapping is None:
            channel = self.channel
            self._line = channel._attach(channel.num_readers)
            self._seq = self._line.seq
            self._slot_views = [None] * channel.num_slots
            mapping = channel._mapping
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
        seq = self._seq
        bound = seq - channel.num_slots
        for line in mapping.reader_lines:
            if line.seq <= bound:
                channel._wait(channel.num_readers, self._lagging_reader, timeout, "write")
                break
        slot = seq % channel.num_slots
        frame.write_into(self._slot_view(slot, size))
        mapping.slots[slot].length = size
        self._line.seq = seq + 1            # publish: payload and record first, sequence last
        self._seq = seq + 1
        mapping.signal(channel.num_readers, mapping.reader_lines)

    def _lagging_reader(self) -> int:
        """Return a reader that still holds the slot the next write needs, or -1 if it is free."""
        bound = self._seq - self.channel.num_slots
        for index, line in enumerate(self._mapping.reader_lines):
            if line.seq <= bound:
                return index
        return -1

    def _slot_view(self, slot: int, size: int) -> memoryview:
        """Return a writable view of ``slot``, moving it to a new segment first if ``size``
        bytes do not fit or a reader still uses it (Note [zero-copy lifetime])."""
        record = self._mapping.slots[slot]
        if size > record.capacity:
            self._move(slot, self._grown_capacity(record.capacity, size))
        elif self._pinned(slot, record.generation):
            self._move(slot, record.capacity)
        cached = self._slot_views[slot]
        if cached is None or cached[0] != record.generation:
            cached = self._map_slot(slot, record)
        return cached[2][:size]

    def _map_slot(self, slot: int, record: _SlotRecord) -> tuple[int, Segment | None, memoryview]:
        segment, view = _map_slot(self._mapping.segment, slot, record)
        self._slot_views[slot] = (record.generation, segment, view)
        return self._slot_views[slot]

    def _pinned(self, slot: int, generation: int) -> bool:
        """Whether a reader still has views of ``slot`` at ``generation``."""
        pins, mark = self._mapping.pins, generation + 1
        for index in self._pin_indices[slot]:
            if pins[index] == mark:
                return True
        return False

    def _grown_capacity(self, capacity: int, size: int) -> int:
        """The capacity a slot of ``capacity`` grows to for a value of ``size`` bytes."""
        grown = _round_up(max(size, 2 * capacity), _PAGE)
        if self.channel.max_size is not None:
            grown = max(size, min(grown, self.channel.max_size))
        return grown

    def _move(self, slot: int, capacity: int) -> None:
        """Move ``slot`` (acked by every reader) into a new segment of ``capacity`` bytes."""
        channel = self.channel
        record = self._mapping.slots[slot]
        generation = record.generation + 1
        segment = Segment.create(_slot_path(channel.path, slot, generation), capacity)
        old = self._slot_views[slot]
        if record.generation:
            unlink(_slot_path(channel.path, slot, record.generation))
        if old is not None and old[1] is not None:
            old[1].close()
        self._slot_views[slot] = (generation, segment, segment.buf)
        record.offset, record.capacity, record.generation = 0, capacity, generation
        if self._mapping.control.closed:  # destroy() may have missed the new segment
            segment.unlink()

    def close(self) -> None:
        """Close the whole channel."""
        self.channel.close()


class _Root(weakref.ref):
    """A weak reference to the root array of a value read, keyed by its (slot, generation)."""

    __slots__ = ("key",)


class SharedMemoryReader(ChannelReader):
    """One reading end of a SharedMemoryChannel; pickles as (channel, index)."""

    __slots__ = ("channel", "index", "_mapping", "_seq", "_slot_views", "_what", "_reading",
                 "_roots", "_freed", "_line", "_writer_line", "_pin_base")

    def __init__(self, channel: SharedMemoryChannel, index: int) -> None:
        self.channel = channel
        self.index = index
        self._mapping: _Mapping | None = None   # set by attach(), with the fields below
        self._seq = 0          # values read (and acked)
        self._slot_views: list[tuple[int, Segment | None, memoryview] | None] = []
        self._what = f"a value read from {channel!r}"
        self._reading = (0, 0)   # (slot, generation) of the value being read
        self._roots: dict[tuple[int, int], _Root] = {}   # live root per (slot, generation)
        self._freed: list[_Root] = []   # roots collected whose pins are not cleared yet

    def __reduce__(self) -> tuple:
        return (SharedMemoryReader, (self.channel, self.index))

    def attach(self) -> None:
        """Register this process as reader ``index`` (done by the first read otherwise)."""
        if self._mapping is None:
            channel = self.channel
            self._line = channel._attach(self.index)
            self._seq = self._line.seq
            self._slot_views = [None] * channel.num_slots
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
        generation = record.generation
        cached = self._slot_views[slot]
        if cached is None or cached[0] != generation:
            cached = self._map_slot(slot, generation, record)
        frame = cached[2][:record.length]
        self._reading = (slot, generation)
        try:
            return deserialize(frame, self._what, self._pin)
        finally:
            self._seq = seq + 1
            self._line.seq = seq + 1      # the ack, after any pin
            mapping.signal(self.index, mapping.writer_lines)

    def _poll(self) -> int:
        return -1 if self._writer_line.seq > self._seq else self.channel.num_readers

    def _map_slot(self, slot: int, generation: int,
                  record: _SlotRecord) -> tuple[int, Segment | None, memoryview]:
        """Map the current generation of ``slot`` (read-only), unmapping the one it replaces."""
        cached = self._slot_views[slot]
        if cached is not None and cached[1] is not None:
            cached[1].close()  # unmapped once the last value viewing it is freed
        try:
            segment, view = _map_slot(self._mapping.segment, slot, record)
        except FileNotFoundError:
            raise ChannelClosedError(f"{self.channel!r} was destroyed by its creator; its "
                                     f"values cannot be read any more") from None
        cached = self._slot_views[slot] = (generation, segment, view.toreadonly())
        return cached

    def _pin(self, view: memoryview) -> Any:
        """Return a root array over ``view`` (of the value being read), and pin its slot until
        the root is collected (Note [zero-copy lifetime])."""
        root = numpy.asarray(view)   # a read-only uint8 array; frombuffer would try writing first
        key = slot, generation = self._reading
        ref = self._roots[key] = _Root(root, self._freed.append)
        ref.key = key
        self._mapping.pins[self._pin_base + slot] = generation + 1
        return root

    def _clear_pins(self) -> None:
        """Clear the pins of the roots collected since the last call. The weak reference
        callbacks (in any thread) only queue; pins are cleared here, in the reading thread, so
        that one thread writes them and no lock is needed."""
        freed, roots, pins = self._freed, self._roots, self._mapping.pins
        while freed:
            ref = freed.pop()
            slot, generation = key = ref.key
            if roots.get(key) is ref:
                del roots[key]
                if pins[self._pin_base + slot] == generation + 1:
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
