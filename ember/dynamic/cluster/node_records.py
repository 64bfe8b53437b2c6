"""What ``ember start`` leaves for ``ember stop``, drivers and ``ember status``: node records
and the head's bootstrap port.

Note [node records]: each node started with ``ember start`` writes a record (a 0600 JSON file in
the 0700 folder ``~/.ember/nodes``): the node daemon's pid and start time (so a reused pid is
not mistaken for it), the node id, IP, GCS and node manager addresses, the cluster's address,
and the device number of its ``/dev/shm``. ``ember stop`` ends the daemons of the records it
finds; a driver with ``address="auto"`` (or a "host:port") joins the node whose ``/dev/shm`` is
its own: that is the node whose shared memory it can map (nodes in other mount namespaces of the
same machine have other ones). The daemon removes its record when it stops.

Note [bootstrap port]: the head listens on ``--port`` (6380 by default) for raw TCP connections
that first pass the handshake of Note [connection handshake]; it then answers with one JSON
line, ``{"gcs_address": ..., "head_node_id": ...}``, and closes. Nothing from the peer is parsed
but the handshake, so garbage is dropped. A wrong token fails the handshake, and the connecting
side raises AuthenticationError saying where its token came from.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import select
import signal
from typing import Iterator

from ember._system import cluster_auth
from ember._system.auth import process_key
from ember._system.process import pidfd, start_time

DEFAULT_PORT = 6380
_log = logging.getLogger(__name__)


def records_dir() -> str:
    """The folder of this user's node records (Note [node records])."""
    return os.path.join(os.path.expanduser("~"), ".ember", "nodes")


def shm_device() -> int:
    """The device number of this process's /dev/shm (one per mount of it)."""
    return os.stat("/dev/shm").st_dev


def write_record(record: dict) -> str:
    """Store this node's record; return its path."""
    folder = records_dir()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    path = os.path.join(folder, f"{record['node_id']}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(record, file)
    return path


def live_records() -> Iterator[tuple[str, dict]]:
    """(path, record) of every node whose daemon still runs; stale records are removed."""
    for path in sorted(glob.glob(os.path.join(records_dir(), "*.json"))):
        try:
            with open(path) as file:
                record = json.load(file)
        except (OSError, ValueError):
            continue
        if start_time(record.get("pid", 0)) == record.get("start_time"):
            yield path, record
        else:
            remove(path)


def local_node(gcs_address: str | None = None) -> dict | None:
    """The record of the node that shares this process's /dev/shm (of one cluster, if given;
    the head's if several do)."""
    device = shm_device()
    here = [record for _, record in live_records() if record["shm_dev"] == device
            and gcs_address in (None, record["gcs_address"])]
    # several nodes share one /dev/shm only when started so on one machine (benchmarks):
    # the head's is then the one a driver joins
    return max(here, key=lambda record: record["head"], default=None)


def remove(path: str) -> None:
    """Remove a record file if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def stop_all(timeout: float = 20.0) -> list[dict]:
    """SIGTERM every node daemon of this user on this machine, heads last; SIGKILL those that
    do not end within ``timeout``. Returns the records of the nodes stopped."""
    records = sorted(live_records(), key=lambda item: item[1].get("head", False))
    for path, record in records:
        fd = pidfd(record["pid"])
        try:
            os.kill(record["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
        if fd is not None:
            ended = select.select([fd], [], [], timeout)[0]
            os.close(fd)
            if not ended:
                _log.warning("ember node %s did not stop within %s s; killing it",
                             record["node_id"], timeout)
                os.kill(record["pid"], signal.SIGKILL)
        remove(path)
    return [record for _, record in records]


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of a "host:port" cluster address; ValueError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a cluster address is 'HOST:PORT' (e.g. '127.0.0.1:{DEFAULT_PORT}'), "
                         f"not {address!r}")
    return host, int(port)


def ask_head(address: str) -> dict:
    """The cluster facts the head at ``address`` gives a peer that knows the token."""
    token, origin = cluster_auth.read_token()
    if token is None:
        from ember.exceptions import AuthenticationError
        raise AuthenticationError(f"no cluster token to join {address} with: set {origin}; "
                                  f"the head printed its token when it started")
    with cluster_auth.connect(split_address(address), cluster_auth.token_key(token),
                              origin) as conn:
        conn.settimeout(cluster_auth.HANDSHAKE_TIMEOUT_S)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                raise ConnectionError(f"the ember head at {address} closed the connection")
            data += chunk
    return json.loads(data)


class BootstrapServer:
    """The head's bootstrap port (Note [bootstrap port])."""

    def __init__(self, ip: str, port: int, answer: dict) -> None:
        reply = (json.dumps(answer) + "\n").encode()
        try:
            self._server = cluster_auth.AuthenticatedServer(
                ip, port, process_key(), lambda conn: conn.sendall(reply), "head")
        except OSError as exc:
            raise OSError(f"cannot listen on {ip}:{port} ({exc}); is another head running? "
                          f"Pick another --port") from None
        self.stop = self._server.stop
