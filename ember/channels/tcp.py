"""A channel between processes on different nodes: the writer pushes each value over TCP to
every reader, whose end keeps a ring of them.

The wire (handshake, records, sends) is ``tcp_wire``; a reader's end in its process is
``tcp_receiver``; this module is the channel object, the rendezvous and the writer.

Note [tcp channel rendezvous]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The driver creates a channel at compile time, but only a reader's own process can listen on
its node. So readers listen and the writer connects, in two steps:

1. the compiler asks the process of each reader in ``rendezvous_readers()`` to run
   ``prepare_reader(i)`` on its copy of the channel: that binds a listening socket on the
   node's address (EMBER_NODE_IP, port 0), starts the end's background thread, keeps the end in
   the process (found again by the channel's id) and returns (host, port);
2. the compiler records each address in its object (``set_reader_address``) and only then
   ships the channel to the loops: the copies carry the addresses, and the writer's ``attach``
   connects to each reader, passes the handshake, and says which channel and reader it writes.

Both steps use the compile-time calls into actors the compiler makes anyway. A reader in the
creator's own process that has no address yet is prepared there on first use (a channel used
within one process, or a test whose readers stay in the creating process). A connection that
fails the handshake, or names another channel, is dropped and the listener keeps serving.
An end whose writer never comes (its driver died between the steps) lives on with its process.

Note [tcp credits]
~~~~~~~~~~~~~~~~~~
The writer holds ``num_slots`` credits per reader and spends one per value; a reader gives one
back (an ACK byte) for each value ``read`` takes from its ring, at once or owed until its
process next waits on a channel (Note [deferred acks] in spin.py). So a reader's ring never
holds more than ``num_slots`` values, the writer never sends to a reader without room (its
end takes in what arrives even while nobody reads: Note [tcp receiving] in tcp_receiver.py),
and a write that finds a reader without credit waits in poll() on that reader's connection:
back-pressure without polling. A write first waits for credit on every reader its count
says has none (the part a timeout may cut short, leaving everything as it was), then sends the
whole value, which takes what the network takes: a peer that dies meanwhile ends the send with
an error (Note [tcp liveness] in tcp_wire.py). Only then does it take in the acks that have
come, with one recv per reader that does not wait (a short one was all of them), so that
system call is off the value's way; the same recv finds a CLOSED or the end of a broken
connection, and the write raises it. So the first write after a reader closed may send a value
no one reads, and raises ChannelClosedError once sent; the writes after it raise before.

Close (Note [channel close]): the writer's close sends a CLOSE record after its last value, so
every reader gets every value and then ChannelClosedError. A close in any other process (a
reader, the driver) closes the ends in that process and asks the listener of every other
reader to close, over a connection that passes the same handshake; a closing reader still
takes in what arrives until a short lull (on one node: everything written before the close),
then tells the writer (a CLOSED byte), which wakes a blocked write. A connection that ends
without a CLOSE or CLOSED is ChannelBrokenError on the other side.
"""

from __future__ import annotations

import math
import select
import socket
import threading
import time
import uuid
import weakref
from typing import Any

from ember.channels import spin, tcp_receiver, tcp_wire
from ember.channels.interface import (DEFAULT_NUM_SLOTS, Channel, ChannelReader, ChannelType,
                                      ChannelWriter)
from ember.channels.tcp_wire import ACK, ASK, ASKER, CLOSE, CLOSED, CLOSER, HELLO, RECORD, WRITER
from ember._system.serialization import deserialize, serialize
from ember.exceptions import ChannelBrokenError, ChannelClosedError, ChannelTimeoutError

_CLOSE_TIMEOUT_S = 2.0
_ASK_AFTER_S = 0.002   # a write that waits this long for credit asks for it (Note [deferred acks])
_ACKS_AT_ONCE = 4096
_OPEN, _CLOSED, _BROKEN = range(3)
_CLOSED_HERE: set[bytes] = set()      # channels that close() ran on in this process
_WRITERS: dict[bytes, "weakref.WeakSet[TcpWriter]"] = {}
_WRITERS_LOCK = threading.Lock()


class TcpChannel(Channel):
    """A channel whose readers may be on other nodes than its writer; pickle it to send it to
    a peer. Needs the rendezvous of Note [tcp channel rendezvous] before the writer attaches."""

    def __init__(self, num_readers: int = 1, num_slots: int = DEFAULT_NUM_SLOTS) -> None:
        if num_readers < 1 or num_slots < 1:
            raise ValueError(f"a channel needs num_readers >= 1 and num_slots >= 1, got "
                             f"num_readers={num_readers}, num_slots={num_slots}")
        self._set_fields(uuid.uuid4().bytes, num_readers, num_slots, (None,) * num_readers, True)

    def _set_fields(self, channel_id: bytes, num_readers: int, num_slots: int,
                    addresses: tuple, creator: bool) -> None:
        self.id = channel_id
        self.num_readers = num_readers
        self.num_slots = num_slots
        self.addresses: list[tuple[str, int] | None] = list(addresses)
        self._creator = creator
        self._ends: dict[int, tcp_receiver.ReceiverEnd] = {}   # the ones prepared through self

    @classmethod
    def _unpickle(cls, channel_id: bytes, num_readers: int, num_slots: int,
                  addresses: tuple) -> "TcpChannel":
        channel = cls.__new__(cls)
        channel._set_fields(channel_id, num_readers, num_slots, addresses, False)
        return channel

    def __reduce__(self) -> tuple:
        return (TcpChannel._unpickle,
                (self.id, self.num_readers, self.num_slots, tuple(self.addresses)))

    def __repr__(self) -> str:
        return (f"TcpChannel({self.id.hex()[:12]!r}, num_readers={self.num_readers}, "
                f"num_slots={self.num_slots})")

    def writer(self) -> "TcpWriter":
        """Return the writer handle; it connects to every reader when first used."""
        return TcpWriter(self)

    def reader(self, index: int = 0) -> "TcpReader":
        """Return the handle of reader ``index``; use it in the process that prepared it."""
        self.check_reader_index(index)
        return TcpReader(self, index)

    def rendezvous_readers(self) -> tuple[int, ...]:
        """Every reader listens in its own process (Note [tcp channel rendezvous])."""
        return tuple(range(self.num_readers))

    def prepare_reader(self, index: int) -> tuple[str, int]:
        """Listen for reader ``index`` in this process; return its (host, port)."""
        self.check_reader_index(index)
        end = self._ends[index] = tcp_receiver.prepare(self.id, index, repr(self), self.num_slots)
        return end.address

    def set_reader_address(self, index: int, address: Any) -> None:
        """Record where reader ``index`` listens (in the creator's object, before shipping)."""
        self.check_reader_index(index)
        self.addresses[index] = (str(address[0]), int(address[1]))

    def _end(self, index: int) -> "tcp_receiver.ReceiverEnd":
        """Reader ``index``'s end in this process (prepared here by the creator if need be)."""
        end = self._ends.get(index) or tcp_receiver.find(self.id, index)
        if end is not None:
            return end
        if self._creator and self.addresses[index] is None:
            self.addresses[index] = self.prepare_reader(index)
            return self._ends[index]
        if self.id in _CLOSED_HERE or tcp_receiver.finished_here(self.id):
            raise ChannelClosedError(f"{self!r} was closed; read is not possible any more")
        raise ChannelClosedError(
            f"reader {index} of {self!r} has no end in this process: it listens in the process "
            f"that ran prepare_reader({index}) (Note [tcp channel rendezvous]), or it was closed")

    def _address(self, index: int) -> tuple[str, int]:
        """Where reader ``index`` listens, for the writer."""
        if self.addresses[index] is None:
            if not self._creator:
                raise ChannelClosedError(
                    f"reader {index} of {self!r} has no address: the channel was shipped "
                    f"before its rendezvous (Note [tcp channel rendezvous])")
            self.addresses[index] = self.prepare_reader(index)
        return self.addresses[index]

    def close(self) -> None:
        """Close every end in this process and ask the other readers' listeners to close
        (Note [tcp credits]); idempotent, never blocks."""
        with _WRITERS_LOCK:
            if self.id in _CLOSED_HERE:
                return
            _CLOSED_HERE.add(self.id)
            writers = list(_WRITERS.pop(self.id, ()))
        for writer in writers:
            writer._close_local()
        targets = []
        for index, address in enumerate(self.addresses):
            end = self._ends.get(index) or tcp_receiver.find(self.id, index)
            if end is not None:
                end.request_close()
            elif address is not None and not any(w._connected for w in writers):
                targets.append((index, address))
        if targets:   # not a daemon: a process that closes and exits still delivers it
            threading.Thread(target=_ask_to_close, args=(self.id, targets),
                             name="ember-tcp-close").start()

    def destroy(self) -> None:
        """Close the channel; its memory is the ends' rings, freed with their processes' handles."""
        self.close()


def _ask_to_close(channel_id: bytes, targets: list[tuple[int, tuple[str, int]]]) -> None:
    """Ask each reader's listener to close (best effort: one that is gone is closed already)."""
    for index, address in targets:
        try:
            tcp_wire.connect(address, HELLO.pack(CLOSER, channel_id, index),
                             _CLOSE_TIMEOUT_S).close()
        except Exception:  # noqa: BLE001 - a reader that cannot be reached is gone
            pass


def _release(socks: list[socket.socket], askers: list[socket.socket | None]) -> None:
    """Finalizer of a writer handle: let its connections go once the readers read them."""
    for sock in socks:
        tcp_wire.linger(sock)
    for sock in askers:
        if sock is not None:
            sock.close()


class TcpWriter(ChannelWriter):
    """The writing end of a TcpChannel; pickles as its channel."""

    __slots__ = ("channel", "_socks", "_askers", "_credits", "_state", "_error", "_send_lock",
                 "_closing", "_close_sent", "_what", "__weakref__")

    def __init__(self, channel: TcpChannel) -> None:
        self.channel = channel
        self._socks: list[socket.socket] | None = None   # set by attach(), with _credits
        self._state = _OPEN
        self._send_lock = threading.Lock()
        self._closing = False
        self._close_sent = False
        self._what = f"a value written to {channel!r}"

    def __reduce__(self) -> tuple:
        return (TcpWriter, (self.channel,))

    @property
    def _connected(self) -> bool:
        return self._socks is not None

    def attach(self) -> None:
        """Connect to every reader (done by the first write otherwise)."""
        if self._socks is not None:
            return
        channel = self.channel
        if channel.id in _CLOSED_HERE:
            raise ChannelClosedError(f"{channel!r} was closed; write is not possible any more")
        socks: list[socket.socket] = []
        try:
            for index in range(channel.num_readers):
                address = channel._address(index)
                try:
                    socks.append(tcp_wire.connect(address, HELLO.pack(WRITER, channel.id, index)))
                except (OSError, ConnectionError) as exc:
                    raise ChannelBrokenError(
                        f"cannot connect to reader {index} of {channel!r} at "
                        f"{address[0]}:{address[1]}: {exc}; its process or node is gone, or "
                        f"the channel was closed") from exc
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        self._credits = [channel.num_slots] * channel.num_readers
        self._askers: list[socket.socket | None] = [None] * channel.num_readers   # made on need
        self._socks = socks
        weakref.finalize(self, _release, socks, self._askers)
        with _WRITERS_LOCK:
            _WRITERS.setdefault(channel.id, weakref.WeakSet()).add(self)

    def write(self, value: Any, timeout: float | None = None) -> None:
        """Send ``value`` to every reader once each has a free slot (Note [tcp credits])."""
        if self._socks is None:
            self.attach()
        if self._state != _OPEN:
            raise self._state_error()
        frame = serialize(value, self._what)
        socks, credits = self._socks, self._credits
        if min(credits) <= 0:
            self.wait_writable(timeout)
        parts = tcp_wire.value_parts(frame)
        try:
            with self._send_lock:
                for index, sock in enumerate(socks):
                    try:
                        tcp_wire.send_parts(sock, parts.copy() if len(socks) > 1 else parts)
                    except OSError as exc:
                        self._drain(index, quiet=True)
                        raise self._fail(exc) from exc
                    credits[index] -= 1
        finally:
            if self._closing:   # a close while this write was sending (see _send_close)
                self._send_close()
        for index in range(len(socks)):   # after the send: off the value's way
            self._drain(index)

    def wait_writable(self, timeout: float | None = None) -> None:
        """Wait until every reader has credit (Note [tcp credits])."""
        if self._socks is None:
            self.attach()
        credits = self._credits
        for index in range(len(credits)):
            self._drain(index)
        if min(credits) > 0:
            return
        if timeout == 0:
            raise self._timeout_error(timeout)
        spin.pay_debts()   # Note [deferred acks] in spin.py
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        ask_at = now + _ASK_AFTER_S
        poller = select.poll()
        fds = {}
        for index, sock in enumerate(self._socks):
            if credits[index] <= 0:
                fds[sock.fileno()] = index
                poller.register(sock, select.POLLIN)
        while True:
            until = min((t for t in (ask_at, deadline) if t is not None), default=None)
            wait_ms = None if until is None else max(0, math.ceil((until - time.monotonic()) * 1e3))
            for fd, _ in poller.poll(wait_ms):
                self._drain(fds[fd])
                if credits[fds[fd]] > 0:
                    poller.unregister(fd)
            if min(credits) > 0:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise self._timeout_error(timeout)
            if ask_at is not None and now >= ask_at:
                ask_at = None
                for index, credit in enumerate(credits):
                    if credit <= 0:
                        self._ask_for_credit(index, deadline)

    def _ask_for_credit(self, index: int, deadline: float | None) -> None:
        """Ask reader ``index`` to pay the acks its process owes (Note [deferred acks] in
        spin.py), over a connection of its own, made on the first ask; best effort: the data
        connection tells what became of a reader that cannot be asked."""
        sock = self._askers[index]
        try:
            if sock is None:
                timeout = tcp_wire.CONNECT_TIMEOUT_S
                if deadline is not None:
                    timeout = max(0.01, min(timeout, deadline - time.monotonic()))
                sock = self._askers[index] = tcp_wire.connect(
                    self.channel._address(index), HELLO.pack(ASKER, self.channel.id, index),
                    timeout)
            sock.send(ASK, socket.MSG_DONTWAIT)
        except (OSError, ConnectionError):
            pass

    def _drain(self, index: int, quiet: bool = False) -> None:
        """Take in reader ``index``'s acks and closes without waiting; raise if it closed or
        broke (``quiet``: only note it)."""
        sock = self._socks[index]
        while self._state == _OPEN:
            try:
                data = sock.recv(_ACKS_AT_ONCE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                error = self._fail(exc)
            else:
                if data and CLOSED not in data:
                    self._credits[index] += data.count(ACK)
                    if len(data) < _ACKS_AT_ONCE:
                        return   # that was all (one recv per write, not two)
                    continue
                if data:   # a reader closed: so is the channel, for every reader
                    self._close_local()
                    error = self._state_error()
                else:
                    error = self._fail(ConnectionError(f"reader {index} closed its connection "
                                                       f"without a close"))
            if not quiet:
                raise error
            return
        if not quiet:
            raise self._state_error()

    def _fail(self, exc: BaseException) -> Exception:
        """The error of a connection that ended: closed if a close came first, else broken."""
        if self._state == _OPEN:
            self._state, self._error = _BROKEN, exc
        return self._state_error()

    def _state_error(self) -> Exception:
        if self._state == _BROKEN:
            return tcp_wire.peer_gone(f"a reader of {self.channel!r}", self._error)
        return ChannelClosedError(f"{self.channel!r} was closed; write is not possible any more")

    def _timeout_error(self, timeout: float | None) -> ChannelTimeoutError:
        lagging = [i for i, c in enumerate(self._credits) if c <= 0]
        return ChannelTimeoutError(
            f"write on {self.channel!r} timed out after {timeout} s: all {self.channel.num_slots} "
            f"slots hold values that reader {lagging[0]} has not read yet; retry, or pass a "
            f"longer timeout")

    def _close_local(self) -> None:
        """Close from this process: a CLOSE after the last value, to every reader."""
        if self._state == _OPEN:
            self._state = _CLOSED
        self._closing = True
        if self._socks is not None:
            self._send_close()

    def _send_close(self) -> None:
        """Send CLOSE to every reader once, unless a write in another thread is sending (then
        that write sends it when done)."""
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            if self._close_sent:
                return
            self._close_sent = True
            record = RECORD.pack(CLOSE, 0)
            for sock in self._socks:
                try:
                    sock.sendall(record)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass   # that reader is gone
        finally:
            self._send_lock.release()

    def close(self) -> None:
        """Close the whole channel (see Note [channel close])."""
        self.channel.close()


class TcpReader(ChannelReader):
    """One reading end of a TcpChannel; pickles as (channel, index)."""

    __slots__ = ("channel", "index", "_end", "_what")

    def __init__(self, channel: TcpChannel, index: int) -> None:
        self.channel = channel
        self.index = index
        self._end: tcp_receiver.ReceiverEnd | None = None
        self._what = f"a value read from {channel!r}"

    def __reduce__(self) -> tuple:
        return (TcpReader, (self.channel, self.index))

    def attach(self) -> None:
        """Find this reader's end in this process (Note [tcp channel rendezvous])."""
        if self._end is None:
            self._end = self.channel._end(self.index)

    def read(self, timeout: float | None = None) -> Any:
        """Return the next value; it owns its memory (arrays are writable)."""
        if self._end is None:
            self.attach()
        return deserialize(self._end.take(timeout), self._what)

    def close(self) -> None:
        """Close the whole channel (see Note [channel close])."""
        self.channel.close()


class TcpType(ChannelType):
    """The transport for an edge whose reader is on another node than its writer."""

    def create_channel(self, num_readers: int = 1, *,
                       num_slots: int = DEFAULT_NUM_SLOTS) -> TcpChannel:
        """Create a TcpChannel; its readers listen where they are prepared."""
        return TcpChannel(num_readers, num_slots)

    def __repr__(self) -> str:
        return "TcpType()"
