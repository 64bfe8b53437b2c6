"""Starting and watching ember's own OS processes (GCS, node manager, workers).

Every child is started with ``python -m <module>`` and arranges at start-up to receive SIGTERM
when its parent process dies (``bind_to_parent``, Note [parent death]), so a driver killed with
SIGKILL takes its GCS, node manager and workers with it; the node manager then removes the
session's shared memory.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading

from ember.exceptions import UnsafeSessionDirError

_PR_SET_PDEATHSIG = 1


# Note [private sessions root]: session folders live under <tmp>/ember-sessions. Whoever can
# write a folder can rename what is in it, so ember only uses a sessions root that it makes
# (0700) or that belongs to this user or root and that no one else may write; a root that
# others may write but that is sticky like /tmp (its entries can be renamed only by their owner
# or the folder's owner) gets a 0700 folder per user inside, user-<uid>. Any other root is
# refused with UnsafeSessionDirError (TMPDIR moves it). A session folder is 0700 and its sockets
# 0600 (messaging.py): modes are set explicitly, never left to the umask, and a folder is 0700
# before any socket is bound in it.


def _sessions_root() -> str:
    """This user's folder of session folders (Note [private sessions root])."""
    # "ember-sessions", not "ember": a folder named like the package in /tmp would shadow it
    # for scripts run from /tmp.
    root = os.path.join(tempfile.gettempdir(), "ember-sessions")
    mode = _private_dir(root, (os.getuid(), 0))
    if mode & 0o022:
        if not mode & stat.S_ISVTX:
            raise UnsafeSessionDirError(
                f"{root} can be written by other users and is not sticky, so they could "
                f"rename ember's session folders; remove it, or set TMPDIR to a private folder")
        root = os.path.join(root, f"user-{os.getuid()}")
        _private_dir(root, (os.getuid(),), others=0o022)
    return root


def _private_dir(path: str, owners: tuple[int, ...], others: int = 0) -> int:
    """Make ``path`` a 0700 folder if absent; return its mode once it is a folder of ``owners``
    without any of the permission bits ``others`` (Note [private sessions root])."""
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeSessionDirError(f"{path} is not a folder (a symbolic link?); remove it, or "
                                    f"set TMPDIR to a private folder")
    if info.st_uid not in owners:
        raise UnsafeSessionDirError(
            f"{path} belongs to another user (uid {info.st_uid}), who could rename ember's "
            f"session folders; remove it, or set TMPDIR to a private folder")
    if info.st_mode & others:
        raise UnsafeSessionDirError(f"{path} has mode {stat.S_IMODE(info.st_mode):o}: other "
                                    f"users have access to it; remove it or chmod it 0700")
    return info.st_mode


def _session_path(sid: str) -> str:
    return os.path.join(_sessions_root(), f"session_{sid}")


def session_dir(sid: str) -> str:
    """Return (and create, 0700) the folder holding a session's sockets, secret and spill files."""
    path = _session_path(sid)
    _private_dir(path, (os.getuid(),), others=0o077)
    return path


def remove_session_dir(sid: str) -> None:
    """Remove a session's folder and everything in it."""
    shutil.rmtree(_session_path(sid), ignore_errors=True)


def spawn(module: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m module args`` as a child that dies with this process."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    full_env["EMBER_PARENT_PID"] = str(os.getpid())
    full_env["PYTHONPATH"] = os.pathsep.join(_user_import_path())
    return subprocess.Popen([sys.executable, "-m", module, *args], env=full_env,
                            stdin=subprocess.DEVNULL, close_fds=True)


def _user_import_path() -> list[str]:
    """This process's import folders outside the interpreter's own (script, project, tests).

    Children get them through PYTHONPATH, so a worker can unpickle what the driver can import:
    functions and classes pickled by reference to the driver's modules.
    """
    prefixes = {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix)}
    return [os.path.abspath(p) for p in sys.path
            if p and not any(os.path.realpath(p).startswith(pre) for pre in prefixes)]


def bind_to_parent() -> None:
    """Get SIGTERM when the parent *process* exits (Note [parent death]); exit if it is gone."""
    expected = int(os.environ.get("EMBER_PARENT_PID", "0"))
    fd = pidfd(expected) if expected else None
    if fd is None:
        _parent_death_signal()
    if expected and os.getppid() != expected:
        os._exit(0)
    if fd is not None:
        threading.Thread(target=_watch_parent, args=(fd,), name="ember-parent-watch",
                         daemon=True).start()


# Note [parent death]: every ember child (GCS, node manager, worker) must end with the process
# that started it, also when that one is SIGKILLed, yet live on when the *thread* that started
# it ends (``ember.init()`` called from a short-lived thread; the driver restarting its GCS or
# node manager from its I/O thread). The kernel's PR_SET_PDEATHSIG follows the forking thread,
# so it would kill the whole runtime with that thread. Instead each child opens a pidfd of its
# parent process and a daemon thread waits for it to become readable (the parent exited), then
# sends SIGTERM to its own process: the same signal, and so the same clean-up, as before. The
# pidfd is opened before the ``getppid`` check, so a parent that dies in between is noticed
# either way. Only where pidfds are missing (Linux < 5.3) does PR_SET_PDEATHSIG stand in.

def _watch_parent(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll()
    os.kill(os.getpid(), signal.SIGTERM)


def _parent_death_signal() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class _Terminated(BaseException):
    """SIGTERM arrived (raised by the handler of ``wait_until_done``)."""


def _terminate(*_: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated


def wait_until_done(done: threading.Event) -> None:
    """Block until ``done`` is set or SIGTERM arrives (a parent died, or ``kill``).

    The handler takes no lock: a handler that set ``done`` could deadlock on the event's lock
    when a second SIGTERM arrived while the first was inside ``Event.set``.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            done.wait()
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except _Terminated:
        pass


def start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of live process ``pid``; None if it is gone.

    A zombie counts as gone: it has died, only its parent has not reaped it yet. With the pid
    the start time names one process even after the pid is reused.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    return start_time(pid) is not None


def pidfd(pid: int) -> int | None:
    """Return a pidfd that becomes readable when ``pid`` exits, or None where unsupported."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
