"""Data transports of compiled graphs behind one interface.

The compiler picks a ``ChannelType`` per edge (``IntraProcessType`` when both ends share a
process, ``SharedMemoryType`` when they share a node, ``TcpType`` across nodes) and then only calls
the common interface:
``type.create_channel(num_readers, num_slots=...)``, ``channel.writer()`` / ``channel.reader(i)``,
``write(value, timeout)``, ``read(timeout)``, ``release()``, ``close()``, ``destroy()``.
The package exports that interface and the three types; the channel classes behind them live in
their modules (``ember.channels.shared_memory`` and so on).

Its names load their module on first use (Note [lazy exports] in ember/lazy_exports.py).
"""

from __future__ import annotations

from ember.lazy_exports import lazy_exports

_EXPORTS = {name: f"ember.channels.{module}" for module, names in {
    "interface": ["Channel", "ChannelReader", "ChannelType", "ChannelWriter"],
    "intra_process": ["IntraProcessType"],
    "shared_memory": ["SharedMemoryType"],
    "tcp": ["TcpType"],
}.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
