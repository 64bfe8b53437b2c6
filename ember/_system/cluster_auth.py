"""The cluster token, and the challenge-response that every TCP connection passes first.

Note [cluster token]: a cluster of many nodes shares one secret, the token. The head takes it
from ``EMBER_AUTH_TOKEN`` when that is set, else from ``~/.ember/auth_token``, else it makes a
32-byte token, stores it there (0600, folder 0700) and prints it once. Every other process
(node, driver, worker) reads it from the same two places, in the same order. The message key
is SHA-256 of the token (``auth.process_key``), so the per-message tags of Note [authenticated
messages] carry over to TCP unchanged.

Note [connection handshake]: a raw TCP connection (bootstrap, object transfer, compiled-graph
channels) proves the token both ways before either side reads anything else from it:

    server -> client   32-byte nonce Ns
    client -> server   32-byte nonce Nc, HMAC(key, "ember client" | Ns | Nc)
    server -> client   HMAC(key, "ember server" | Nc | Ns)

No token crosses the wire, a recorded exchange does not answer a new nonce, and a server that
does not know the token cannot pose as one. A server that gets a wrong proof closes the
connection; the client then raises AuthenticationError saying where its token came from. Each
step has a timeout, so a silent peer cannot hold a connection open. ZeroMQ's TCP sockets carry
the same proof through CurveZMQ (keys derived from the token, ``curve_keys``), whose handshake
is a challenge-response of the same kind, plus the per-message tags.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
import threading
from typing import Callable

from ember.exceptions import AuthenticationError

TOKEN_ENV = "EMBER_AUTH_TOKEN"
CLUSTER_ENV = "EMBER_CLUSTER"   # set in every process of a cluster node (and its drivers)
NODE_IP_ENV = "EMBER_NODE_IP"   # the address a cluster node's processes listen on
NONCE_SIZE = 32
HANDSHAKE_TIMEOUT_S = 10.0
_log = logging.getLogger(__name__)


def token_file() -> str:
    """Where the cluster token is kept when it does not come from the environment."""
    return os.path.join(os.path.expanduser("~"), ".ember", "auth_token")


def read_token() -> tuple[str | None, str]:
    """The cluster token and where it came from (Note [cluster token]); None if there is none."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token, f"the environment variable {TOKEN_ENV}"
    path = token_file()
    try:
        with open(path, encoding="ascii") as file:
            token = file.read().strip()
    except FileNotFoundError:
        return None, f"{TOKEN_ENV} (not set) or {path} (absent)"
    return (token or None), path


def ensure_token() -> tuple[str, str, bool]:
    """The head's token: (token, origin, made_now). Makes and stores one if there is none."""
    token, origin = read_token()
    if token:
        return token, origin, False
    path = token_file()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(path), 0o700)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        os.fchmod(fd, 0o600)
        file.write(token + "\n")
    return token, path, True


def token_key(token: str) -> bytes:
    """The 32-byte key a token stands for (tags, handshakes and CurveZMQ keys derive from it)."""
    return hashlib.sha256(token.encode()).digest()


def curve_keys(key: bytes) -> tuple[bytes, bytes]:
    """The cluster's CurveZMQ (public, secret) key pair, in Z85, derived from ``key``."""
    import zmq
    from zmq.utils import z85
    secret = z85.encode(hmac.digest(key, b"ember curve", "sha256"))
    return zmq.curve_public(secret), secret


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``sock``; ConnectionError if the peer closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        data += chunk
    return bytes(data)


def prove_client(sock: socket.socket, key: bytes, origin: str, peer: str) -> None:
    """Pass the handshake as the connecting side (Note [connection handshake])."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        server_nonce = recv_exact(sock, NONCE_SIZE)
        nonce = secrets.token_bytes(NONCE_SIZE)
        sock.sendall(nonce + hmac.digest(key, b"ember client" + server_nonce + nonce, "sha256"))
        answer = recv_exact(sock, 32)
    except (ConnectionError, OSError) as exc:
        raise AuthenticationError(
            f"the ember node at {peer} refused this process's cluster token (read from "
            f"{origin}): {exc}. Use the head's token: set {TOKEN_ENV} or copy the head's "
            f"{token_file()}") from None
    expected = hmac.digest(key, b"ember server" + nonce + server_nonce, "sha256")
    if not hmac.compare_digest(answer, expected):
        raise AuthenticationError(f"the peer at {peer} does not know the cluster token: it is "
                                  f"not an ember node of this cluster")
    sock.settimeout(None)


def verify_client(sock: socket.socket, key: bytes) -> bool:
    """Check a connecting peer's proof as the listening side; answer with ours if it holds."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        nonce = secrets.token_bytes(NONCE_SIZE)
        sock.sendall(nonce)
        reply = recv_exact(sock, NONCE_SIZE + 32)
        client_nonce, proof = reply[:NONCE_SIZE], reply[NONCE_SIZE:]
        if not hmac.compare_digest(proof, hmac.digest(key, b"ember client" + nonce +
                                                      client_nonce, "sha256")):
            return False
        sock.sendall(hmac.digest(key, b"ember server" + client_nonce + nonce, "sha256"))
    except (ConnectionError, OSError):
        return False
    sock.settimeout(None)
    return True


def connect(address: tuple[str, int], key: bytes, origin: str,
            timeout: float = HANDSHAKE_TIMEOUT_S) -> socket.socket:
    """A TCP connection to ``address`` that has passed the handshake."""
    peer = f"{address[0]}:{address[1]}"
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the ember node at {peer}: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        prove_client(sock, key, origin, peer)
    except BaseException:
        sock.close()
        raise
    return sock


class AuthenticatedServer:
    """A TCP listener whose every connection first passes the handshake (Note [connection
    handshake]) and is then served by ``serve(conn)`` on a thread of its own; a connection
    that fails it is dropped with one log line, and the listener keeps serving."""

    def __init__(self, ip: str, port: int, key: bytes,
                 serve: Callable[[socket.socket], None], name: str) -> None:
        self._key = key
        self._serve = serve
        self._name = name
        self._listener = socket.create_server((ip, port), backlog=64)
        self.address = f"{ip}:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, name=f"ember-{name}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            if not verify_client(conn, self._key):
                _log.warning("ember %s dropped a connection that failed the handshake",
                             self._name)
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._serve(conn)
            except OSError:
                pass

    def stop(self) -> None:
        """Stop accepting connections (those open end with the process)."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
