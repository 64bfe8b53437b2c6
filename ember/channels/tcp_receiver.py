"""One reader of a TCP channel in its own process: the listener, the receiving thread, the ring.

``prepare`` makes the end (Note [tcp channel rendezvous] in tcp.py); its thread accepts the
writer's connection and closes, and receives every value into the ring as it arrives, so that a
writer with credit never waits for the reader's ``read`` (Note [tcp credits] in tcp.py).
Handshakes run on short-lived threads of their own, so a silent or garbage peer never stalls
the ring, and the listener keeps serving after dropping it.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
import weakref
from collections import deque

import numpy

from ember.channels import tcp_wire
from ember.channels.tcp_wire import ADMITTED, CLOSE, CLOSER, CLOSED, HELLO, VALUE, WRITER, Inbox
from ember.exceptions import ChannelBrokenError, ChannelClosedError, ChannelTimeoutError

OPEN, CLOSING, CLOSED_STATE, BROKEN = range(4)
_QUIET_S = 0.05      # a close from elsewhere still takes in what arrives until this long a lull
_CLOSING_WAIT_S = 1.0   # how long a read that tries once waits for a close to take that in
_LARGE = 64 * 1024   # values this large are received into numpy memory (no zero-fill)

_ENDS: "weakref.WeakValueDictionary[tuple[bytes, int], ReceiverEnd]" = (
    weakref.WeakValueDictionary())
_ENDS_LOCK = threading.Lock()
_FINISHED: set[bytes] = set()   # ids of channels whose end here saw a close (or broke)


def prepare(channel_id: bytes, index: int, label: str) -> "ReceiverEnd":
    """Reader ``index`` of the channel in this process, made and listening on first call."""
    with _ENDS_LOCK:
        end = _ENDS.get((channel_id, index))
        if end is None:
            end = _ENDS[(channel_id, index)] = ReceiverEnd(channel_id, index, label)
        return end


def find(channel_id: bytes, index: int) -> "ReceiverEnd | None":
    """Reader ``index``'s end in this process, if it was prepared here."""
    return _ENDS.get((channel_id, index))


def finished_here(channel_id: bytes) -> bool:
    """Whether an end of this channel in this process saw it closed or broken."""
    return channel_id in _FINISHED


class ReceiverEnd:
    """The state of one reader in its process; every TcpReader handle of it shares this."""

    def __init__(self, channel_id: bytes, index: int, label: str) -> None:
        self.channel_id = channel_id
        self.index = index
        self.label = label
        self._listener = tcp_wire.listen()
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._cond = threading.Condition()
        self._ring: deque[memoryview] = deque()
        self._state = OPEN
        self._error: BaseException | None = None
        self._writer_claimed = False
        self._inbox: Inbox | None = None
        self._rx_lock = threading.Lock()      # one thread receives at a time
        self._send_lock = threading.Lock()    # acks against the socket's close
        self._data_open = False
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"ember-tcp-reader-{channel_id.hex()[:8]}-{index}")
        self._thread.start()

    # -- the reading side (any thread of the reader) ---------------------------------------------

    def take(self, timeout: float | None) -> memoryview:
        """The next frame received, waiting per Note [channel timeouts]; acks it."""
        if not self._ring and timeout == 0:
            self._receive()   # try once: what has arrived, even if the thread did not wake yet
        with self._cond:
            if not self._ring:
                if timeout != 0:
                    self._cond.wait_for(self._ready, timeout)
                elif self._state == CLOSING:   # what the close still takes in comes first
                    self._cond.wait_for(self._ready, _CLOSING_WAIT_S)
                if not self._ring:
                    raise self._empty_error(timeout)
            frame = self._ring.popleft()
        with self._send_lock:
            if self._data_open:
                try:
                    self._inbox.sock.send(tcp_wire.ACK)
                except OSError:
                    pass   # the receiving thread sees the connection end and reports it
        return frame

    def _ready(self) -> bool:
        return bool(self._ring) or self._state >= CLOSED_STATE

    def _empty_error(self, timeout: float | None) -> Exception:
        if self._state == BROKEN:
            error = ChannelBrokenError(
                f"the writer of {self.label} is gone: its connection ended without a close "
                f"({self._error}), so its process or node died; the graph cannot go on, tear "
                f"it down (its actor may be restarted)")
            error.__cause__ = self._error
            return error
        if self._state != OPEN:
            return ChannelClosedError(f"{self.label} was closed; read is not possible any more")
        return ChannelTimeoutError(f"read on {self.label} timed out after {timeout} s: no new "
                                   f"value was written; retry, or pass a longer timeout")

    def request_close(self) -> None:
        """Close this reader (Note [channel close]); never blocks: the thread takes in what
        is still arriving, then tells the writer."""
        with self._cond:
            if self._state != OPEN:
                return
            self._state = CLOSING
        self._command(("close", None))

    # -- the receiving thread --------------------------------------------------------------------

    def _command(self, command: tuple) -> None:
        self._commands.put(command)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass   # the thread is done

    def _run(self) -> None:
        poller = select.poll()
        listener, wake = self._listener.fileno(), self._wake_r.fileno()
        poller.register(listener, select.POLLIN)
        poller.register(wake, select.POLLIN)
        try:
            while self._state < CLOSED_STATE:
                for fd, _ in poller.poll():
                    if fd == listener:
                        self._accept()
                    elif fd == wake:
                        self._wake_r.recv(4096)
                        self._run_commands(poller)
                    else:
                        self._receive()
        except Exception as exc:  # noqa: BLE001 - a broken end must say so, never hang readers
            self._finish(BROKEN, exc)
        finally:
            self._shut_down()

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        threading.Thread(target=self._admit, args=(conn,), daemon=True,
                         name="ember-tcp-admit").start()

    def _admit(self, conn: socket.socket) -> None:
        """Handshake with a new connection and hand it to the thread (in its own thread)."""
        hello = tcp_wire.admit(conn)
        if hello is None:
            return
        role, channel_id, index = HELLO.unpack(hello)
        with self._cond:
            ok = (channel_id == self.channel_id and index == self.index
                  and self._state == OPEN and (role == CLOSER or not self._writer_claimed))
            if ok and role == WRITER:
                self._writer_claimed = True
        if ok and role in (WRITER, CLOSER):
            # in place before the peer hears ADMITTED: what it does next comes after it
            if role == WRITER:
                with self._send_lock:
                    self._inbox = Inbox(conn)
                    self._data_open = True
            self._command(("writer", conn) if role == WRITER else ("close", None))
            try:
                conn.sendall(ADMITTED)
            except OSError:
                pass
            if role == WRITER:
                return
        conn.close()

    def _run_commands(self, poller: select.poll) -> None:
        while True:
            try:
                kind, conn = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "writer":
                poller.register(conn.fileno(), select.POLLIN)
            elif kind == "close":
                self._drain_then_close()
            # "done": only wakes the loop, which sees the state

    def _drain_then_close(self) -> None:
        """A close from this process or another: take in what still arrives, then close."""
        if self._inbox is not None:
            data = select.poll()
            data.register(self._inbox.sock.fileno(), select.POLLIN)
            while self._state < CLOSED_STATE and (self._inbox.buffered()
                                                   or data.poll(_QUIET_S * 1000)):
                self._receive()
        self._finish(CLOSED_STATE)

    def _receive(self) -> None:
        with self._rx_lock:
            self._pump()

    def _pump(self) -> None:
        """Take in every record that has arrived (under the receive lock)."""
        inbox = self._inbox
        if inbox is None or self._state >= CLOSED_STATE:
            return
        try:
            while True:
                record = inbox.record()
                if record is None:
                    return
                kind, length = record
                if kind == VALUE:
                    frame = memoryview(numpy.empty(length, numpy.uint8) if length >= _LARGE
                                       else bytearray(length))
                    inbox.read_into(frame)
                    with self._cond:
                        self._ring.append(frame)
                        self._cond.notify_all()
                elif kind == CLOSE:
                    self._finish(CLOSED_STATE)
                    return
                else:
                    raise ConnectionError(f"an unknown record kind {kind} from the writer")
        except (OSError, ConnectionError) as exc:
            self._finish(BROKEN, exc)

    def _finish(self, state: int, error: BaseException | None = None) -> None:
        with self._cond:
            if self._state >= CLOSED_STATE:
                return
            self._state, self._error = state, error
            self._cond.notify_all()
        _FINISHED.add(self.channel_id)
        self._command(("done", None))   # wakes the thread, wherever this runs

    def _shut_down(self) -> None:
        """Free the sockets once the end is closed or broken (the ring stays readable)."""
        self._listener.close()
        with self._send_lock:
            self._data_open = False
        if self._inbox is not None:
            sock = self._inbox.sock
            if self._state == CLOSED_STATE:
                try:
                    sock.send(CLOSED)   # wakes a writer that waits for credit
                except OSError:
                    pass
                tcp_wire.linger(sock)
            else:
                sock.close()
        while True:
            try:
                kind, conn = self._commands.get_nowait()
            except queue.Empty:
                break
            if kind == "writer":
                conn.close()
        self._wake_r.close()
        self._wake_w.close()
