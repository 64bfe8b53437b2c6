"""The driver restarts a GCS that dies; with SQLite storage its tables come back."""

from __future__ import annotations

import os
import signal
import time

import pytest

import ember
from ember.dynamic import api


@ember.remote
class Named:
    def ping(self):
        return "pong"


@ember.remote
def plus_one(x):
    return x + 1


@pytest.mark.timeout(60)
def test_gcs_killed_is_restarted_from_sqlite(tmp_path):
    ember.init(num_cpus=1, _gcs_storage=f"sqlite://{tmp_path}/gcs.db")
    try:
        actor = Named.options(name="survivor").remote()
        assert ember.get(actor.ping.remote()) == "pong"
        assert ember.get(plus_one.remote(1)) == 2
        driver = api._driver
        old_pid = driver.procs[0].pid
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while driver.procs[0].pid == old_pid or driver.procs[0].poll() is not None:
            assert time.monotonic() < deadline, "the GCS was not restarted"
            time.sleep(0.05)
        again = ember.get_actor("survivor")  # the name table came back from the file
        assert ember.get(again.ping.remote(), timeout=20) == "pong"

        @ember.remote
        def new_function():
            return "exported after the restart"
        assert ember.get(new_function.remote(), timeout=20) == "exported after the restart"
    finally:
        ember.shutdown()
