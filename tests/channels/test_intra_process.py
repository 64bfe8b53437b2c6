"""IntraProcessChannel between threads of one process."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from ember.channels import IntraProcessType
from ember.channels.intra_process import IntraProcessChannel
from ember.exceptions import ChannelClosedError, ChannelTimeoutError


@pytest.mark.timeout(30)
def test_every_reader_sees_every_value_in_order_through_a_small_buffer() -> None:
    channel = IntraProcessType().create_channel(num_readers=3, num_slots=2)
    values = list(range(200))
    results: dict[int, list] = {}

    def read_all(index: int) -> None:
        reader = channel.reader(index)
        results[index] = [reader.read(timeout=20) for _ in values]

    threads = [threading.Thread(target=read_all, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    writer = channel.writer()
    for value in values:
        writer.write(value, timeout=20)
    for thread in threads:
        thread.join()
    assert results == {0: values, 1: values, 2: values}
    channel.destroy()


@pytest.mark.timeout(30)
def test_values_are_handed_over_without_a_copy() -> None:
    channel = IntraProcessChannel()
    value = {"big": bytearray(10)}
    channel.writer().write(value)
    assert channel.reader(0).read() is value


@pytest.mark.timeout(30)
def test_writer_blocks_when_full_and_times_out() -> None:
    channel = IntraProcessChannel(num_readers=2, num_slots=2)
    writer = channel.writer()
    writer.write(1)
    writer.write(2)
    channel.reader(0).read()  # reader 1 still has both values unread
    start = time.monotonic()
    with pytest.raises(ChannelTimeoutError, match="timed out after 0.2 s") as info:
        writer.write(3, timeout=0.2)
    assert time.monotonic() - start >= 0.2
    assert isinstance(info.value, TimeoutError)
    with pytest.raises(ChannelTimeoutError):
        writer.write_nowait(3)
    assert channel.reader(1).read() == 1
    writer.write_nowait(3)
    assert [channel.reader(0).read(), channel.reader(0).read()] == [2, 3]


@pytest.mark.timeout(30)
def test_read_timeout_is_a_timeout_error() -> None:
    reader = IntraProcessChannel().reader(0)
    with pytest.raises(TimeoutError):
        reader.read(timeout=0.1)
    with pytest.raises(ChannelTimeoutError):
        reader.read_nowait()


@pytest.mark.timeout(30)
def test_close_wakes_a_blocked_reader_and_is_idempotent() -> None:
    channel = IntraProcessChannel()
    closer = threading.Timer(0.2, channel.close)
    closer.start()
    with pytest.raises(ChannelClosedError, match="is closed"):
        channel.reader(0).read(timeout=20)
    closer.join()
    channel.close()
    with pytest.raises(ChannelClosedError):
        channel.writer().write(1)


@pytest.mark.timeout(30)
def test_pickled_copies_in_one_process_share_the_channel() -> None:
    channel = IntraProcessChannel(num_readers=1, num_slots=4)
    writer, reader = pickle.loads(pickle.dumps(channel.writer())), channel.reader(0)
    writer.write("through a copy")
    assert reader.read(timeout=0) == "through a copy"
    channel.destroy()
    with pytest.raises(ChannelClosedError):
        writer.write(1)
