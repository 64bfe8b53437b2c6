"""The key of the control plane and the HMAC-SHA256 tag every message carries.

Note [authenticated messages]: every message on an ember socket ends with a 32-byte
HMAC-SHA256 tag; a receiver checks it with ``hmac.compare_digest`` before it unpickles a byte,
and drops the message otherwise (messaging.py). A message without raw frames is tagged
HMAC(key, header); one with frames is tagged under a second key derived from the first, over
each part's length and bytes, fed incrementally (no copy of a large frame), so no message's tag
is valid for a different split of its bytes. Both are plain HMAC-SHA256, from pad states
computed once per key (``MessageKey``: about 1 us a tag, half of ``hmac.digest``). One ZeroMQ
message may carry several frameless messages to the same peer as a batch (Note [batched
messages] in messaging.py), tagged like a header, HMAC(key, batch): the receiver checks that one
tag before it unpickles any of them, and since a batch starts with 0x00 and a pickled header
with 0x80, the checked bytes alone say which of the two they are.

Note [two SHA-256s]: a header (or batch) of up to SMALL_MESSAGE bytes (a task is about 220
bytes, a task_done 40 to 120) is hashed by CPython's built-in SHA-256 (``_sha2``; ``_sha256``
before 3.12), a longer one and every framed message by OpenSSL's (``hashlib.sha256``). OpenSSL's
is the faster on long input (SHA-NI: 3x at 1 KiB) and in a tight loop on short input too (0.73
vs 1.1 us a tag), but each of its copies and digests allocates and frees OpenSSL contexts, and
timed inside the running driver and workers of core_tasks_async a tag or check took 1.6-4.3 us
with it against 1.5-2.8 us with the built-in one (benchmarks/RESULTS.md, 2026-12-03). Both compute
the same digest, so sender and receiver need not pick the same one.

The key comes from one place, ``process_key``, so the same scheme carries the cluster token: a
process of a cluster (``EMBER_CLUSTER`` set, or ``EMBER_AUTH_TOKEN``) uses SHA-256 of the token
(Note [cluster token] in cluster_auth.py); otherwise it uses the session secret, 32 random bytes
the driver writes into the session folder (a 0600 file in the 0700 folder, Note [private
sessions root] in process.py) before it starts any process. Every process of a session inherits
the driver's environment, so they all agree on the key.

Children read the secret from that file rather than from an environment variable or an
inherited fd: the file is readable exactly by those who may already connect to the session's
sockets (the same user, through the same 0700 folder), so it adds no new holder; an environment
variable would reach every program a task starts (and its crash reports), and an fd would have
to be passed through the node manager to each worker. A GCS restarted by the driver reads the
same file. Tags do not stop a replay; on ipc no one else sees a message to replay, and on TCP
the CurveZMQ handshake and encryption stand in (Note [cluster sockets] in messaging.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from typing import Callable, Sequence

from ember._system import cluster_auth, shm
from ember._system.process import session_dir
from ember.exceptions import AuthenticationError

TAG_SIZE = 32
KEY_SIZE = 32
SECRET_FILE = "secret"
TOKEN_ENV = cluster_auth.TOKEN_ENV
_LENGTH = struct.Struct("<Q")
SMALL_MESSAGE = 512  # bytes; a header up to this long is hashed by _small_sha256

try:  # Note [two SHA-256s]
    from _sha2 import sha256 as _small_sha256  # CPython 3.12 and later
except ImportError:
    try:
        from _sha256 import sha256 as _small_sha256  # CPython 3.11
    except ImportError:
        _small_sha256 = hashlib.sha256


def create_session_secret(folder: str) -> None:
    """Write a fresh random session key into ``folder`` as a 0600 file (the driver, at init)."""
    fd = os.open(os.path.join(folder, SECRET_FILE),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_bytes(KEY_SIZE))
    finally:
        os.close(fd)


def read_session_secret(folder: str) -> bytes:
    """The session key the driver wrote into ``folder``."""
    path = os.path.join(folder, SECRET_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise AuthenticationError(f"no session secret at {path}; was this process started by "
                                  f"an ember driver that is still running?") from None
    with os.fdopen(fd, "rb") as file:
        key = file.read(KEY_SIZE + 1)
    if len(key) != KEY_SIZE:
        raise AuthenticationError(f"the session secret at {path} is not {KEY_SIZE} bytes long")
    return key


def process_key() -> bytes:
    """The key this process tags and checks messages with (Note [authenticated messages])."""
    if os.environ.get(TOKEN_ENV) or os.environ.get(cluster_auth.CLUSTER_ENV):
        token, origin = cluster_auth.read_token()
        if token is None:
            raise AuthenticationError(f"this process belongs to an ember cluster but has no "
                                      f"cluster token: set {origin}")
        return cluster_auth.token_key(token)
    return read_session_secret(session_dir(shm.session_id()))


class MessageKey:
    """Tags and checks messages with one key (Note [authenticated messages]).

    HMAC-SHA256 as RFC 2104 defines it, from the SHA-256 states after the padded key, computed
    once: a tag copies them instead of setting up a new HMAC context.
    """

    def __init__(self, key: bytes) -> None:
        self._small = _pad_states(key, _small_sha256)
        self._plain = _pad_states(key, hashlib.sha256)
        self._framed = _pad_states(hmac.digest(key, b"ember message with frames", "sha256"),
                                   hashlib.sha256)

    def tag(self, header: bytes | memoryview, frames: Sequence = ()) -> bytes:
        """The tag of a message: its pickled header and every raw frame."""
        if frames:
            inner, outer = self._framed
            inner = inner.copy()
            for part in (header, *frames):
                view = memoryview(part)
                inner.update(_LENGTH.pack(view.nbytes))
                inner.update(view)
        else:
            inner, outer = self._small if len(header) <= SMALL_MESSAGE else self._plain
            inner = inner.copy()
            inner.update(header)
        outer = outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def check(self, header: memoryview, frames: Sequence, tag: memoryview) -> bool:
        """Whether ``tag`` is this key's tag of the message (in constant time)."""
        return hmac.compare_digest(self.tag(header, frames), tag)


def _pad_states(key: bytes, sha256: Callable) -> tuple:
    """SHA-256 states after the inner and outer padded key of HMAC (a key of 64 bytes or less)."""
    block = key.ljust(64, b"\0")
    return sha256(bytes(b ^ 0x36 for b in block)), sha256(bytes(b ^ 0x5C for b in block))
