"""Checks shared by every test module: ember leaves no processes and no shared memory behind.

Note [session leak check]: other programs (and other test runs) may use ember on the same
machine at the same time, so the check only looks at the sessions that this pytest process
started: it records every session id ``ember.init`` adopts, then, after each test module, waits
a few seconds for every ``ember_<session>_*`` file in /dev/shm and every ``ember.dynamic.``
process of those sessions to be gone.
"""

from __future__ import annotations

import glob
import os
import time

import pytest

from ember._system import shm

_sessions: set[str] = set()
_adopt = shm.set_session_id


def _record_session(sid: str) -> None:
    _sessions.add(sid)
    _adopt(sid)


shm.set_session_id = _record_session


def session_files(sids) -> list[str]:
    """The /dev/shm files of sessions ``sids``."""
    return [p for sid in sids for p in glob.glob(os.path.join(shm.SHM_DIR, f"ember_{sid}_*"))]


def session_processes(sids) -> list[tuple[int, str]]:
    """(pid, cmdline) of live ember.dynamic processes of sessions ``sids``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if ("ember.dynamic." in cmdline and state not in (b"Z", b"X")
                and any(f"session_{sid}" in cmdline for sid in sids)):
            found.append((int(entry), cmdline))
    return found


def wait_until_clean(sids, timeout: float = 10.0) -> tuple[list[str], list[tuple[int, str]]]:
    """Wait up to ``timeout`` for sessions ``sids`` to leave nothing; return what is left."""
    deadline = time.monotonic() + timeout
    while True:
        files, procs = session_files(sids), session_processes(sids)
        if (not files and not procs) or time.monotonic() > deadline:
            return files, procs
        time.sleep(0.05)


@pytest.fixture
def processes():
    """``processes(sids)``: (pid, cmdline) of the live ember processes of sessions ``sids``."""
    return session_processes


@pytest.fixture
def leftovers():
    """``leftovers(sids)``: wait for sessions ``sids`` to be gone; return (files, processes)."""
    return wait_until_clean


@pytest.fixture(autouse=True, scope="module")
def no_leftovers():
    """After each module: no shm file and no process of its ember sessions remain."""
    before = set(_sessions)
    yield
    import ember
    ember.shutdown()
    ours = _sessions - before
    files, procs = wait_until_clean(ours)
    assert not files, f"ember left files in {shm.SHM_DIR}: {files[:10]}"
    assert not procs, f"ember left processes: {procs}"
