"""The wire of TCP channels: authenticated connections, the records, zero-copy sends and receives.

A connection passes the cluster handshake (Note [connection handshake] in cluster_auth.py), then
the connecting side sends one ``HELLO`` (its role, the channel's id and the reader's index) and
the listening side answers ``ADMITTED`` once the connection is handed to the reader's end, so a
writer's ``attach`` returns only when the reader will see what it sends next.

Records, writer -> reader: ``RECORD`` (kind, length) then, for VALUE, ``length`` bytes of a
serialized frame laid out as ``Serialized.write_into`` lays it out; CLOSE ends the stream.
Reader -> writer: one byte per record, ACK (a value was read: one credit back) or CLOSED.
A writer that waits long for credit may open a second connection, ASKER, and send an ASK byte
on it: the reader's end then pays the acks its process owes (Note [deferred acks] in spin.py).
"""

from __future__ import annotations

import os
import socket
import struct
import threading

from ember._system import auth, cluster_auth
from ember._system.serialization import Serialized
from ember.exceptions import ChannelBrokenError

RECORD = struct.Struct("<BQ")        # kind, length of what follows
VALUE, CLOSE = 1, 2
HELLO = struct.Struct("<c16sI")      # role, channel id, reader index
WRITER, CLOSER = b"W", b"C"          # roles: the writer's data connection, a close request
ASKER = b"N"                         # role: the writer's credit requests (Note [deferred acks])
ADMITTED = b"K"
ACK, CLOSED = b"A", b"C"             # reader -> writer
ASK = b"N"                           # writer -> reader, on an ASKER connection
CONNECT_TIMEOUT_S = cluster_auth.HANDSHAKE_TIMEOUT_S
LINGER_S = 30.0
_ZEROS = memoryview(bytes(64))
_IOV_MAX = 512                       # iovecs per sendmsg (Linux allows 1024)
_STAGING = 256 * 1024                # the receive buffer that what has arrived goes into

# Note [tcp liveness]
# ~~~~~~~~~~~~~~~~~~~
# A peer's process that dies has its sockets closed by its kernel: the other end reads EOF (or
# a reset) at once, without a CLOSE record before it, which is ChannelBrokenError. A node that
# vanishes sends nothing; keepalive probes (idle 2 s, then every 1 s, 3 unanswered) find an
# idle connection dead within ~5 s, and TCP_USER_TIMEOUT bounds how long sent data may stay
# unacknowledged (5 s). Waits never poll with sleeps: a blocked reader polls its socket for a
# moment, then waits in poll() on it (Note [tcp receiving] in tcp_receiver.py); a blocked
# writer waits in poll() on the sockets of the readers it needs credit from, which an ACK, a
# CLOSED, an EOF or an error wakes. TCP_NODELAY is on at both ends: a value or an ACK leaves at
# once instead of waiting for Nagle.
_KEEPALIVE = ((socket.SO_KEEPALIVE, 1),)
_TCP_OPTIONS = (("TCP_NODELAY", 1), ("TCP_KEEPIDLE", 2), ("TCP_KEEPINTVL", 1),
                ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 5000))


def node_ip() -> str:
    """The address this node's listeners bind to (``ember start`` sets EMBER_NODE_IP)."""
    return os.environ.get("EMBER_NODE_IP", "127.0.0.1")


def tune(sock: socket.socket) -> None:
    """Set the options of Note [tcp liveness] on a connected socket."""
    for option, value in _KEEPALIVE:
        sock.setsockopt(socket.SOL_SOCKET, option, value)
    for name, value in _TCP_OPTIONS:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def key_and_origin() -> tuple[bytes, str]:
    """This process's handshake key and where it came from, for error messages."""
    if os.environ.get(auth.TOKEN_ENV):
        return auth.process_key(), cluster_auth.read_token()[1]
    return auth.process_key(), "the session secret"


def listen() -> socket.socket:
    """A listening socket on this node's address, on an ephemeral port."""
    return socket.create_server((node_ip(), 0), backlog=16)


def connect(address: tuple[str, int], hello: bytes,
            timeout: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """An authenticated connection to a reader's listener, admitted for ``hello``."""
    key, origin = key_and_origin()
    sock = cluster_auth.connect(tuple(address), key, origin, timeout)
    try:
        sock.settimeout(timeout)
        sock.sendall(hello)
        if recv_exact(sock, 1) != ADMITTED:
            raise ConnectionError(f"the reader at {address[0]}:{address[1]} did not admit "
                                  f"this connection (another writer, or the channel is gone)")
        sock.settimeout(None)
        tune(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def admit(conn: socket.socket) -> bytes | None:
    """Check a connection's handshake and read its HELLO; None (and the connection closed) if
    it fails either, so that garbage never reaches the channel."""
    try:
        key = auth.process_key()
        if cluster_auth.verify_client(conn, key):
            conn.settimeout(CONNECT_TIMEOUT_S)
            hello = recv_exact(conn, HELLO.size)
            conn.settimeout(None)
            tune(conn)   # this side too: its ACKs must not wait for Nagle
            return hello
    except Exception:  # noqa: BLE001 - any failure drops the peer
        pass
    conn.close()
    return None


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes (a small message); ConnectionError on EOF."""
    data = bytearray(size)
    recv_into_exact(sock, memoryview(data))
    return bytes(data)


def recv_into_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``, blocking; ConnectionError on EOF."""
    done, size = 0, view.nbytes
    while done < size:
        n = sock.recv_into(view[done:])
        if not n:
            raise ConnectionError("the peer closed the connection in the middle of a record")
        done += n


def value_parts(frame: Serialized) -> list[memoryview]:
    """The record of a VALUE as memoryviews: its RECORD, then the frame's parts and the padding
    between them, up to the end of the last part (the frame's room after it stays behind)."""
    parts = [memoryview(b"")]
    end = 0
    for offset, part in frame.pieces():
        if offset > end:
            parts.append(_ZEROS[:offset - end])
        view = memoryview(part).cast("B")
        parts.append(view)
        end = offset + view.nbytes
    parts[0] = memoryview(RECORD.pack(VALUE, end))
    return parts


def send_parts(sock: socket.socket, parts: list[memoryview]) -> None:
    """Send every part, in order, with as few sendmsg calls as the kernel takes (no copies)."""
    i, n = 0, len(parts)
    while i < n:
        sent = sock.sendmsg(parts[i:i + _IOV_MAX])
        while i < n and sent >= parts[i].nbytes:
            sent -= parts[i].nbytes
            i += 1
        if sent:
            parts[i] = parts[i][sent:]


def linger(sock: socket.socket) -> None:
    """Close ``sock`` once its peer has read what was sent: stop sending, read and drop what
    still comes until EOF (or LINGER_S), then close. Closing at once with unread bytes would
    send a reset, which can make the peer drop what it has not read yet."""
    def drain() -> None:
        try:
            sock.settimeout(LINGER_S)
            while sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            sock.close()
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        return
    threading.Thread(target=drain, daemon=True, name="ember-tcp-linger").start()


class Inbox:
    """Records from one connection: one recv that does not wait takes in whatever has arrived
    (several small records at once) into a staging buffer; the rest of a record that has begun
    is received, blocking and with SO_RCVLOWAT lowered to 1, straight into its destination."""

    __slots__ = ("sock", "_staging", "_view", "_start", "_end", "_low")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._staging = bytearray(_STAGING)
        self._view = memoryview(self._staging)
        self._start = self._end = 0
        self._low = 1

    def fill(self) -> bool:
        """Whether bytes are buffered, after one recv that does not wait if none were."""
        if self._end > self._start:
            return True
        self._start = self._end = 0
        try:
            n = self.sock.recv_into(self._view, _STAGING, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not n:
            raise ConnectionError("the peer closed the connection")
        self._end = n
        return True

    def record(self) -> tuple[int, int]:
        """The next RECORD, of which a byte at least is buffered (waits for the rest)."""
        if self._end - self._start >= RECORD.size:
            record = RECORD.unpack_from(self._view, self._start)
            self._start += RECORD.size
            return record
        head = memoryview(bytearray(RECORD.size))
        self.read_into(head)
        return RECORD.unpack(head)

    def read_into(self, dest: memoryview) -> None:
        """Fill ``dest`` with the next bytes of the stream, blocking until they are there."""
        size, done = dest.nbytes, 0
        while done < size:
            buffered = self._end - self._start
            if buffered:
                n = min(buffered, size - done)
                dest[done:done + n] = self._view[self._start:self._start + n]
                self._start += n
                done += n
            else:   # the rest, straight into place
                self.low_water(1)   # a blocking recv under a high mark can wait for ever
                recv_into_exact(self.sock, dest[done:])
                return

    def low_water(self, nbytes: int) -> None:
        """Set SO_RCVLOWAT: poll() reports the socket readable from this many bytes (or EOF)."""
        if nbytes == self._low:
            return
        self._low = nbytes
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
        except OSError:
            pass   # closed: whoever receives next sees that

    def buffered(self) -> bool:
        """Whether bytes that arrived are waiting in the staging buffer."""
        return self._end > self._start


def peer_gone(who: str, cause: BaseException | None) -> ChannelBrokenError:
    """The error of a channel end whose peer's connection ended without a close record."""
    error = ChannelBrokenError(
        f"{who} is gone: its connection ended without a close ({cause}), so its process or "
        f"node died; the graph cannot go on, tear it down (its actor may be restarted)")
    error.__cause__ = cause
    return error
