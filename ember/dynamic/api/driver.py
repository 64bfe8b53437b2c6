"""The driver's runtime: starting and stopping a local cluster, and the object API on top."""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from typing import Any, Callable

from ember._system import shm
from ember._system.auth import create_session_secret
from ember.dynamic.core.core_worker import CoreWorker
from ember.dynamic.core.process_runtime import (clear_runtime, is_initialized, runtime,
                                                 set_runtime, set_starter)
from ember.dynamic.common.labels import NODE_ID_LABEL, validate_labels
from ember.dynamic.core.object_ref import ObjectRef
from ember._system.process import remove_session_dir, session_dir
from ember._system.gpu_env import gpu_count
from ember.dynamic.common.resources import default_object_store_memory, detect_memory
from ember.dynamic.api.runtime_context import facts, node_labels, runtime_env_vars
from ember._system.cluster_auth import CLUSTER_ENV, NODE_IP_ENV
from ember.dynamic.rpc.messaging import listen_address
from ember.dynamic.cluster.node_records import ask_head, local_node, split_address
from ember.dynamic.objects.transfer import Node
from ember.dynamic.cluster.supervisor import ClusterDriver, Driver
from ember.exceptions import EmberError, ReinitError

ADDRESS_ENV = "EMBER_ADDRESS"   # Ray's RAY_ADDRESS: the cluster ``init()`` joins by default
_lock = threading.RLock()
_driver: "Driver | None" = None
_shutdown_hooks: list[Callable[[], None]] = []



def init(address: str | None = None, *, num_cpus: int | None = None,
         num_gpus: int | None = None, resources: dict[str, float] | None = None,
         labels: dict[str, str] | None = None, object_store_memory: int | None = None,
         ignore_reinit_error: bool = False, namespace: str | None = None,
         runtime_env: dict | None = None, _gcs_storage: str | None = None,
         **_ignored: Any) -> dict:
    """Start a local cluster (a GCS, a node manager with its workers, and this driver), or
    connect this driver to a running one.

    ``address`` is Ray's first parameter: None or "local" start a new local cluster; "auto"
    joins the cluster of the node running on this machine (``ember start``), and "HOST:PORT"
    the cluster whose head is there (which must have a node on this machine too). The job's
    ``runtime_env={"env_vars": {...}}`` is set in every worker of a local cluster (the node
    manager starts them with it); in a cluster, every task and actor of the job (and theirs)
    runs with it, on workers of its own (Note [private leases]). Ray options this runtime has
    no use for (``include_dashboard``...) are ignored.
    """
    global _driver
    from ember.dynamic.core.submitter import Submitter
    address = check_address(address if address is not None else os.environ.get(ADDRESS_ENV))
    node_labels = validate_labels(labels)
    job_env = runtime_env_vars(runtime_env)
    if namespace is not None and not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    with _lock:
        if is_initialized():
            if ignore_reinit_error:
                return {"session": shm.session_id()}
            raise ReinitError("ember.init() was already called; call ember.shutdown() first, "
                              "or pass ignore_reinit_error=True")
        if address is not None:
            facts().namespace = namespace or f"anonymous-{uuid.uuid4()}"
            return _connect(address, facts().namespace, job_env)
        sid = uuid.uuid4().hex[:12]
        shm.set_session_id(sid)
        folder = session_dir(sid)
        create_session_secret(folder)
        total = {"CPU": float(num_cpus if num_cpus is not None else os.cpu_count() or 1),
                 "GPU": float(num_gpus if num_gpus is not None else gpu_count()),
                 "memory": float(detect_memory() // 2), **(resources or {})}
        store_memory = object_store_memory or default_object_store_memory()
        config = {"resources": total, "object_store_memory": store_memory,
                  "prestart": int(min(total["CPU"], 4)),
                  "labels": {**node_labels, NODE_ID_LABEL: sid}, "worker_env": job_env}
        facts().namespace = namespace = namespace or f"anonymous-{uuid.uuid4()}"
        address = f"ipc://{folder}/driver_{os.getpid()}.sock"
        gcs_address = f"ipc://{folder}/gcs.sock"
        nm_address = f"ipc://{folder}/node_manager.sock"
        core = CoreWorker(address, nm_address, gcs_address, None)
        ready: dict[str, threading.Event] = {"gcs": threading.Event(),
                                             "node_manager": threading.Event()}
        core.endpoint.on("process_ready", lambda name, _addr: ready[name].set())
        driver = Driver(sid, core, [gcs_address, address, _gcs_storage or "memory"],
                        [nm_address, address, gcs_address, json.dumps(config)])
        core.start()
        driver.start()
        for name, event in ready.items():
            if not event.wait(30):
                _stop_processes(driver.procs)
                core.stop()
                remove_session_dir(sid)
                raise EmberError(f"the {name} process did not start within 30 s; see its "
                                 f"output above")
        core.endpoint.send(nm_address, "register_client", address, os.getpid())
        core.gcs_call("kv_put", "jobs", sid, {
            "driver_pid": os.getpid(), "driver_address": address, "namespace": namespace,
            "start_time": time.time()}, True)
        submitter = Submitter(core)
        set_runtime(core, submitter)
        _driver = driver
        driver.watch(submitter)
        atexit.register(shutdown)
        return {"session": sid, "address": address, "resources": total}


def check_address(address: str | None) -> str | None:
    """The cluster address to connect to: None for a new local cluster."""
    if address is None or address == "local":
        return None
    if not isinstance(address, str):
        raise TypeError(f"address must be a str or None, not {type(address).__name__}")
    if address != "auto":
        split_address(address)   # ValueError for a malformed one
    return address


def _connect(address: str, namespace: str, job_env: dict[str, str]) -> dict:
    """Join a running cluster through the node on this machine (Note [node records]); the
    job's env vars go with each of its tasks and actors (call_env_vars)."""
    global _driver
    from ember.dynamic.core.submitter import Submitter
    if address == "auto":
        record = local_node()
        if record is None:
            raise ConnectionError(
                "no running ember cluster was found on this machine (address='auto'): start "
                "one with `ember start --head`, or call ember.init() for a local cluster")
    else:
        record = local_node(ask_head(address)["gcs_address"])
        if record is None:
            raise ConnectionError(
                f"the cluster at {address} has no node on this machine (sharing this "
                f"process's /dev/shm); run `ember start --address {address}` here first")
    os.environ[CLUSTER_ENV] = "1"
    facts().runtime_env = {"env_vars": dict(job_env)} if job_env else {}
    os.environ[NODE_IP_ENV] = record["node_ip"]
    sid = record["node_id"]
    shm.set_session_id(sid)
    core = CoreWorker(listen_address(session_dir(sid), f"driver_{os.getpid()}"),
                      record["nm_address"], record["gcs_address"], None)
    core.start()
    node = core.gcs_call("kv_get", "nodes", sid)
    core.node = Node(sid, record["nm_address"], node["transfer"])
    core.endpoint.send(core.nm_address, "register_client", core.address, os.getpid())
    core.gcs_call("kv_put", "jobs", f"{sid}-{os.getpid()}", {
        "driver_pid": os.getpid(), "driver_address": core.address, "namespace": namespace,
        "start_time": time.time()}, True)
    submitter = Submitter(core)
    set_runtime(core, submitter)
    _driver = ClusterDriver(core, submitter, node["pid"])
    atexit.register(shutdown)
    return {"session": sid, "address": record["address"], "node_id": sid}


set_starter(init)   # Note [process runtime]: a driver that never called init starts here


def shutdown() -> None:
    """Stop the cluster this driver started: every process ends, shared memory is removed."""
    global _driver
    with _lock:
        if _driver is None:
            return
        for hook in list(_shutdown_hooks):
            try:
                hook()
            except Exception:  # noqa: BLE001 - a failing hook must not stop the shutdown
                pass
        driver, _driver = _driver, None
        driver.stopping = True
        clear_runtime()
        facts().namespace = facts().node_labels = None
        facts().runtime_env = {}
        core = driver.core
        if isinstance(driver, ClusterDriver):   # the cluster stays; this job's share ends
            core.endpoint.send(core.gcs_address, "client_gone", core.address)
            core.stop(free_owned=True)
            for name in (CLUSTER_ENV, NODE_IP_ENV):
                os.environ.pop(name, None)
            return
        for address in (core.nm_address, core.gcs_address):
            core.endpoint.send(address, "shutdown")
        _stop_processes(driver.procs)
        core.stop()
        shm.cleanup_session(driver.sid)
        remove_session_dir(driver.sid)


def _stop_processes(procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def add_shutdown_hook(fn: Callable[[], None]) -> None:
    """Call ``fn`` at ``shutdown()`` before the processes stop (compiled graphs tear down)."""
    _shutdown_hooks.append(fn)


def remove_shutdown_hook(fn: Callable[[], None]) -> None:
    """Undo ``add_shutdown_hook``."""
    if fn in _shutdown_hooks:
        _shutdown_hooks.remove(fn)


def put(value: Any, _tensor_transport: str | None = None) -> ObjectRef:
    """Store ``value`` in the object store; return its ref (``_tensor_transport``: keep its
    tensors in this actor, Note [value transports])."""
    if isinstance(value, ObjectRef):
        raise TypeError("ember.put of an ObjectRef is not allowed; pass the ref itself")
    core, _ = runtime()
    return core.put(value, _tensor_transport)


def get(refs: Any, timeout: float | None = None, _use_object_store: bool = False) -> Any:
    """The value(s) of a ref or a list of refs; raises the task's error or GetTimeoutError
    (Note [timeouts] in ember/exceptions.py).

    Tensors kept in an actor (Note [value transports]) arrive as a host copy through the object
    store with or without ``_use_object_store`` (accepted for Ray's API)."""
    core, _ = runtime()
    if isinstance(refs, ObjectRef):
        return core.get_one(refs, timeout)
    if isinstance(refs, (list, tuple)):
        deadline = None if timeout is None else time.monotonic() + timeout
        if all(isinstance(r, ObjectRef) for r in refs):
            return core.get(list(refs), timeout)
        return [get(r, None if deadline is None else max(0.0, deadline - time.monotonic()))
                for r in refs]
    if hasattr(refs, "__ember_get__"):
        return refs.__ember_get__(timeout)
    raise TypeError(f"ember.get takes an ObjectRef or a list of them, not "
                    f"{type(refs).__name__}")


def wait(refs: list[ObjectRef], num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split ``refs`` into (ready, not ready) once ``num_returns`` are ready or at timeout
    (Note [timeouts] in ember/exceptions.py)."""
    if not isinstance(refs, (list, tuple)) or not all(isinstance(r, ObjectRef) for r in refs):
        raise TypeError("ember.wait takes a list of ObjectRefs")
    if not refs:
        return [], []
    if len(set(refs)) != len(refs):
        raise ValueError("ember.wait got the same ObjectRef twice")
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns={num_returns} is out of range for {len(refs)} refs")
    core, _ = runtime()
    done = threading.Event()
    count = [0]
    count_lock = threading.Lock()

    def one_ready() -> None:
        with count_lock:
            count[0] += 1
            if count[0] >= num_returns:
                done.set()

    if num_returns == 0:
        done.set()
    for ref in refs:
        core.when_ready(ref, one_ready)
    done.wait(timeout)
    ready = [r for r in refs if core.is_ready(r)]
    if len(ready) > num_returns:
        ready = ready[:num_returns]
    chosen = set(ready)
    return ready, [r for r in refs if r not in chosen]


def cancel(ref: ObjectRef, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes ``ref``; its ``get`` then raises TaskCancelledError."""
    _, submitter = runtime()
    submitter.cancel(ref, force)


def _node_records() -> list[dict]:
    """Every node as Ray's ``nodes()`` describes it; this node's numbers fresh from its node
    manager, the others' as of their last heartbeat (Note [node heartbeats])."""
    core, submitter = runtime()
    if submitter.node_gone is not None:  # Note [node manager death] in supervisor.py
        raise submitter.node_gone
    total, available, store = core.ask(core.nm_address, "resources")
    here = {"NodeID": core.node.node_id, "Alive": True, "Resources": total,
            "Available": available, "NodeManagerAddress": node_ip_address(),
            "NodeManagerHostname": socket.gethostname(), "ObjectStore": store,
            "Labels": node_labels()}
    if not os.environ.get(CLUSTER_ENV):
        return [here]
    records = [here]
    for node_id, record in sorted(core.gcs_call("kv_items", "nodes")):
        if node_id != here["NodeID"]:
            records.append({
                "NodeID": node_id, "Alive": record.get("alive", True),
                "Resources": record["resources"],
                "Available": record.get("available", record["resources"]),
                "NodeManagerAddress": record.get("node_ip"),
                "NodeManagerHostname": record.get("node_ip"), "Labels": record.get("labels", {})})
    return records


def node_ip_address() -> str:
    """The IP address this node is reached at: the one it listens on in a cluster, else the
    source address of the default route (connecting a UDP socket sends nothing; without a
    route the answer is the loopback address)."""
    if os.environ.get(NODE_IP_ENV):
        return os.environ[NODE_IP_ENV]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            return sock.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _sum(which: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for record in _node_records():
        if record["Alive"]:
            for k, v in record[which].items():
                total[k] = total.get(k, 0.0) + v
    return total


def cluster_resources() -> dict[str, float]:
    """Total resources of the cluster's live nodes."""
    return _sum("Resources")


def available_resources() -> dict[str, float]:
    """Resources not held by running tasks and actors."""
    return {k: v for k, v in _sum("Available").items() if v > 0}


def nodes() -> list[dict]:
    """One record per node of the cluster (dead ones too, ``Alive`` False), this one first."""
    return _node_records()

