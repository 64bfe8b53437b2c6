"""Fixtures of the channel tests: a fresh shared-memory session per test, checked for leftovers."""

from __future__ import annotations

import glob
import multiprocessing
import os
import uuid
from collections.abc import Iterator

import pytest

from ember._system import shm


@pytest.fixture(autouse=True)
def session() -> Iterator[str]:
    """Give the test its own session id; after it, nothing of that session may be in /dev/shm."""
    previous = os.environ.get("EMBER_SESSION")
    sid = "chtest" + uuid.uuid4().hex[:10]
    shm.set_session_id(sid)
    yield sid
    left = glob.glob(os.path.join(shm.SHM_DIR, f"ember_{sid}_*"))
    shm.cleanup_session(sid)
    if previous is None:
        os.environ.pop("EMBER_SESSION", None)
    else:
        shm.set_session_id(previous)
    assert not left, f"the test left shared-memory segments behind: {left}"


@pytest.fixture(autouse=True)
def token(monkeypatch) -> str:
    """A cluster token for the handshake of TCP channels (Note [connection handshake]); spawned
    peers inherit it, and no session secret is needed."""
    monkeypatch.setenv("EMBER_AUTH_TOKEN", "test-token-of-the-channel-tests")
    return "test-token-of-the-channel-tests"


@pytest.fixture
def spawn() -> multiprocessing.context.SpawnContext:
    """The multiprocessing context for peer processes: spawn, so nothing is shared by fork."""
    return multiprocessing.get_context("spawn")
