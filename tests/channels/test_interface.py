"""The public names of ember.channels, and the common interface of its transports."""

from __future__ import annotations

import pytest

import ember.channels as channels
from ember.channels import ChannelType, IntraProcessType, SharedMemoryType, TcpType
from ember.exceptions import ChannelClosedError


def test_public_names_are_exactly_the_interface_and_transports() -> None:
    assert sorted(channels.__all__) == sorted([
        "Channel", "ChannelReader", "ChannelType", "ChannelWriter", "IntraProcessType",
        "SharedMemoryType", "TcpType"])
    for name in channels.__all__:
        assert hasattr(channels, name), name


@pytest.mark.timeout(30)
@pytest.mark.parametrize("channel_type", [IntraProcessType(), SharedMemoryType(), TcpType()],
                         ids=repr)
def test_every_transport_behaves_the_same(channel_type: ChannelType) -> None:
    channel = channel_type.create_channel(num_readers=2, num_slots=2)
    writer = channel.writer()
    readers = [channel.reader(0), channel.reader(1)]
    writer.attach()
    for reader in readers:
        reader.attach()
    writer.write({"step": 1})
    writer.write([2])
    with pytest.raises(TimeoutError):
        writer.write_nowait(3)
    assert [r.read(timeout=0) for r in readers] == [{"step": 1}] * 2
    assert [r.read_nowait() for r in readers] == [[2], [2]]
    for reader in readers:
        reader.release()   # nothing to give back on host channels; always allowed
    channel.close()
    channel.close()
    with pytest.raises(ChannelClosedError):
        readers[0].read(timeout=0)
    channel.destroy()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("channel_type", [IntraProcessType(), SharedMemoryType(slot_capacity=64),
                                          TcpType()], ids=repr)
def test_values_written_before_a_close_are_still_read(channel_type: ChannelType) -> None:
    channel = channel_type.create_channel(num_readers=2, num_slots=4)
    writer, readers = channel.writer(), [channel.reader(0), channel.reader(1)]
    values = [1, b"x" * 1000, "three"]        # the bytes outgrow a 64-byte slot
    for value in values:
        writer.write(value)
    channel.close()
    with pytest.raises(ChannelClosedError):
        writer.write(4)
    for reader in readers:
        assert [reader.read(timeout=0), reader.read(timeout=5), reader.read()] == values
        with pytest.raises(ChannelClosedError):
            reader.read(timeout=5)
    channel.destroy()
