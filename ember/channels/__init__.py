"""Data transports of compiled graphs behind one interface (internal).

The compiler picks a ``ChannelType`` per edge (``IntraProcessType`` when both ends share a
process, ``SharedMemoryType`` when they share a node, ``TcpType`` across nodes) and then only calls
the common interface:
``type.create_channel(num_readers, num_slots=...)``, ``channel.writer()`` / ``channel.reader(i)``,
``write(value, timeout)``, ``read(timeout)``, ``release()``, ``close()``, ``destroy()``.
"""

from ember.channels.interface import (DEFAULT_NUM_SLOTS, Channel, ChannelReader, ChannelType,
                                      ChannelWriter)
from ember.channels.intra_process import (IntraProcessChannel, IntraProcessReader,
                                          IntraProcessType, IntraProcessWriter)
from ember.channels.shared_memory import (DEFAULT_SLOT_CAPACITY, SharedMemoryChannel,
                                          SharedMemoryReader, SharedMemoryType,
                                          SharedMemoryWriter)
from ember.channels.tcp import TcpChannel, TcpReader, TcpType, TcpWriter

__all__ = [
    "DEFAULT_NUM_SLOTS",
    "DEFAULT_SLOT_CAPACITY",
    "Channel",
    "ChannelReader",
    "ChannelType",
    "ChannelWriter",
    "IntraProcessChannel",
    "IntraProcessReader",
    "IntraProcessType",
    "IntraProcessWriter",
    "SharedMemoryChannel",
    "SharedMemoryReader",
    "SharedMemoryType",
    "SharedMemoryWriter",
    "TcpChannel",
    "TcpReader",
    "TcpType",
    "TcpWriter",
]
