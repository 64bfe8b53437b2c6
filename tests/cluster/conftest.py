"""Real clusters on this machine: every node an ``ember start --block`` process in its own mount
namespace with a private /dev/shm, and (as root) its own network namespace on a test bridge.

Drivers run as separate processes inside the head's namespaces (``nsenter``), so they share the
head node's /dev/shm as a driver on a real machine shares its node's. Nothing but TCP connects
the nodes: a segment made on one node cannot be opened from another.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _can_namespace() -> bool:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nsenter")):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm"],
                           capture_output=True)
    return probe.returncode == 0


def _can_netns() -> bool:
    if not shutil.which("ip"):
        return False
    name = f"embprobe{os.getpid() % 100000}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


class Node:
    """One ``ember start --block`` process and where it listens."""

    def __init__(self, proc: subprocess.Popen, ip: str, netns: str | None) -> None:
        self.proc = proc
        self.ip = ip
        self.netns = netns
        self.banner = ""

    @property
    def pid(self) -> int:
        return self.proc.pid


class Cluster:
    """Nodes started for one test, and everything needed to delete them afterwards."""

    def __init__(self, tmp_path: Path, use_netns: bool) -> None:
        self.tmp = tmp_path
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.env = {**os.environ, "HOME": str(self.home), "EMBER_NODE_TIMEOUT_S": "4",
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.env.pop("EMBER_AUTH_TOKEN", None)
        self.nodes: list[Node] = []
        self.tag = f"{os.getpid() % 10000}{int(time.time() * 1000) % 1000}"
        self.bridge = f"ebr{self.tag}" if use_netns else None
        self.port = 6380
        if self.bridge:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "link", "set", self.bridge, "up")
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.nodes[0].ip}:{self.port}"

    def _namespace(self, index: int) -> tuple[list[str], str, str | None]:
        """The command prefix that enters node ``index``'s network namespace, and its IP."""
        if not self.bridge:
            return [], "127.0.0.1", None
        ns, ip = f"ens{self.tag}n{index}", f"10.78.0.{index + 1}"
        host_end = f"ev{self.tag}{index}"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", host_end, "master", self.bridge, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return ["ip", "netns", "exec", ns], ip, ns

    def start_node(self, *args: str, head: bool = False) -> Node:
        """Start a node (the first one is the head) in namespaces of its own; wait until up."""
        index = len(self.nodes)
        prefix, ip, ns = self._namespace(index)
        where = ["--head", "--port", str(self.port)] if head else ["--address", self.address]
        start = " ".join([sys.executable, "-m", "ember.cli", "start", *where,
                          "--node-ip-address", ip, "--block", *map(_quote, args)])
        script = f"mount -t tmpfs -o size=1g tmpfs /dev/shm && exec {start}"
        proc = subprocess.Popen([*prefix, "unshare", "-m", "--propagation", "private", "sh",
                                 "-c", script], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        node = Node(proc, ip, ns)
        self.nodes.append(node)
        node.banner = self._wait_up(proc)
        return node

    def _wait_up(self, proc: subprocess.Popen) -> str:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline, seen = time.monotonic() + START_TIMEOUT_S, []
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if " is up at " in line:
                return line
        raise AssertionError("a node did not start:\n" + "".join(seen))

    def driver(self, source: str, timeout: float = 120, node: int = 0,
               check: bool = True) -> dict:
        """Run ``source`` as a driver on node ``node``; return the JSON its last line prints."""
        target = self.nodes[node]
        path = self.tmp / f"driver_{time.monotonic_ns()}.py"
        path.write_text(textwrap.dedent(source))
        spaces = ["--mount", "--net"] if target.netns else ["--mount"]
        done = subprocess.run(["nsenter", "--target", str(target.pid), *spaces,
                               sys.executable, str(path)], env=self.env, capture_output=True,
                              text=True, timeout=timeout, cwd=str(self.tmp))
        if check and done.returncode != 0:
            raise AssertionError(f"driver failed ({done.returncode}):\n{done.stdout}\n"
                                 f"{done.stderr}")
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"stderr": done.stderr}

    def kill_node(self, node: Node) -> None:
        """SIGKILL every process of a node at once (a machine that dies)."""
        os.killpg(node.pid, signal.SIGKILL)
        node.proc.wait(timeout=30)

    def ember(self, *args: str, node: int = 0) -> subprocess.CompletedProcess:
        """Run the ``ember`` command inside node ``node``'s namespaces."""
        target = self.nodes[node]
        spaces = ["--mount", "--net"] if target.netns else ["--mount"]
        return subprocess.run(["nsenter", "--target", str(target.pid), *spaces,
                               sys.executable, "-m", "ember.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        """Stop every node and delete the namespaces, bridge and folders the test made."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.proc.wait()
            try:
                os.killpg(node.pid, signal.SIGKILL)   # nothing of the node may outlive it
            except ProcessLookupError:
                pass
            node.proc.stdout.close()
            if node.netns:
                subprocess.run(["ip", "netns", "del", node.netns], capture_output=True)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        for record in (self.home / ".ember" / "nodes").glob("*.json"):   # killed nodes'
            shutil.rmtree(json.loads(record.read_text())["session_dir"], ignore_errors=True)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


@pytest.fixture
def cluster(tmp_path: Path):
    """A cluster factory: ``cluster.start_node(head=True)``, then more nodes; stopped after."""
    if not _can_namespace():
        pytest.skip("needs root with unshare/nsenter to give each node its own /dev/shm")
    made = Cluster(tmp_path, use_netns=_can_netns())
    try:
        yield made
    finally:
        made.stop()
