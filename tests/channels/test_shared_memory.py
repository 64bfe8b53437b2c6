"""SharedMemoryChannel between real processes over real /dev/shm."""

from __future__ import annotations

import contextlib
import gc
import glob
import os
import pickle
import re
import threading
import time

import numpy as np
import pytest

from ember.channels import SharedMemoryType
from ember.channels.shared_memory import SharedMemoryChannel
from ember._system import shm
from ember.exceptions import (ChannelBrokenError, ChannelClosedError, ChannelError,
                              ChannelTimeoutError, ChannelValueTooLargeError)

from . import peers
from .peers import fingerprint, running

VALUES = [0, "text", None, {"a": [1, 2.5]}, np.arange(10), b"x" * 1000,
          np.ones((3, 4), dtype=np.float32), ValueError("carried as a value")]


def session_files(sid: str) -> list[str]:
    """The /dev/shm files of session ``sid``."""
    return sorted(glob.glob(os.path.join(shm.SHM_DIR, f"ember_{sid}_*")))


def expected_fingerprints(values: list) -> list:
    """What a reader should report for ``values``."""
    return [fingerprint(v) for v in values]


def same(a: list, b: list) -> bool:
    """Equal lists of fingerprints, where exceptions are equal by type and message."""
    return len(a) == len(b) and all(
        (type(x) is type(y) and str(x) == str(y)) if isinstance(x, Exception) else x == y
        for x, y in zip(a, b))


@pytest.mark.timeout(30)
def test_values_arrive_in_order_through_a_small_ring(spawn) -> None:
    values = VALUES * 10
    channel = SharedMemoryChannel(num_readers=1, num_slots=3)
    with channel:
        with running(spawn, peers.write_all, channel.writer(), values) as writer:
            reader = channel.reader(0)
            got = [fingerprint(reader.read(timeout=20)) for _ in values]
            writer.join(10)
            assert writer.exitcode == 0
    assert same(got, expected_fingerprints(values))


@pytest.mark.timeout(30)
def test_writer_blocks_when_every_slot_is_unacked_then_times_out(spawn) -> None:
    channel = SharedMemoryChannel(num_readers=1, num_slots=3)
    with channel:
        writer = channel.writer()
        for i in range(3):
            writer.write(i, timeout=0)
        start = time.monotonic()
        with pytest.raises(ChannelTimeoutError, match="slots hold values") as info:
            writer.write(3, timeout=0.3)
        assert time.monotonic() - start >= 0.3
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(ChannelTimeoutError):
            writer.write_nowait(3)
        # a reader in another process frees slots, and the blocked writer goes on
        results = spawn.Queue()
        with running(spawn, peers.read_fingerprints, channel.reader(0), 6, results):
            for i in range(3, 6):
                writer.write(i, timeout=20)
            assert results.get(timeout=20) == list(range(6))


@pytest.mark.timeout(30)
def test_every_reader_sees_every_value_in_order(spawn) -> None:
    values = VALUES * 5
    channel = SharedMemoryType(slot_capacity=256).create_channel(num_readers=3, num_slots=4)
    with channel:
        results = [spawn.Queue() for _ in range(3)]
        with contextlib.ExitStack() as readers:
            for i in range(3):
                readers.enter_context(running(spawn, peers.read_fingerprints, channel.reader(i),
                                              len(values), results[i]))
            peers.write_all(channel.writer(), values)
            for queue in results:
                assert same(queue.get(timeout=20), expected_fingerprints(values))


@pytest.mark.timeout(60)
def test_slots_grow_from_tiny_to_a_10_mib_array(spawn, session) -> None:
    big = np.random.default_rng(0).random(10 * 2**20 // 8)
    values = [1, np.arange(100), big, "small again", big * 2, np.arange(3)]
    forth = SharedMemoryChannel(num_readers=1, num_slots=2, slot_capacity=64)
    back = SharedMemoryChannel(num_readers=1, num_slots=2, slot_capacity=64)

    def check(value, got) -> None:
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got, value)
        else:
            assert got == value

    with forth, back:
        peers.echo_each(spawn, forth, back, values, check)
        # each channel: its header, plus one buffer per grown slot (dropped ones are unlinked;
        # values under 16 MiB grow their own slot, Note [buffer reuse])
        grown = [p for p in session_files(session) if re.search(r"_b\d+$", p)]
        assert len(grown) == 4, grown
    assert session_files(session) == []


@pytest.mark.timeout(30)
def test_a_value_over_max_size_is_refused_and_the_channel_goes_on() -> None:
    with SharedMemoryChannel(num_slots=2, slot_capacity=1024, max_size=1024) as channel:
        writer, reader = channel.writer(), channel.reader(0)
        with pytest.raises(ChannelValueTooLargeError, match="max_size is 1024 bytes") as info:
            writer.write(np.zeros(1000))
        assert isinstance(info.value, ValueError)
        writer.write("fits")
        assert reader.read(timeout=0) == "fits"


@pytest.mark.timeout(30)
def test_arrays_are_read_only_views_that_stay_valid_while_they_live(spawn) -> None:
    ones, twos = np.ones(4096), np.full(4096, 2.0)
    channel = SharedMemoryChannel(num_readers=1, num_slots=1)
    with channel:
        with running(spawn, peers.write_all, channel.writer(), [ones, twos]):
            reader = channel.reader(0)
            first = reader.read(timeout=20)
            assert not first.flags.writeable
            with pytest.raises(ValueError):
                first[0] = 5.0
            # zero-copy: the array lies inside the channel's mapping
            mapping = channel._mapping.segment
            base = np.frombuffer(mapping.mmap, dtype=np.uint8).ctypes.data
            assert base <= first.ctypes.data < base + mapping.size
            # one slot, acked at once: the writer moves the pinned slot instead of overwriting
            second = reader.read(timeout=20)
            np.testing.assert_array_equal(second, twos)
            np.testing.assert_array_equal(first, ones)


@pytest.mark.timeout(30)
def test_read_timeout_is_a_timeout_error() -> None:
    with SharedMemoryChannel() as channel:
        reader = channel.reader(0)
        channel.writer().attach()
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="no new value was written") as info:
            reader.read(timeout=0.25)
        assert 0.25 <= time.monotonic() - start < 5
        assert isinstance(info.value, ChannelTimeoutError)
        with pytest.raises(ChannelTimeoutError):
            reader.read_nowait()


@pytest.mark.timeout(30)
def test_reader_sees_actor_died_when_the_writer_is_killed(spawn) -> None:
    channel = SharedMemoryChannel()
    with channel:
        ready = spawn.Queue()
        with running(spawn, peers.write_and_hang, channel.writer(), ["last words"],
                     ready) as writer:
            assert ready.get(timeout=20) == "written"
            reader = channel.reader(0)
            assert reader.read(timeout=20) == "last words"
            killer = threading.Timer(0.3, writer.kill)
            killer.start()
            start = time.monotonic()
            with pytest.raises(ChannelBrokenError, match=f"writer process {writer.pid}"):
                reader.read(timeout=None)
            assert time.monotonic() - start < 3
            killer.join()


@pytest.mark.timeout(30)
def test_writer_sees_actor_died_when_a_reader_is_killed(spawn) -> None:
    channel = SharedMemoryChannel(num_readers=2, num_slots=2)
    with channel:
        ready = spawn.Queue()
        results = spawn.Queue()
        values = [np.zeros(3), np.ones(3)]
        writer = channel.writer()
        writer.write(values[0])
        with running(spawn, peers.read_and_hang, channel.reader(1), 0, ready) as reader1, \
                running(spawn, peers.read_until_error, channel.reader(0), results):
            assert ready.get(timeout=20) == "read"
            writer.write(values[1], timeout=20)   # reader 1 read nothing: the ring is full
            killer = threading.Timer(0.3, reader1.kill)
            killer.start()
            start = time.monotonic()
            with pytest.raises(ChannelBrokenError, match=f"reader 1 process {reader1.pid}"):
                writer.write(2, timeout=None)
            assert time.monotonic() - start < 3
            killer.join()
            channel.close()
            assert results.get(timeout=20) == ([fingerprint(v) for v in values],
                                               "ChannelClosedError")


@pytest.mark.timeout(30)
def test_close_from_another_process_wakes_a_blocked_reader(spawn) -> None:
    channel = SharedMemoryChannel()
    with channel:
        reader = channel.reader(0)
        with running(spawn, peers.close_after, channel, 0.3):
            start = time.monotonic()
            with pytest.raises(ChannelClosedError, match="was closed") as info:
                reader.read(timeout=20)
            assert time.monotonic() - start < 5
            assert isinstance(info.value, ChannelError)
        channel.close()  # idempotent
        with pytest.raises(ChannelClosedError):
            channel.writer().write(1)


@pytest.mark.timeout(30)
def test_close_wakes_a_blocked_writer() -> None:
    with SharedMemoryChannel(num_slots=1) as channel:
        writer = channel.writer()
        channel.reader(0).attach()
        writer.write(0)
        closer = threading.Timer(0.3, channel.close)
        closer.start()
        with pytest.raises(ChannelClosedError):
            writer.write(1, timeout=20)
        closer.join()


@pytest.mark.timeout(30)
def test_ping_pong_between_processes_with_pickled_handles(spawn) -> None:
    forth, back = SharedMemoryChannel(), SharedMemoryChannel()
    with forth, back:
        # handles travel pickled and attach in the process that uses them
        reader, writer = pickle.loads(pickle.dumps((forth.reader(0), back.writer())))
        with running(spawn, peers.echo, reader, writer, 200):
            out, into = forth.writer(), back.reader(0)
            for i in range(200):
                out.write(i, timeout=20)
                assert into.read(timeout=20) == i


@pytest.mark.timeout(30)
def test_destroy_leaves_nothing_in_dev_shm(session) -> None:
    channel = SharedMemoryChannel(num_slots=2, slot_capacity=64)
    writer, reader = channel.writer(), channel.reader(0)
    for value in (np.zeros(10_000), np.zeros(20_000)):  # both slots grow
        writer.write(value)
        reader.read()
    assert len(session_files(session)) == 3
    channel.destroy()
    channel.destroy()  # idempotent
    assert session_files(session) == []
    with pytest.raises(ChannelClosedError):
        reader.read(timeout=0)


@pytest.mark.timeout(30)
def test_the_creator_owns_the_segments_a_copy_does_not(session) -> None:
    channel = SharedMemoryChannel()
    copy = pickle.loads(pickle.dumps(channel))
    copy.writer().write(1)
    del copy
    gc.collect()
    assert len(session_files(session)) == 1
    reader = pickle.loads(pickle.dumps(channel.reader(0)))  # a handle of a copy
    del channel
    gc.collect()
    assert session_files(session) == []
    with pytest.raises(ChannelClosedError):   # the collected creator closed it too
        reader.read(timeout=0)


@pytest.mark.timeout(30)
def test_a_reader_acks_at_once_and_pins_a_slot_while_its_arrays_live() -> None:
    with SharedMemoryChannel(num_slots=2) as channel:
        writer, reader = channel.writer(), channel.reader(0)
        pins = channel._mapping.pins
        writer.write(np.arange(3))
        writer.write(7)
        array = reader.read()
        view = array[1:]
        del array
        assert view.tolist() == [1, 2] and pins[0] == 2   # slot 0, buffer 1, still viewed
        assert reader.read() == 7 and pins[1] == 0        # a plain value is a copy: no pin
        assert channel._mapping.reader_lines[0].seq == 2  # both acked
        del view
        gc.collect()
        writer.write(8)
        assert reader.read() == 8 and pins[0] == 0        # cleared by the reader's next read


@pytest.mark.timeout(60)
def test_results_kept_by_a_reader_stay_intact_and_slots_move_instead(spawn, session) -> None:
    values = [np.full(10_000, float(i)) for i in range(12)]
    channel = SharedMemoryChannel(num_readers=1, num_slots=2, slot_capacity=1 << 20)
    with channel:
        with running(spawn, peers.write_all, channel.writer(), values) as writer:
            reader = channel.reader(0)
            kept = [reader.read(timeout=20) for _ in values]
            writer.join(10)
            assert writer.exitcode == 0
        for got, want in zip(kept, values):
            np.testing.assert_array_equal(got, want)
        # the header plus, per slot, only its current generation (moved-from ones are unlinked)
        assert len(session_files(session)) == 3
        del kept, got
        gc.collect()
        channel.writer().write("last")
        assert reader.read(timeout=20) == "last"
        assert list(channel._mapping.pins) == [0] * len(channel._mapping.pins)


@pytest.mark.timeout(30)
def test_a_new_writer_handle_follows_slots_that_grew_before_it() -> None:
    with SharedMemoryChannel(num_slots=2, slot_capacity=64) as channel:
        reader = channel.reader(0)
        channel.writer().write(np.arange(1000))            # slot 0 grows
        np.testing.assert_array_equal(reader.read(), np.arange(1000))
        writer = pickle.loads(pickle.dumps(channel)).writer()  # as a restarted writer would
        for value in (np.arange(5), np.arange(2000)):       # slot 1, then the grown slot 0
            writer.write(value)
            np.testing.assert_array_equal(reader.read(), value)


def test_reader_index_out_of_range() -> None:
    with SharedMemoryChannel(num_readers=2) as channel:
        with pytest.raises(ValueError, match="reader index 2 is out of range of 2"):
            channel.reader(2)
