"""A node of a cluster, as ``ember start`` runs it: the node daemon and the processes it owns.

The daemon of a head starts the GCS and a node manager and opens the bootstrap port (Note
[bootstrap port] in node_records.py); the daemon of any other node asks the head for the GCS's
address and starts a node manager only. Every process of the node listens on TCP at the node's
IP (Note [cluster sockets] in messaging.py) and takes its key from the cluster token (Note
[cluster token]). The daemon writes its node record (Note [node records]), then waits: on
SIGTERM or SIGINT (``ember stop``, Ctrl-C, a container's stop), or when its GCS or node manager
exits (then with exit code 1, so a container or ``srun`` step sees the failure), it stops the
node: the node manager ends its workers and removes the node's shared memory,
and the record and session folder go. The GCS and node manager end with the daemon even when it
is SIGKILLed (Note [parent death] in process.py); the other nodes then notice the silence (Note
[node heartbeats] in node_table.py). A dead GCS or node manager is not restarted: the node stops.

Run as ``python -m ember.dynamic.cluster.node <options JSON> [<ready fd>]`` (``ember start`` without
``--block``), or in-process through ``run`` (with ``--block``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid

from ember._system import cluster_auth, shm
from ember.dynamic.cluster import node_records
from ember.dynamic.common.labels import NODE_ID_LABEL, NODE_RESOURCE, validate_labels
from ember.dynamic.rpc.messaging import Endpoint, listen_address
from ember._system.process import (pidfd, remove_session_dir, session_dir, spawn, start_time,
                                   wait_until_done)
from ember._system.gpu_env import gpu_count
from ember.dynamic.common.resources import default_object_store_memory, detect_memory
from ember.exceptions import EmberError

START_TIMEOUT_S = 30.0


def node_config(options: dict, sid: str) -> dict:
    """The node manager's configuration from ``ember start``'s options."""
    total = {"CPU": float(options.get("num_cpus") or os.cpu_count() or 1),
             "GPU": float(options["num_gpus"] if options.get("num_gpus") is not None
                          else gpu_count()),
             "memory": float(detect_memory() // 2), **(options.get("resources") or {}),
             NODE_RESOURCE.format(sid): 1.0}
    labels = validate_labels(options.get("labels"))
    return {"resources": total, "prestart": int(min(total["CPU"], 2)),
            "object_store_memory": int(options.get("object_store_memory")
                                       or default_object_store_memory()),
            "labels": {**labels, NODE_ID_LABEL: sid}, "worker_env": {}, "cluster": True}


class NodeDaemon:
    """The processes of one node and how they start and stop."""

    def __init__(self, options: dict) -> None:
        self.options = options
        self.head = options["head"]
        self.ip = options.get("node_ip_address") or "127.0.0.1"
        self.port = int(options.get("port") or node_records.DEFAULT_PORT)
        self.procs: list[tuple[str, subprocess.Popen, str]] = []   # (name, process, address)
        self.done = threading.Event()
        self.stopping = False
        self.failed = False   # a process of the node died: ``run`` exits non-zero
        self.bootstrap: node_records.BootstrapServer | None = None
        self.record_path: str | None = None
        self.token_note = ""
        if self.head:
            _, origin, made = cluster_auth.ensure_token()
            self.token_note = (f"a new cluster token was made and stored in {origin}"
                               if made else f"the cluster token comes from {origin}")
        os.environ[cluster_auth.CLUSTER_ENV] = "1"
        os.environ[cluster_auth.NODE_IP_ENV] = self.ip
        self.cluster_address = (f"{self.ip}:{self.port}" if self.head else options["address"])
        head_facts = None if self.head else node_records.ask_head(options["address"])
        self.sid = uuid.uuid4().hex[:12]
        shm.set_session_id(self.sid)
        self.folder = session_dir(self.sid)
        self.ready: dict[str, tuple[threading.Event, list]] = {}
        self.endpoint = Endpoint(listen_address(self.folder, "node"), "node")
        self.endpoint.on("process_ready", self._process_ready)
        self.endpoint.start()
        self.gcs_address = None if head_facts is None else head_facts["gcs_address"]

    def start(self) -> None:
        """Start the node's processes, open the bootstrap port (head), write the record."""
        if self.head:
            self.gcs_address = self._start("ember.dynamic.gcs.server", "gcs", [
                f"tcp://{self.ip}:*", self.endpoint.address, "memory"])
        self.nm_address = self._start("ember.dynamic.node_manager.server", "node manager", [
            f"tcp://{self.ip}:*", self.endpoint.address, self.gcs_address,
            json.dumps(node_config(self.options, self.sid))])
        if self.head:
            self.bootstrap = node_records.BootstrapServer(self.ip, self.port, {
                "gcs_address": self.gcs_address, "head_node_id": self.sid})
        self.record_path = node_records.write_record({
            "pid": os.getpid(), "start_time": start_time(os.getpid()), "node_id": self.sid,
            "node_ip": self.ip, "head": self.head, "address": self.cluster_address,
            "gcs_address": self.gcs_address, "nm_address": self.nm_address,
            "shm_dev": node_records.shm_device(), "session_dir": self.folder})
        for name, proc, _ in self.procs:
            fd = pidfd(proc.pid)
            if fd is not None:
                self.endpoint.watch_fd(fd, lambda name=name: self._exited(name))

    def _start(self, module: str, name: str, args: list[str]) -> str:
        event, box = threading.Event(), []
        self.ready[name] = (event, box)
        proc = spawn(module, args)
        if not event.wait(START_TIMEOUT_S):
            proc.kill()
            raise EmberError(f"the {name} of this node did not start within "
                             f"{START_TIMEOUT_S:g} s; see its output above")
        self.procs.append((name, proc, box[0]))
        return box[0]

    def _process_ready(self, name: str, address: str) -> None:
        event, box = self.ready[name.replace("_", " ")]
        box.append(address)
        event.set()

    def _exited(self, name: str) -> None:
        if not self.stopping:
            print(f"ember node {self.sid}: its {name} exited; stopping the node",
                  file=sys.stderr, flush=True)
            self.failed = True
            self.done.set()

    def banner(self) -> str:
        """How to use the node, printed once it is up."""
        lines = [f"ember node {self.sid} is up at {self.ip} "
                 f"({'head' if self.head else 'joined ' + self.cluster_address})."]
        if self.head:
            lines += [self.token_note + ".",
                      f"Add a node:        ember start --address {self.cluster_address}",
                      f"Connect a driver:  ember.init(address=\"{self.cluster_address}\")  "
                      f"(or address=\"auto\" on a machine running a node)",
                      "Stop this machine's nodes:  ember stop"]
        return "\n".join(lines)

    def wait(self) -> None:
        """Block until SIGTERM/SIGINT or until a process of the node exits."""
        signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
        wait_until_done(self.done)

    def stop(self) -> None:
        """Stop the node: its processes end, its shared memory, folder and record go."""
        self.stopping = True
        if self.bootstrap is not None:
            self.bootstrap.stop()
        for _, proc, address in reversed(self.procs):   # the node manager before the GCS
            if proc.poll() is None:
                self.endpoint.send(address, "shutdown")
            _end(proc)
        self.endpoint.stop()
        shm.cleanup_session(self.sid)
        remove_session_dir(self.sid)
        if self.record_path is not None:
            node_records.remove(self.record_path)


def _end(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(options: dict, ready_fd: int | None = None) -> int:
    """Start a node, report it ready (on ``ready_fd`` or stdout), run until told to stop."""
    daemon = NodeDaemon(options)
    if ready_fd is not None:   # in the background: the node's output goes to its folder
        log = os.open(os.path.join(daemon.folder, "node.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
    try:
        daemon.start()
        banner = daemon.banner()
        if ready_fd is not None:
            os.write(ready_fd, (banner + "\n").encode())
            os.close(ready_fd)
        else:
            print(banner, flush=True)
        daemon.wait()
    finally:
        daemon.stop()
    return 1 if daemon.failed else 0


def main() -> None:
    """Entry point of a background node daemon (``ember start`` without ``--block``)."""
    options = json.loads(sys.argv[1])
    ready_fd = int(sys.argv[2]) if len(sys.argv) > 2 else None
    try:
        sys.exit(run(options, ready_fd))
    except Exception as exc:  # noqa: BLE001 - reported to ``ember start`` through the pipe
        if ready_fd is not None:
            try:
                os.write(ready_fd, f"ERROR {type(exc).__name__}: {exc}\n".encode())
            except OSError:
                pass
        raise


if __name__ == "__main__":
    main()
