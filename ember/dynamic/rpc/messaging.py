"""Messages between ember processes: one PULL socket per process, PUSH sockets to peers.

Every process owns an ``Endpoint``: a ZeroMQ PULL socket bound at its ``ipc://`` address and an
I/O thread that receives messages and calls the handler registered for their kind. Sending goes
through one PUSH socket per peer (guarded by a lock), so messages from one process to another
arrive in the order they were sent — the ownership protocol relies on that (Note [borrow order]
in core_worker.py).

A message is a tuple ``(kind, *fields)`` pickled with protocol 5 and followed by its 32-byte tag
(Note [authenticated messages] in auth.py), optionally followed by raw frames (large payloads
travel as frames, without a copy into the pickle). An ipc socket file is 0600 in a 0700 folder
(Note [private sessions root] in process.py).

Note [batched messages]: what the I/O thread's handlers send while it drains its socket is held
per peer and goes out when the drain has handled every message already received (at most
BATCH_MAX of them), so one received message's answers leave as soon as its handler returns, and
a burst's answers to the same peer leave together: two or more held messages travel as one
ZeroMQ message, ``BATCH`` then each pickled header after its 4-byte length, under one tag over all
of it (a flood of ``task_done`` messages makes the driver refill each worker with one such
``task`` batch, and the worker checks one tag for it). A send from any thread to a peer with held
messages first sends those, under the peer's lock, so messages to a peer still arrive in the
order they were sent; a message with frames is never held. ``stop`` sends what is held. The
receiver checks the batch's tag, then unpickles and handles its messages one by one (a message of
it that does not unpickle is dropped alone).

Messages held for different peers in one drain may leave in another order than they were sent;
ZeroMQ never ordered messages to different peers either. The one place known to want an order
across peers is ``transit``, which should leave before the message that carries the ref it
announces (Note [borrow order] in core_worker.py): it is sent with ``hold=False``, so it leaves
at once, after what is held for the same peer.

Note [cluster sockets]: the processes of a cluster node listen on ``tcp://<node ip>:<port>``
(an ephemeral port, read back after the bind) instead of ipc, so processes of other nodes reach
them. Every TCP socket speaks CurveZMQ with the cluster's key pair, derived from the token
(``cluster_auth.curve_keys``): a peer completes the handshake only if it could compute the
server's public key, which never crosses the wire and is known only to token holders; the
handshake is a challenge-response (the server's cookie), and the traffic after it is encrypted,
so a recorded message cannot be replayed. The per-message tags still apply on top, so nothing
is unpickled from a peer without the token whatever happens to the handshake.

Note [dropped messages]: a message whose tag does not check out, that does not unpickle, that
names no known kind, or whose handler raises (wrong arity or types) is dropped with one log line,
and the I/O thread goes on serving; nothing in a message can stop it. A dropped request gets no
answer: its caller's timeout applies.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import pickle
import struct
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterator

import zmq

from ember._system.auth import TAG_SIZE, MessageKey, process_key
from ember._system.cluster_auth import NODE_IP_ENV, curve_keys
from ember.exceptions import AuthenticationError, GetTimeoutError

logger = logging.getLogger(__name__)
Handler = Callable[..., None]
_WAKE = b"\x00wake"
BATCH = b"\x00"  # first byte of a batch (Note [batched messages]); a pickle starts with 0x80
BATCH_MAX = 32
_SIZE = struct.Struct("<I")


def listen_address(folder: str, name: str) -> str:
    """Where a process listens: an ipc socket in its session folder, or on a cluster node a TCP
    port of the node's IP (Note [cluster sockets])."""
    ip = os.environ.get(NODE_IP_ENV)
    return f"tcp://{ip}:*" if ip else f"ipc://{folder}/{name}.sock"


class Peer:
    """The PUSH socket to one peer, its lock, and the headers held for it (Note [batched
    messages])."""

    __slots__ = ("sock", "lock", "held")

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.held: list[bytes] = []


class Endpoint:
    """A process's mailbox: receive on ``address``, send to any peer address."""

    def __init__(self, address: str, name: str = "endpoint") -> None:
        self.name = name
        key = process_key()
        self._key = MessageKey(key)
        self._curve = curve_keys(key)
        self.context = zmq.Context.instance()
        self._pull = self.context.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        if address.startswith("tcp://"):
            self._pull.curve_publickey, self._pull.curve_secretkey = self._curve
            self._pull.curve_server = True
        self._pull.bind(address)
        if address.startswith("ipc://"):
            os.chmod(address[len("ipc://"):], 0o600)
        else:
            address = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self.address = address
        self._wake_addr = f"inproc://wake-{id(self)}"
        self._wake_pull = self.context.socket(zmq.PULL)
        self._wake_pull.bind(self._wake_addr)
        self._wake_push = self.context.socket(zmq.PUSH)
        self._wake_push.connect(self._wake_addr)
        self._wake_lock = threading.Lock()
        self._handlers: dict[str, Handler] = {}
        self._fd_callbacks: dict[int, Callable[[], None]] = {}
        self._peers: dict[str, Peer] = {}
        self._holding: int | None = None  # the I/O thread's id while it holds sends
        self._held: list[Peer] = []  # peers with held headers (touched by the I/O thread)
        self._peers_lock = threading.Lock()
        self._requests: dict[int, Future] = {}
        self._request_ids = itertools.count(1)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._calls: list[Callable[[], None]] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"ember-{name}-io", daemon=True)
        self.on("reply", self._on_reply)

    def start(self) -> None:
        """Start the I/O thread."""
        self._thread.start()

    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler(*fields, frames=...)``-less: ``handler(*fields)`` for messages of ``kind``."""
        self._handlers[kind] = handler

    def send(self, address: str, kind: str, *fields: Any, frames: tuple = (),
             hold: bool = True) -> None:
        """Send one message to ``address``; never blocks on a slow or absent peer.

        ``hold=False``: never held on the I/O thread (Note [batched messages]).
        """
        peer = self._peer(address)
        header = pickle.dumps((kind, *fields), protocol=5)
        with peer.lock:
            if hold and not frames and self._holding == threading.get_ident():
                peer.held.append(header)
                if len(peer.held) == 1:
                    self._held.append(peer)
                return
            if peer.held:
                self._send_held(peer)
            if frames:
                peer.sock.send_multipart((header + self._key.tag(header, frames), *frames),
                                         copy=False)
            else:
                peer.sock.send(header + self._key.tag(header), copy=False)

    def _send_held(self, peer: Peer) -> None:
        """Send the headers held for ``peer`` (its lock held): one message, or one batch."""
        held = peer.held
        body = held[0] if len(held) == 1 else BATCH + b"".join(
            _SIZE.pack(len(header)) + header for header in held)
        held.clear()
        peer.sock.send(body + self._key.tag(body), copy=False)

    def _send_all_held(self) -> None:
        """Send everything the I/O thread's handlers sent while it held them (on that thread)."""
        peers, self._held = self._held, []
        for peer in peers:
            with peer.lock:
                if peer.held:
                    self._guard(self._send_held, peer)

    def request(self, address: str, kind: str, *fields: Any) -> Future:
        """Send a request whose handler answers with ``reply``; return the answer's Future."""
        rid = next(self._request_ids)
        fut: Future = Future()
        self._requests[rid] = fut
        self.send(address, kind, self.address, rid, *fields)
        return fut

    def call(self, address: str, kind: str, *fields: Any, timeout: float | None = 30.0) -> Any:
        """Send a request and wait for its answer (raises what the answer carries)."""
        fut = self.request(address, kind, *fields)
        try:
            return fut.result(timeout)
        except TimeoutError:
            raise GetTimeoutError(
                f"no answer to {kind!r} from {address} within {timeout} s; is the ember "
                f"process there still alive?") from None

    def reply(self, reply_to: str, rid: int, value: Any = None, error: BaseException | None = None
              ) -> None:
        """Answer request ``rid`` of ``reply_to`` with a value or an error."""
        self.send(reply_to, "reply", rid, value, error)

    def _on_reply(self, rid: int, value: Any, error: BaseException | None) -> None:
        fut = self._requests.pop(rid, None)
        if fut is None:
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread."""
        with self._wake_lock:
            self._calls.append(fn)
            self._wake_push.send(_WAKE)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread after ``delay`` seconds (timers, not polling)."""
        self.call_soon(lambda: heapq.heappush(
            self._timers, (time.monotonic() + delay, next(self._timer_ids), fn)))

    def watch_fd(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the I/O thread once ``fd`` becomes readable (e.g. a pidfd)."""
        self.call_soon(lambda: self._fd_callbacks.__setitem__(fd, callback))

    def forget_peer(self, address: str) -> None:
        """Close the PUSH socket to a peer that is gone."""
        with self._peers_lock:
            peer = self._peers.pop(address, None)
        if peer is not None:
            with peer.lock:
                peer.held.clear()
                peer.sock.close(linger=0)

    def stop(self) -> None:
        """Stop the I/O thread and close every socket; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        if self._thread.is_alive():
            with self._wake_lock:
                self._wake_push.send(_WAKE)
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=5)
        with self._peers_lock:
            peers, self._peers = list(self._peers.values()), {}
        for peer in peers:
            with peer.lock:
                if peer.held:
                    self._guard(self._send_held, peer)
                peer.sock.close(linger=0)
        self._pull.close(linger=0)
        self._wake_pull.close(linger=0)
        self._wake_push.close(linger=0)
        if self.address.startswith("ipc://"):
            try:
                os.unlink(self.address[len("ipc://"):])
            except FileNotFoundError:
                pass
        for fut in list(self._requests.values()):
            if not fut.done():
                fut.set_exception(ConnectionError("ember endpoint stopped"))

    def _peer(self, address: str) -> Peer:
        peer = self._peers.get(address)
        if peer is None:
            with self._peers_lock:
                peer = self._peers.get(address)
                if peer is None:
                    sock = self.context.socket(zmq.PUSH)
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.setsockopt(zmq.SNDHWM, 0)
                    if address.startswith("tcp://"):
                        sock.curve_publickey, sock.curve_secretkey = self._curve
                        sock.curve_serverkey = self._curve[0]
                    sock.connect(address)
                    peer = self._peers[address] = Peer(sock)
        return peer

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        watched: set[int] = set()
        while not self._stopping:
            timeout = None
            if self._timers:
                timeout = max(0.0, (self._timers[0][0] - time.monotonic()) * 1000)
            for fd in self._fd_callbacks.keys() - watched:
                poller.register(fd, zmq.POLLIN)
                watched.add(fd)
            events = dict(poller.poll(timeout))
            if self._stopping:
                break
            if self._pull in events:
                self._drain()
            if self._wake_pull in events:
                self._run_calls()
            for fd in [fd for fd in watched if fd in events]:
                poller.unregister(fd)
                watched.discard(fd)
                callback = self._fd_callbacks.pop(fd)
                self._guard(callback)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                self._guard(fn)

    def _run_calls(self) -> None:
        while True:
            try:
                self._wake_pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        with self._wake_lock:
            calls, self._calls = self._calls, []
        for fn in calls:
            self._guard(fn)

    def _drain(self) -> None:
        """Handle up to 256 received messages, holding what handlers send (Note [batched
        messages])."""
        pull = self._pull
        self._holding = threading.get_ident()
        held_for = 0
        try:
            for _ in range(256):
                try:
                    parts = pull.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return
                try:
                    headers, frames = self._open(parts)
                except Exception as exc:  # noqa: BLE001 - Note [dropped messages]
                    self._drop(exc)
                    continue
                for header in headers:
                    self._handle(header, frames)
                held_for += len(headers)
                if held_for >= BATCH_MAX:
                    self._send_all_held()
                    held_for = 0
        finally:
            self._holding = None
            self._send_all_held()

    def _handle(self, header: memoryview, frames: list | tuple) -> None:
        """Unpickle one message and call its kind's handler (Note [dropped messages])."""
        try:
            kind, *fields = pickle.loads(header)
        except Exception as exc:  # noqa: BLE001 - Note [dropped messages]
            self._drop(exc)
            return
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._drop(LookupError("no handler for its kind"), kind)
            return
        try:
            handler(*fields, frames) if frames else handler(*fields)
        except Exception as exc:  # noqa: BLE001 - Note [dropped messages]
            self._drop(exc, kind)

    def _open(self, parts: list[zmq.Frame]) -> tuple[list | tuple, list | tuple]:
        """The pickled headers a received message carries once its tag checks out (one, or a
        batch's), and its raw frames."""
        data = parts[0].buffer
        body = data[:-TAG_SIZE]
        frames = [p.buffer for p in parts[1:]] if len(parts) > 1 else ()
        if len(data) < TAG_SIZE or not self._key.check(body, frames, data[-TAG_SIZE:]):
            raise AuthenticationError("its tag does not match this process's key")
        if frames or body[:1] != BATCH:
            return (body,), frames
        return list(_unbatch(body)), ()

    def _drop(self, exc: Exception, kind: Any = None) -> None:
        """Log one line about a message dropped because of ``exc`` (Note [dropped messages])."""
        what = "a message" if kind is None else f"a {kind!r} message"
        logger.warning("ember %s (pid %d) dropped %s on %s: %r", self.name, os.getpid(), what,
                       self.address, exc, exc_info=logger.isEnabledFor(logging.DEBUG))

    @staticmethod
    def _guard(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - one bad message must not stop the I/O thread
            import traceback
            traceback.print_exc()


def _unbatch(body: memoryview) -> Iterator[memoryview]:
    """The pickled headers of a batch, in order (Note [batched messages])."""
    at, end = len(BATCH), len(body)
    while at < end:
        (size,) = _SIZE.unpack_from(body, at)
        at += _SIZE.size
        if at + size > end:
            raise ValueError("a batch's message runs past its end")
        yield body[at:at + size]
        at += size
