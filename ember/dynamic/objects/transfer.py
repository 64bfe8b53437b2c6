"""Objects across nodes: each node manager serves its node's segments over authenticated TCP.

Note [objects across nodes]: a value in shared memory is known by its location, the node that
holds its segment: ``(node id, node manager address, transfer address)`` (``Node``), carried in
the object's payload beside its size. A reader on that node maps the segment as before; a reader
on another node *pulls* it: it connects to the holder's transfer server (the raw TCP handshake
of Note [connection handshake] first, so nothing is served to a peer without the token), asks
for the object by id, and receives its bytes with one ``recv_into(MSG_WAITALL)`` straight into
a buffer of its own whose pages are already populated, the memory of the last pulled value that
is gone when there is one (Note [recycled pulls]); no file names that buffer, so a reader that
dies leaves nothing of it behind. The server answers from the segment file with ``sendfile``,
restoring a spilled object first; TCP streams the chunks, so sending and receiving
overlap. One connection per pair of processes is kept and reused; a node that does not answer
within ``PULL_TIMEOUT_S`` makes the object ``ObjectLostError``. The owner frees a remote object
by telling its holder's node manager (``obj_delete``), which unlinks the segment.

A request is one byte of length and the object id (ASCII, checked against ``_OID``); the answer
is eight bytes of size (``_MISSING`` for an unknown object) and the bytes. Nothing is pickled.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import threading
from typing import Callable, NamedTuple

from ember._system import cluster_auth, shm
from ember._system.auth import process_key
from ember._system.cluster_auth import recv_exact
from ember.dynamic.objects.segment_writer import SegmentWriter
from ember.exceptions import ObjectLostError

PULL_TIMEOUT_S = 30.0
TRANSFER_ENV = "EMBER_TRANSFER_ADDRESS"
_SIZE = struct.Struct("<Q")
_MISSING = 2**64 - 1
_OID = re.compile(rb"[0-9A-Za-z._-]{1,128}")
_log = logging.getLogger(__name__)


class Node(NamedTuple):
    """Where a shared-memory object lives (Note [objects across nodes])."""

    node_id: str
    nm_address: str
    transfer: str | None


def this_node(nm_address: str) -> Node:
    """The location of this process's node (its transfer server from the environment)."""
    return Node(shm.session_id(), nm_address, os.environ.get(TRANSFER_ENV))


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class TransferServer:
    """Serves this node's object segments to processes of other nodes (in the node manager)."""

    def __init__(self, ip: str, key: bytes, restore: Callable[[str], bool]) -> None:
        self._restore = restore
        self._server = cluster_auth.AuthenticatedServer(ip, 0, key, self._serve,
                                                        "transfer server")
        self.address = self._server.address
        self.stop = self._server.stop

    def _serve(self, conn: socket.socket) -> None:
        """Answer the requests of one authenticated connection until it closes."""
        while True:
            length = conn.recv(1)
            if not length:
                return
            oid = recv_exact(conn, length[0])
            if not _OID.fullmatch(oid):
                _log.warning("ember transfer server dropped a malformed request")
                return
            self._send_object(conn, oid.decode())

    def _send_object(self, conn: socket.socket, oid: str) -> None:
        path = shm.segment_path("obj", oid)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_RDONLY)
                break
            except FileNotFoundError:
                if not self._restore(oid):
                    conn.sendall(_SIZE.pack(_MISSING))
                    return
        else:
            conn.sendall(_SIZE.pack(_MISSING))
            return
        try:
            size = os.fstat(fd).st_size
            conn.sendall(_SIZE.pack(size))
            sent = 0
            while sent < size:
                sent += os.sendfile(conn.fileno(), fd, sent, size - sent)
        finally:
            os.close(fd)


class Puller:
    """This process's connections to other nodes' transfer servers, and the pull itself."""

    def __init__(self, segments: SegmentWriter) -> None:
        self._segments = segments
        self._lock = threading.Lock()
        self._conns: dict[str, tuple[socket.socket, threading.Lock]] = {}

    def pull(self, oid: str, node: Node) -> memoryview:
        """Copy object ``oid`` from ``node`` into a buffer of this process; return a read-only
        view of it."""
        if node.transfer is None:
            raise ObjectLostError(f"object {oid} lives on node {node.node_id}, which serves no "
                                  f"objects to other nodes")
        try:
            conn, lock = self._connection(node.transfer)
            with lock:
                return self._receive(conn, oid, node)
        except (OSError, ConnectionError) as exc:
            self._drop(node.transfer)
            raise ObjectLostError(f"object {oid} could not be fetched from node {node.node_id} "
                                  f"({node.transfer}): {exc}") from None

    def _receive(self, conn: socket.socket, oid: str, node: Node) -> memoryview:
        name = oid.encode()
        conn.sendall(bytes([len(name)]) + name)
        (size,) = _SIZE.unpack(recv_exact(conn, _SIZE.size))
        if size == _MISSING:
            raise ObjectLostError(f"object {oid} is gone from node {node.node_id} (freed or "
                                  f"lost)")
        view, got = self._segments.receive_buffer(size), 0
        while got < size:   # MSG_WAITALL: one call takes the whole object, short only on a fault
            n = conn.recv_into(view[got:], size - got, socket.MSG_WAITALL)
            if not n:
                raise ConnectionError("the node closed the connection mid-object")
            got += n
        return view.toreadonly()

    def _connection(self, address: str) -> tuple[socket.socket, threading.Lock]:
        with self._lock:
            entry = self._conns.get(address)
        if entry is not None:
            return entry
        conn = cluster_auth.connect(_split(address), process_key(), cluster_auth.read_token()[1])
        # The timeout in the kernel (a blocking socket), so that MSG_WAITALL works.
        conn.settimeout(None)
        limit = struct.pack("ll", int(PULL_TIMEOUT_S), 0)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        entry = (conn, threading.Lock())
        with self._lock:
            self._conns.setdefault(address, entry)
            return self._conns[address]

    def _drop(self, address: str) -> None:
        with self._lock:
            entry = self._conns.pop(address, None)
        if entry is not None:
            entry[0].close()

