"""The ember command line."""

import subprocess
import sys

import pytest


@pytest.mark.timeout(60)
def test_version_and_status():
    version = subprocess.run([sys.executable, "-m", "ember.cli", "--version"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.startswith("ember ")
    status = subprocess.run([sys.executable, "-m", "ember.cli", "status"],
                            capture_output=True, text=True, check=True)
    assert "CPUs:" in status.stdout and "GPUs:" in status.stdout


def _ember(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember.cli", *args], capture_output=True,
                          text=True, timeout=90, env=env)


@pytest.mark.timeout(120)
def test_start_in_the_background_status_and_stop(tmp_path):
    """``ember start --head`` returns once the node is up and says how to connect; it made
    the token (0600); ``ember status`` sees the node; ``ember stop`` ends it and removes its
    record, session folder and shared memory."""
    import glob
    import json
    import os
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("EMBER_AUTH_TOKEN", None)
    started = _ember("start", "--head", "--port", str(port), "--num-cpus", "1", env=env)
    assert started.returncode == 0, started.stderr
    assert f'ember.init(address="127.0.0.1:{port}")' in started.stdout
    token = tmp_path / ".ember" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text().strip()) == 64
    [record] = [json.loads(p.read_text()) for p in (tmp_path / ".ember" / "nodes").iterdir()]
    status = _ember("status", "--address", f"127.0.0.1:{port}", env=env)
    assert "1 node(s) alive" in status.stdout, status.stdout + status.stderr
    again = _ember("start", "--head", "--port", str(port), env=env)
    assert again.returncode != 0 and "another head" in again.stderr
    stopped = _ember("stop", env=env)
    assert "stopped ember node" in stopped.stdout
    assert not os.path.exists(record["session_dir"])
    assert not list((tmp_path / ".ember" / "nodes").iterdir())
    assert not glob.glob(f"/dev/shm/ember_{record['node_id']}_*")
    from ember._system.process import pid_alive
    assert not pid_alive(record["pid"])   # exited (a zombie until its new parent reaps it)
