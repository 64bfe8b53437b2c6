"""A driver that exits or is killed takes its whole session with it: processes, shared memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ember

DRIVER = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import ember
    from ember._system import shm

    if sys.argv[1] == "sigkill-after-init-in-a-thread":  # the runtime outlives that thread
        starter = threading.Thread(target=ember.init, kwargs={"num_cpus": 2})
        starter.start()
        starter.join()
    else:
        ember.init(num_cpus=2)

    @ember.remote
    class Holder:
        def __init__(self, value):
            self.value = value

        def size(self):
            return self.value.nbytes

    @ember.remote
    def forever():
        time.sleep(600)

    big = ember.put(np.ones(4 << 20))  # 32 MiB in shared memory
    actors = [Holder.remote(big) for _ in range(2)]
    assert ember.get([a.size.remote() for a in actors]) == [32 << 20] * 2
    running = forever.remote()
    print(shm.session_id(), flush=True)
    if sys.argv[1] == "exit":
        sys.stdin.readline()  # exits without ember.shutdown() once the test has looked
    else:
        time.sleep(600)
""")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("end", ["sigkill", "exit", "sigkill-after-init-in-a-thread"])
def test_driver_end_leaves_nothing(leftovers, tmp_path, end):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, str(script), end], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True)
    try:
        sid = proc.stdout.readline().strip()
        assert sid, "the driver did not start"
        files, procs = leftovers({sid}, timeout=0)
        assert files and len(procs) >= 4, (files, procs)  # gcs, node manager, 2 actors, ...
        if end == "exit":
            proc.stdin.write("bye\n")
            proc.stdin.flush()
            assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    files, procs = leftovers({sid}, timeout=5)
    assert files == [], f"shared memory of the killed driver is left: {files}"
    assert procs == [], f"processes of the killed driver are left: {procs}"


@pytest.mark.timeout(60)
def test_node_manager_ends_cleanly_on_two_sigterms():
    """Two SIGTERMs back to back (a dying parent plus a kill) end the node manager cleanly."""
    ember.init(num_cpus=1)
    try:
        from ember.dynamic.api import driver
        manager = driver._driver.procs[1]
        ember.get(ember.put(np.zeros(1 << 20)))  # a segment for it to clean up
        os.kill(manager.pid, signal.SIGTERM)
        os.kill(manager.pid, signal.SIGTERM)
        assert manager.wait(timeout=15) == 0
    finally:
        ember.shutdown()
