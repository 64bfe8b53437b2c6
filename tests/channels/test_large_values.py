"""Large values through shared-memory channels: bytes frames, and buffers reused, not regrown."""

from __future__ import annotations

import gc
import glob
import os

import numpy as np
import pytest

from ember.channels.shared_memory import SharedMemoryChannel
from ember._system import shm
from ember._system.serialization import BYTES, BYTEARRAY, PICKLED, deserialize, serialize

from . import peers
from .peers import running

MiB = 1 << 20


def buffer_files(sid: str) -> list[str]:
    """The segments of session ``sid`` that are slot buffers of their own."""
    return glob.glob(os.path.join(shm.SHM_DIR, f"ember_{sid}_chan_*_b*"))


@pytest.mark.parametrize("size", [100, 64 * 1024 - 1, 64 * 1024, 5 * MiB])
@pytest.mark.parametrize("cls", [bytes, bytearray])
def test_bytes_and_bytearrays_come_back_as_themselves(cls: type, size: int) -> None:
    value = cls(os.urandom(size))
    frame = serialize(value)
    assert frame.kind == (PICKLED if size < 64 * 1024 else BYTES if cls is bytes else BYTEARRAY)
    out = bytearray(frame.frame_size)
    frame.write_into(memoryview(out))
    for source in (memoryview(out).toreadonly(), bytes(out)):
        back = deserialize(source)
        assert type(back) is cls and back == value


@pytest.mark.timeout(60)
def test_large_bytes_cross_processes_intact(spawn) -> None:
    values = [os.urandom(6 * MiB), bytearray(os.urandom(5 * MiB)), b"small", os.urandom(6 * MiB)]
    def check(value, got) -> None:
        assert type(got) is type(value) and got == value

    forth, back = SharedMemoryChannel(), SharedMemoryChannel()
    with forth, back:
        peers.echo_each(spawn, forth, back, values, check)


@pytest.mark.timeout(60)
def test_a_stream_of_large_values_cycles_through_one_or_two_buffers(session) -> None:
    with SharedMemoryChannel(num_slots=8) as channel:
        writer, reader = channel.writer(), channel.reader(0)
        for i in range(20):                   # every slot of the ring, more than twice
            value = bytes([i]) * (16 * MiB)
            writer.write(value)
            assert reader.read() == value     # a copy: the buffer is free once read
        assert len(buffer_files(session)) == 1     # not one grown buffer per slot
        for i in range(20):
            array = np.full(16 * MiB, i, dtype=np.uint8)
            writer.write(array)
            np.testing.assert_array_equal(reader.read(), array)
        # a dropped array's pin is cleared at the reader's next read, after the next write:
        # so two buffers take turns
        assert len(buffer_files(session)) == 2


@pytest.mark.timeout(60)
def test_buffers_a_reader_still_views_are_never_reused(spawn, session) -> None:
    values = [np.full(16 * MiB, i, dtype=np.uint8) for i in range(24)]
    with SharedMemoryChannel(num_slots=4) as channel:
        with running(spawn, peers.write_all, channel.writer(), values) as writer:
            reader = channel.reader(0)
            kept = []
            for i in range(len(values)):
                got = reader.read(timeout=20)
                if i % 3 == 0:
                    kept.append((i, got))        # the others are dropped at once
                del got
            writer.join(10)
            assert writer.exitcode == 0
        for i, got in kept:
            np.testing.assert_array_equal(got, values[i])
        assert len(buffer_files(session)) <= 4   # those in flight or held, not one per value
        del kept
        gc.collect()
