"""ByNodeType and CompositeChannel: readers on the writer's node and on others, one writer."""

from __future__ import annotations

import pytest

from ember.channels import SharedMemoryType, TcpType
from ember.channels.composite import ByNodeType, CompositeChannel
from ember.channels.shared_memory import SharedMemoryChannel
from ember.channels.tcp import TcpChannel
from ember.exceptions import ChannelClosedError, ChannelTimeoutError


def by_node(*reader_nodes: str) -> ByNodeType:
    return ByNodeType("here", reader_nodes, SharedMemoryType(slot_capacity=256), TcpType())


@pytest.mark.timeout(30)
def test_one_transport_when_every_reader_agrees() -> None:
    local = by_node("here", "here").create_channel(2, num_slots=2)
    far = by_node("there", "elsewhere").create_channel(2, num_slots=2)
    assert isinstance(local, SharedMemoryChannel) and isinstance(far, TcpChannel)
    local.destroy()
    far.destroy()


@pytest.mark.timeout(30)
def test_a_mixed_edge_delivers_in_order_and_a_timeout_writes_nowhere() -> None:
    channel = by_node("there", "here", "there").create_channel(3, num_slots=1)
    assert isinstance(channel, CompositeChannel)
    assert channel.rendezvous_readers() == (0, 2)
    writer = channel.writer()
    readers = [channel.reader(i) for i in range(3)]
    writer.write("first")
    assert readers[0].read(timeout=5) == "first" and readers[2].read(timeout=5) == "first"
    with pytest.raises(ChannelTimeoutError):      # reader 1 (shared memory) holds the slot
        writer.write("second", timeout=0.2)
    for far in (readers[0], readers[2]):
        with pytest.raises(ChannelTimeoutError):  # so the TCP readers got nothing either
            far.read(timeout=0.2)
    assert readers[1].read(timeout=5) == "first"
    writer.write("second", timeout=5)             # the retry goes to everyone once
    assert [r.read(timeout=5) for r in readers] == ["second"] * 3
    channel.close()
    for reader in readers:
        with pytest.raises(ChannelClosedError):
            reader.read(timeout=5)
    channel.destroy()
