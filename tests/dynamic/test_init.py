"""Starting and stopping ember: init, shutdown, re-init, automatic init, GCS storage."""

from __future__ import annotations

import sqlite3

import pytest

import ember
from ember._system import shm
from ember.exceptions import ReinitError


@pytest.mark.timeout(60)
def test_init_then_shutdown_leaves_nothing(leftovers):
    ember.init(num_cpus=1)
    sid = shm.session_id()
    assert ember.is_initialized()
    assert ember.get(ember.put(41)) == 41
    ember.shutdown()
    assert not ember.is_initialized()
    files, procs = leftovers({sid})
    assert files == [] and procs == []
    ember.shutdown()  # idempotent


@pytest.mark.timeout(60)
def test_init_twice_is_an_error_unless_ignored():
    ember.init(num_cpus=1)
    try:
        with pytest.raises(ReinitError, match="ignore_reinit_error"):
            ember.init(num_cpus=1)
        info = ember.init(num_cpus=1, ignore_reinit_error=True)
        assert info["session"] == shm.session_id()
        assert ember.get(ember.put("still running")) == "still running"
    finally:
        ember.shutdown()


@pytest.mark.timeout(60)
def test_first_use_starts_ember():
    assert not ember.is_initialized()
    try:
        ref = ember.put([1, 2, 3])
        assert ember.is_initialized()
        assert ember.get(ref) == [1, 2, 3]
    finally:
        ember.shutdown()


@pytest.mark.timeout(60)
def test_sqlite_gcs_storage_persists_the_kv_table(tmp_path):
    path = tmp_path / "gcs.db"
    ember.init(num_cpus=1, _gcs_storage=f"sqlite://{path}")
    try:
        from ember.dynamic.api.driver import runtime
        core, _ = runtime()
        assert core.endpoint.call(core.gcs_address, "kv_put", "kv", "answer", 42, True)
        assert core.endpoint.call(core.gcs_address, "kv_get", "kv", "answer") == 42

        @ember.remote
        def one():
            return 1

        assert ember.get(one.remote()) == 1
    finally:
        ember.shutdown()
    db = sqlite3.connect(path)
    try:
        tables = {tbl for (tbl,) in db.execute("SELECT DISTINCT tbl FROM kv")}
        keys = {key for (key,) in db.execute("SELECT key FROM kv WHERE tbl = 'kv'")}
    finally:
        db.close()
    assert "answer" in keys
    assert "functions" in tables
