"""The driver's runtime: starting and stopping a local cluster, and the object API on top."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import threading
import time
import uuid
from typing import Any, Callable

from ember.dynamic import shm
from ember.dynamic.core_worker import CoreWorker, set_current_core
from ember.dynamic.object_ref import ObjectRef
from ember.dynamic.process import pidfd, remove_session_dir, session_dir, spawn
from ember.dynamic.resources import detect_gpus, detect_memory
from ember.exceptions import EmberError, ReinitError

_lock = threading.RLock()
_runtime: tuple[Any, Any] | None = None
_driver: "Driver | None" = None
_shutdown_hooks: list[Callable[[], None]] = []


class Driver:
    """The processes a driver started (GCS, node manager) and its own CoreWorker.

    Note [GCS restart]: the driver watches its GCS process; when it dies the driver starts a
    new one at the same address over the same storage, up to ``GCS_RESTARTS`` times. With the
    SQLite backend the tables (actors, names, functions, KV, subscriptions) come back; with the
    memory backend they start empty. Messages sent meanwhile wait in ZeroMQ until it listens.
    """

    GCS_RESTARTS = 5

    def __init__(self, sid: str, core: CoreWorker, procs: list[subprocess.Popen],
                 config: dict, gcs_args: list[str]) -> None:
        self.sid = sid
        self.core = core
        self.procs = procs
        self.config = config
        self.gcs_args = gcs_args
        self.gcs_restarts = 0
        self.stopping = False

    def watch_gcs(self) -> None:
        """Restart the GCS process if it exits before shutdown (Note [GCS restart])."""
        fd = pidfd(self.procs[0].pid)
        if fd is not None:
            self.core.endpoint.watch_fd(fd, lambda: self._gcs_exited(fd))

    def _gcs_exited(self, fd: int) -> None:
        os.close(fd)
        self.procs[0].wait()
        if self.stopping or self.gcs_restarts >= self.GCS_RESTARTS:
            return
        self.gcs_restarts += 1
        self.procs[0] = spawn("ember.dynamic.gcs", self.gcs_args)
        self.watch_gcs()


def set_runtime(core: Any, submitter: Any) -> None:
    """Install this process's CoreWorker and Submitter (workers call this at start-up)."""
    global _runtime
    _runtime = (core, submitter)
    set_current_core(core)


def runtime() -> tuple[Any, Any]:
    """This process's (CoreWorker, Submitter), starting a local cluster on first use."""
    if _runtime is None:
        init()
    return _runtime


def is_initialized() -> bool:
    """Whether ember is running in this process."""
    return _runtime is not None


def init(num_cpus: int | None = None, num_gpus: int | None = None,
         resources: dict[str, float] | None = None, object_store_memory: int | None = None,
         ignore_reinit_error: bool = False, namespace: str | None = None,
         _gcs_storage: str | None = None, **_ignored: Any) -> dict:
    """Start a local cluster: a GCS, a node manager with its workers, and this driver."""
    global _driver
    from ember.dynamic.submitter import Submitter
    with _lock:
        if _runtime is not None:
            if ignore_reinit_error:
                return {"session": shm.session_id()}
            raise ReinitError("ember.init() was already called; call ember.shutdown() first, "
                              "or pass ignore_reinit_error=True")
        sid = uuid.uuid4().hex[:12]
        shm.set_session_id(sid)
        folder = session_dir(sid)
        total = {"CPU": float(num_cpus if num_cpus is not None else os.cpu_count() or 1),
                 "GPU": float(num_gpus if num_gpus is not None else detect_gpus()),
                 "memory": float(detect_memory() // 2), **(resources or {})}
        store_memory = object_store_memory or int(detect_memory() * 0.3)
        config = {"resources": total, "object_store_memory": store_memory,
                  "prestart": int(min(total["CPU"], 4))}
        address = f"ipc://{folder}/driver_{os.getpid()}.sock"
        gcs_address = f"ipc://{folder}/gcs.sock"
        nm_address = f"ipc://{folder}/node_manager.sock"
        core = CoreWorker(address, nm_address, gcs_address, None)
        ready: dict[str, threading.Event] = {"gcs": threading.Event(),
                                             "node_manager": threading.Event()}
        core.endpoint.on("process_ready", lambda name, _addr: ready[name].set())
        core.start()
        gcs_args = [gcs_address, address, _gcs_storage or "memory"]
        procs = [spawn("ember.dynamic.gcs", gcs_args),
                 spawn("ember.dynamic.node_manager",
                       [nm_address, address, gcs_address, json.dumps(config)])]
        for name, event in ready.items():
            if not event.wait(30):
                _stop_processes(procs)
                core.stop()
                remove_session_dir(sid)
                raise EmberError(f"the {name} process did not start within 30 s; see its "
                                 f"output above")
        core.endpoint.send(nm_address, "register_client", address, os.getpid())
        core.endpoint.call(gcs_address, "kv_put", "jobs", sid, {
            "driver_pid": os.getpid(), "driver_address": address, "namespace": namespace,
            "start_time": time.time()}, True)
        set_runtime(core, Submitter(core))
        _driver = Driver(sid, core, procs, config, gcs_args)
        _driver.watch_gcs()
        atexit.register(shutdown)
        return {"session": sid, "address": address, "resources": total}


def shutdown() -> None:
    """Stop the cluster this driver started: every process ends, shared memory is removed."""
    global _driver, _runtime
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
        _runtime = None
        set_current_core(None)
        core = driver.core
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
    """The value(s) of a ref or a list of refs; raises the task's error or GetTimeoutError.

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
    """Split ``refs`` into (ready, not ready) once ``num_returns`` are ready or at timeout."""
    if not isinstance(refs, (list, tuple)) or not all(isinstance(r, ObjectRef) for r in refs):
        raise TypeError("ember.wait takes a list of ObjectRefs")
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


def _node_state() -> tuple[dict, dict, dict]:
    core, _ = runtime()
    return core.endpoint.call(core.nm_address, "resources")


def cluster_resources() -> dict[str, float]:
    """Total resources of the cluster."""
    return dict(_node_state()[0])


def available_resources() -> dict[str, float]:
    """Resources not held by running tasks and actors."""
    return {k: v for k, v in _node_state()[1].items() if v > 0}


def nodes() -> list[dict]:
    """One record per node (this runtime runs one node)."""
    total, _, store = _node_state()
    core, _ = runtime()
    return [{"NodeID": shm.session_id(), "Alive": True, "Resources": total,
             "NodeManagerAddress": core.nm_address, "ObjectStore": store}]


def get_gpu_ids() -> list[int]:
    """GPU ids given to the current task or actor (empty in the driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if os.environ.get(
        "EMBER_WORKER") else ""
    return [int(g) for g in visible.split(",") if g.strip().isdigit()]
