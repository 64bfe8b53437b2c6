"""The control plane is private and authenticated, and no message can stop a process serving.

Raw ZeroMQ sockets connect to the real GCS, node manager and worker of a running session and send
garbage, pickles that would run code, wrongly tagged and badly shaped messages; each is dropped
with one log line (Note [dropped messages]), and the cluster keeps serving.
"""

from __future__ import annotations

import hmac
import os
import pickle
import secrets
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import zmq

import ember
from ember._system import auth, shm
from ember.dynamic.api import driver
from ember._system.auth import SMALL_MESSAGE, TAG_SIZE, MessageKey
from ember._system.process import session_dir
from ember.exceptions import UnsafeSessionDirError

NOBODY = 65534
IS_ROOT = os.geteuid() == 0


@ember.remote
def plus_one(x):
    return x + 1


@ember.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n

    def pid(self):
        return os.getpid()


class Evil:
    """Unpickling this opens (creates) ``path``: what a hostile peer would send."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class RawPeer:
    """A raw ZeroMQ client of one ember process: sends any bytes, reads tagged answers."""

    def __init__(self, target: str, folder: Path, key: bytes) -> None:
        context = zmq.Context.instance()
        self.key = MessageKey(key)
        self.address = f"ipc://{folder}/raw-{secrets.token_hex(4)}.sock"
        self.pull = context.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(self.address)
        self.push = context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(target)

    def send_raw(self, *frames: bytes) -> None:
        self.push.send_multipart(frames)

    def send(self, kind: str, *fields, key: MessageKey | None = None) -> None:
        header = pickle.dumps((kind, *fields), protocol=5)
        self.send_raw(header + (key or self.key).tag(header))

    def answer(self, timeout: float = 20.0) -> tuple:
        """The next message sent to this peer; its tag must check out."""
        assert self.pull.poll(timeout * 1000), f"no answer within {timeout} s"
        data = memoryview(self.pull.recv())
        assert self.key.check(data[:-TAG_SIZE], (), data[-TAG_SIZE:]), "the answer's tag is bad"
        return pickle.loads(data[:-TAG_SIZE])

    def close(self) -> None:
        self.push.close()
        self.pull.close()


def hostile_messages(peer: RawPeer, marker: Path, wrong_arity: tuple) -> int:
    """Send every kind of bad message to ``peer``'s target; return how many were sent."""
    evil = pickle.dumps(("kv_put", Evil(marker)), protocol=5)
    wrong_key = MessageKey(secrets.token_bytes(32))
    good = peer.key
    framed = good.tag(evil[:20], [b"frame"])
    sends = [
        lambda: peer.send_raw(b""),
        lambda: peer.send_raw(b"garbage"),
        lambda: peer.send_raw(os.urandom(200)),
        lambda: peer.send_raw(evil),                                   # the old wire format
        lambda: peer.send_raw(evil + os.urandom(TAG_SIZE)),           # a random tag
        lambda: peer.send_raw(evil + wrong_key.tag(evil)),            # another key's tag
        lambda: peer.send_raw(evil + good.tag(evil[:-1])),            # the tag of other bytes
        lambda: peer.send_raw(evil + good.tag(evil), b"frame"),       # frameless tag, framed
        lambda: peer.send_raw(evil[:20] + framed, b"framE"),          # a changed frame
        lambda: peer.send_raw(evil[:20] + good.tag(evil[:20])),       # tagged, truncated pickle
        lambda: peer.send_raw(pickle.dumps(42) + good.tag(pickle.dumps(42))),  # not a tuple
        lambda: peer.send_raw(pickle.dumps(()) + good.tag(pickle.dumps(()))),  # no kind
        lambda: peer.send("no_such_kind", 1, 2),
        lambda: peer.send(["unhashable"]),
        lambda: peer.send(*wrong_arity),
    ]
    for send in sends:
        send()
    return len(sends)


def dropped_lines(err: str, pid: int) -> list[str]:
    return [line for line in err.splitlines() if f"(pid {pid}) dropped" in line]


@pytest.mark.timeout(90)
def test_hostile_messages_are_dropped_and_every_process_keeps_serving(capfd, tmp_path):
    ember.init(num_cpus=2)
    try:
        core, _ = driver.runtime()
        counter = Counter.remote()
        worker_pid = ember.get(counter.pid.remote())
        info = core.endpoint.call(core.gcs_address, "kv_get", "actors", counter._actor_id)
        key = auth.process_key()
        marker = tmp_path / "pwned"
        gcs, manager = driver._driver.procs
        targets = [  # (address, pid, wrong arity, a request it answers, its answer's check)
            (core.gcs_address, gcs.pid, ("kv_put", "x"),
             lambda p: ("kv_get", p.address, 7, "kv", "nothing"),
             lambda a: a == ("reply", 7, None, None)),
            (core.nm_address, manager.pid, ("resources",),
             lambda p: ("resources", p.address, 8),
             lambda a: a[:2] == ("reply", 8) and a[2][0]["CPU"] == 2),
            (info["address"], worker_pid, ("get_object",),
             lambda p: ("get_object", p.address, "no-such-object"),
             lambda a: a[:2] == ("object_value", "no-such-object")),
        ]
        for address, pid, wrong_arity, request, check in targets:
            peer = RawPeer(address, tmp_path, key)
            try:
                sent = hostile_messages(peer, marker, wrong_arity)
                if address == core.gcs_address:
                    peer.send("kv_get", peer.address, 6, ["a list"], "k")  # its handler raises
                    sent += 1
                # Messages on one connection arrive in order: once this one is answered, the
                # process has handled every hostile one before it.
                peer.send(*request(peer))
                assert check(peer.answer()), address
            finally:
                peer.close()
            err = capfd.readouterr().err
            lines = dropped_lines(err, pid)
            assert len(lines) == sent, (address, err)
            assert "Traceback" not in err
            assert sum("AuthenticationError" in line for line in lines) == 9, lines
        assert not marker.exists(), "an unauthenticated message ran code"
        assert ember.get([plus_one.remote(i) for i in range(10)], timeout=20) == list(range(1, 11))
        assert ember.get(counter.add.remote(), timeout=20) == 1
        assert ember.get(Counter.remote().add.remote(), timeout=20) == 1
        assert core.endpoint.call(core.gcs_address, "kv_put", "kv", "k", "v", True) is True
    finally:
        ember.shutdown()


@pytest.mark.timeout(60)
def test_auth_token_replaces_the_session_secret(capfd, tmp_path, monkeypatch):
    monkeypatch.setenv(auth.TOKEN_ENV, "a cluster token")
    ember.init(num_cpus=1)
    try:
        assert ember.get(plus_one.remote(1), timeout=20) == 2
        core, _ = driver.runtime()
        session_key = auth.read_session_secret(session_dir(shm.session_id()))
        peer = RawPeer(core.gcs_address, tmp_path, auth.process_key())
        try:
            peer.send("kv_get", peer.address, 1, "kv", "x", key=MessageKey(session_key))
            peer.send("kv_get", peer.address, 2, "kv", "x")
            assert peer.answer() == ("reply", 2, None, None)
        finally:
            peer.close()
        assert len(dropped_lines(capfd.readouterr().err, driver._driver.procs[0].pid)) == 1
    finally:
        ember.shutdown()


@pytest.fixture
def shared_tmp():
    """A folder under /tmp that every user can reach (pytest's own tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ember-security-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


DRIVER = textwrap.dedent("""
    import os, sys
    os.umask(0)
    import ember
    from ember._system import shm
    from ember._system.process import session_dir

    ember.init(num_cpus=1)

    @ember.remote
    def one():
        return 1

    assert ember.get(one.remote(), timeout=20) == 1
    print(session_dir(shm.session_id()), flush=True)
    sys.stdin.readline()
    ember.shutdown()
""")

PROBE = textwrap.dedent("""
    import socket, sys
    folder = sys.argv[1]
    for name in ("gcs.sock", "node_manager.sock"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(folder + "/" + name)
            print("connected", name)
        except PermissionError:
            pass
    try:
        open(folder + "/secret", "rb").read()
        print("read the secret")
    except PermissionError:
        pass
""")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.timeout(90)
def test_session_files_are_private_under_umask_0(shared_tmp, leftovers):
    env = dict(os.environ, PYTHONPATH=os.getcwd(), TMPDIR=str(shared_tmp))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True)
    try:
        folder = Path(proc.stdout.readline().strip())
        assert folder.parent == shared_tmp / "ember-sessions", folder
        assert _mode(folder.parent) == 0o700 and _mode(folder) == 0o700
        sockets = sorted(p.name for p in folder.glob("*.sock"))
        assert {"gcs.sock", "node_manager.sock"} <= set(sockets) and len(sockets) >= 4, sockets
        assert {p.name: _mode(p) for p in folder.glob("*.sock")} == dict.fromkeys(sockets, 0o600)
        assert _mode(folder / "secret") == 0o600 and (folder / "secret").stat().st_size == 32
        if IS_ROOT and os.path.exists("/usr/bin/python3"):
            probe = subprocess.run(["/usr/bin/python3", "-c", PROBE, str(folder)],
                                   user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                                   capture_output=True, text=True, timeout=30)
            assert probe.returncode == 0 and probe.stdout == "", probe
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert not folder.exists()
    assert leftovers({folder.name[len("session_"):]}) == ([], [])


def _refused_root(tmp: Path, mode: int, owner: int | None) -> Path:
    root = tmp / "ember-sessions"
    root.mkdir()
    root.chmod(mode)
    if owner is not None:
        os.chown(root, owner, owner)
    return root


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode, owner", [
    (0o777, None),                      # others may write, not sticky
    (0o775, None),                      # the group may write, not sticky
    pytest.param(0o700, NOBODY, marks=pytest.mark.skipif(not IS_ROOT, reason="needs root")),
    pytest.param(0o1777, NOBODY, marks=pytest.mark.skipif(not IS_ROOT, reason="needs root")),
])
def test_unsafe_sessions_root_is_refused(shared_tmp, monkeypatch, mode, owner):
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    root = _refused_root(shared_tmp, mode, owner)
    with pytest.raises(UnsafeSessionDirError, match=str(root)):
        ember.init(num_cpus=1)
    assert not ember.is_initialized()
    assert os.listdir(root) == []


@pytest.mark.timeout(30)
def test_symlinked_sessions_root_is_refused(shared_tmp, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    (shared_tmp / "elsewhere").mkdir(mode=0o700)
    (shared_tmp / "ember-sessions").symlink_to(shared_tmp / "elsewhere")
    with pytest.raises(UnsafeSessionDirError, match="not a folder"):
        session_dir("abc")
    assert os.listdir(shared_tmp / "elsewhere") == []


@pytest.mark.timeout(30)
def test_sticky_shared_root_gets_a_private_folder_per_user(shared_tmp, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    root = _refused_root(shared_tmp, 0o1777, None)
    folder = Path(session_dir("abc"))
    assert folder == root / f"user-{os.getuid()}" / "session_abc"
    assert _mode(folder.parent) == 0o700 and _mode(folder) == 0o700
    if IS_ROOT:
        os.chown(folder.parent, NOBODY, NOBODY)
        with pytest.raises(UnsafeSessionDirError, match="another user"):
            session_dir("abc")


@pytest.mark.timeout(10)
def test_tags_are_standard_hmac_sha256_over_header_and_frames():
    key = secrets.token_bytes(32)
    tagger, header = MessageKey(key), pickle.dumps(("kind", 1), protocol=5)
    assert tagger.tag(header) == hmac.digest(key, header, "sha256")
    for size in (SMALL_MESSAGE, SMALL_MESSAGE + 1, 5000):  # Note [two SHA-256s]
        body = os.urandom(size)
        assert tagger.tag(body) == tagger.tag(memoryview(body)) == hmac.digest(key, body, "sha256")
    framed_key = hmac.digest(key, b"ember message with frames", "sha256")
    length = struct.Struct("<Q").pack
    assert tagger.tag(header, [b"ab", memoryview(b"c")]) == hmac.digest(
        framed_key, length(len(header)) + header + length(2) + b"ab" + length(1) + b"c", "sha256")
    assert tagger.tag(header, [b"abc"]) != tagger.tag(header + length(3) + b"abc")
