"""The layout of a shared-memory channel's header, and one process's map of it.

Layout of the channel's segment (``ember_<session>_chan_<id>``), native (little) endian::

    control line  magic, version, num_readers, num_slots, max_size, closed flag, next buffer id
    N+1 lines     one per reader, then the writer's: seq (u64: values acked / written), pid,
                  start time, futex word (u32), sleeping flag (u32)
    slot table    per slot: buffer id, offset, length (of the frame), capacity
    pin table     per reader, from a line of its own: per slot, 1 + the buffer id it pins, or 0
    slot data     the first buffer of every slot, page aligned after the header

Each 64-byte line (and pin row) has one writer process, so processes do not share cache lines
they write.

Note [slot buffers]
~~~~~~~~~~~~~~~~~~~
A slot's bytes live in a buffer with an id unique in the channel: ids 1..num_slots are the areas
in the header's slot data (they never move), larger ids are segments of their own,
``<channel name>_b<id>``, and 0 is no buffer (capacity 0). Buffers can change slots (the writer
swaps a large one to the slot that needs it, see Note [buffer reuse] in shared_memory.py), so
each process maps buffers by id, once, and reuses the mapping whichever slot a buffer is in.
"""

from __future__ import annotations

import ctypes

from ember.channels import futex
from ember._system.shm import POPULATE_READ, POPULATE_WRITE, Segment, populate, unlink

MAGIC = 0x52424D45  # b"EMBR"
VERSION = 3
PAGE = 4096
NO_LIMIT = (1 << 64) - 1
_U32 = 0xFFFFFFFF
# Mapping a buffer that is not small sets up its page tables in one call (shm.populate).
_POPULATE_MIN = 1 << 20


class Control(ctypes.Structure):
    _fields_ = [("magic", ctypes.c_uint32), ("version", ctypes.c_uint32),
                ("num_readers", ctypes.c_uint32), ("num_slots", ctypes.c_uint32),
                ("max_size", ctypes.c_uint64), ("closed", ctypes.c_uint32),
                ("_pad0", ctypes.c_uint32), ("next_buffer", ctypes.c_uint64),
                ("_pad", ctypes.c_uint8 * 24)]


class Line(ctypes.Structure):
    """One party's line: its sequence (values written or acked), identity, futex word, and
    whether it sleeps on another party's word (see Note [channel waiting])."""

    _fields_ = [("seq", ctypes.c_uint64), ("pid", ctypes.c_uint64),
                ("start_time", ctypes.c_uint64), ("word", ctypes.c_uint32),
                ("sleeping", ctypes.c_uint32), ("_pad", ctypes.c_uint8 * 32)]


class SlotRecord(ctypes.Structure):
    _fields_ = [("buffer", ctypes.c_uint64), ("offset", ctypes.c_uint64),
                ("length", ctypes.c_uint64), ("capacity", ctypes.c_uint64)]


assert ctypes.sizeof(Control) == 64 and ctypes.sizeof(Line) == 64


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _pin_table(num_readers: int, num_slots: int) -> tuple[int, int]:
    """Return (offset of the pin table, u64 entries per reader row)."""
    offset = round_up(64 * (num_readers + 2) + ctypes.sizeof(SlotRecord) * num_slots, 64)
    return offset, round_up(8 * num_slots, 64) // 8


def header_size(num_readers: int, num_slots: int) -> int:
    offset, row = _pin_table(num_readers, num_slots)
    return round_up(offset + 8 * row * num_readers, PAGE)


def buffer_path(path: str, buffer: int) -> str:
    """Return the path of the segment of ``buffer`` (an id over num_slots, Note [slot buffers])."""
    return f"{path}_b{buffer}"


def _populate(segment: Segment, advice: int) -> None:
    """Set up the page tables of a large segment at once (best effort: older kernels refuse)."""
    if segment.size >= _POPULATE_MIN:
        populate(segment.mmap, advice)


class Mapping:
    """One process's map of a channel header: ctypes views of its lines, slots and futex words,
    and its mapped buffers by id (Note [slot buffers])."""

    __slots__ = ("segment", "control", "lines", "word_addresses", "reader_lines", "writer_lines",
                 "writer_line", "slots", "hot", "pin_row", "pins", "num_slots")

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        mm = segment.mmap
        self.control = Control.from_buffer(mm, 0)
        if self.control.magic != MAGIC or self.control.version != VERSION:
            raise ValueError(f"{segment.path} is not an ember channel segment (version {VERSION})")
        num_readers, self.num_slots = self.control.num_readers, self.control.num_slots
        # lines[0..N-1] are the readers', lines[N] the writer's (see the module docstring)
        self.lines = [Line.from_buffer(mm, 64 * (i + 1)) for i in range(num_readers + 1)]
        self.word_addresses = [futex.word_address(mm, 64 * (i + 1) + Line.word.offset)
                               for i in range(num_readers + 1)]
        table = 64 * (num_readers + 2)
        self.reader_lines = self.lines[:-1]
        self.writer_lines = self.lines[-1:]
        self.writer_line = self.lines[-1]
        self.slots = [SlotRecord.from_buffer(mm, table + ctypes.sizeof(SlotRecord) * i)
                      for i in range(self.num_slots)]
        self.hot = [False] * (num_readers + 1)   # per party: its last wait was short
        pin_offset, self.pin_row = _pin_table(num_readers, self.num_slots)
        self.pins = segment.buf[pin_offset:pin_offset + 8 * self.pin_row * num_readers].cast("Q")

    def map_buffer(self, record: SlotRecord, writable: bool) -> tuple[Segment | None, memoryview]:
        """Map the buffer of ``record``: (its own segment or None, a view of its bytes).
        Raises FileNotFoundError when the channel was destroyed meanwhile."""
        if record.buffer <= self.num_slots:
            return None, self.segment.buf[record.offset:record.offset + record.capacity]
        segment = Segment.open(buffer_path(self.segment.path, record.buffer))
        _populate(segment, POPULATE_WRITE if writable else POPULATE_READ)
        return segment, segment.buf

    def create_buffer(self, capacity: int) -> tuple[int, Segment]:
        """Create a segment of ``capacity`` bytes under the next buffer id, its pages ready."""
        buffer = self.control.next_buffer
        self.control.next_buffer = buffer + 1
        segment = Segment.create(buffer_path(self.segment.path, buffer), capacity)
        _populate(segment, POPULATE_WRITE)
        return buffer, segment

    def live_buffers(self) -> set[int]:
        """The ids of the buffers that some slot holds now."""
        return {record.buffer for record in self.slots}

    def signal(self, party: int, waiters: list[Line]) -> None:
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
        for record in self.slots:
            if record.buffer > self.num_slots:
                unlink(buffer_path(self.segment.path, record.buffer))
        self.segment.unlink()


def init_header(segment: Segment, num_readers: int, num_slots: int, max_size: int | None,
                capacity: int) -> Mapping:
    """Write a new channel's control line and slot table; return its mapping."""
    control = Control.from_buffer(segment.mmap, 0)
    control.num_readers, control.num_slots = num_readers, num_slots
    control.max_size = NO_LIMIT if max_size is None else max_size
    control.next_buffer = num_slots + 1
    control.version = VERSION
    control.magic = MAGIC
    mapping = Mapping(segment)
    header = header_size(num_readers, num_slots)
    for i, record in enumerate(mapping.slots):
        record.buffer, record.offset, record.capacity = i + 1, header + capacity * i, capacity
    return mapping

