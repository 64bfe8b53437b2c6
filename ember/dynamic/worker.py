"""A worker process: runs tasks and hosts at most one actor, receiving calls from their owners.

The I/O thread queues incoming calls; the main thread runs them in arrival order. An actor whose
methods are coroutines runs them on an asyncio loop of its own thread (up to ``max_concurrency``
at once); a threaded actor (``max_concurrency > 1``) runs calls on a thread pool.
Run as ``python -m ember.dynamic.worker <nm_address> <gcs_address> <worker_id>``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ember.dynamic import api, remote_function, shm, value_transport
from ember.dynamic.core_worker import FAILED, CoreWorker
from ember.dynamic.process import bind_to_parent, session_dir
from ember.dynamic.serialization import serialize
from ember.dynamic.submitter import Submitter
from ember.dynamic.task_spec import decode_args
from ember.exceptions import SerializationError, TaskCancelledError, TaskError

EMBER_RUN = "__ember_run__"


class WorkerProcess:
    """The main loop and call execution of one worker."""

    def __init__(self, nm_address: str, gcs_address: str, worker_id: str) -> None:
        address = f"ipc://{session_dir(shm.session_id())}/w_{worker_id}.sock"
        self.core = CoreWorker(address, nm_address, gcs_address, worker_id)
        self.submitter = Submitter(self.core)
        api.set_runtime(self.core, self.submitter)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.instance: Any = None
        self.actor_id: str | None = None
        self.actor_name = ""
        self.early_calls: list[tuple] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.semaphore: asyncio.Semaphore | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.running_task: str | None = None
        self.cancelled: set[str] = set()
        self.interrupting: str | None = None
        signal.signal(signal.SIGUSR1, self._interrupt)
        self.gpu_ids: list[int] | None = None  # None: CUDA_VISIBLE_DEVICES not yet set
        ep = self.core.endpoint
        for kind in ("task", "actor_call", "create_actor"):
            ep.on(kind, lambda *fields, kind=kind: self.inbox.put((kind, fields)))
        ep.on("cancel", self.cancel)
        ep.on("exit", lambda: self.inbox.put(("exit", ())))

    def run(self) -> None:
        """Announce this worker and run calls until told to exit."""
        self.core.start()
        self.core.endpoint.send(self.core.nm_address, "worker_ready", self.core.worker_id,
                                self.core.address)
        while True:
            kind, fields = self.inbox.get()
            if kind == "exit":
                return
            if kind == "create_actor":
                self.create_actor(*fields)
            elif kind == "actor_call" and self.instance is None:
                self.early_calls.append(fields)
            elif kind == "actor_call":
                self.actor_call(fields)
            else:
                self.run_task(*fields)

    # ---- tasks -------------------------------------------------------------------------------

    def run_task(self, task_id: str, function_id: str, body: tuple, resolved: list,
                 return_ids: list[str], owner: str, gpu_ids: list[int]) -> None:
        """Run a normal task and send its results to the owner."""
        self.set_gpus(gpu_ids)
        results = self.execute(task_id, lambda: self.load(function_id), body, resolved,
                               return_ids, f"task {task_id}")
        self.core.endpoint.send(owner, "task_done", task_id, results)

    def execute(self, task_id: str, target, body: tuple, resolved: list,
                return_ids: list[str], where: str, export: tuple | None = None) -> list:
        """Call ``target()(*args)``; return the result entries, or the error for each return.

        ``export``: (tensor transport, owner) of a marked method (Note [value transports]).
        """
        if task_id in self.cancelled:
            self.cancelled.discard(task_id)
            return _failed(TaskCancelledError(f"task {task_id} was cancelled"), return_ids)
        self.core.executing_task.active = True
        if threading.current_thread() is threading.main_thread():
            self.running_task = task_id  # only a task on the main thread can be interrupted
        try:
            fn = target()
            args, kwargs = decode_args(self.core, body, resolved)
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the caller
            return _failed(self.wrap_error(exc, where), return_ids)
        finally:
            self.running_task = None
            self.core.executing_task.active = False
        return self.pack(value, return_ids, where, export)

    def wrap_error(self, exc: BaseException, where: str) -> BaseException:
        """The error the caller sees for ``exc`` raised in ``where``."""
        if isinstance(exc, TaskCancelledError):
            return exc
        name = f"{where} ({self.actor_name})" if self.actor_name else where
        return TaskError.wrap(exc, name, traceback.format_exc())

    def pack(self, value: Any, return_ids: list[str], where: str,
             export: tuple | None = None) -> list:
        """Serialize return values into result entries (inline bytes or shm segments)."""
        n = len(return_ids)
        if n == 0:
            return []
        values = [value]
        if n > 1:
            if not isinstance(value, (tuple, list)) or len(value) != n:
                return _failed(TaskError(
                    f"{where} declares num_returns={n} but returned {type(value).__name__} "
                    f"{_short(value)}; return a tuple of {n} values"), return_ids)
            values = list(value)
        results = []
        for i, (oid, item) in enumerate(zip(return_ids, values)):
            try:
                if export is not None:
                    item = value_transport.export(export[0], item, oid, export[1])
                ser = serialize(item, f"return value {i} of {where}")
            except SerializationError as exc:
                return _failed(exc, return_ids)
            except Exception as exc:  # noqa: BLE001 - a transport's refusal goes to the caller
                return _failed(self.wrap_error(exc, where), return_ids)
            results.append(self.core.store_serialized(oid, ser))
        return results

    def load(self, function_id: str) -> Any:
        """The function or class exported under ``function_id`` (fetched once from the GCS)."""
        fn = self.core.function_cache.get(function_id)
        if fn is None:
            blob = self.core.endpoint.call(self.core.gcs_address, "kv_get", "functions",
                                           function_id)
            fn = remote_function.load(blob)
            self.core.function_cache[function_id] = fn
        return fn

    def set_gpus(self, gpu_ids: list[int]) -> None:
        """Make ``gpu_ids`` this process's visible GPUs."""
        if gpu_ids != self.gpu_ids:
            self.gpu_ids = list(gpu_ids)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)

    # ---- actors ------------------------------------------------------------------------------

    def create_actor(self, task_id: str, class_id: str, body: tuple, resolved: list,
                     return_ids: list[str], owner: str, gpu_ids: list[int]) -> None:
        """Build the actor instance; report failure to the owner."""
        actor_id, args_body, options = body
        self.actor_id = self.core.actor_id = actor_id
        self.set_gpus(gpu_ids)
        holder: list[Any] = []

        def construct() -> Any:
            cls = self.load(class_id)
            self.actor_name = f"actor {cls.__name__}"
            return lambda *a, **kw: holder.append(cls(*a, **kw))

        results = self.execute(task_id, construct, args_body, resolved, ["init"],
                               f"the constructor of actor {actor_id}")
        failed = results and results[0][0] == FAILED
        self.core.endpoint.send(owner, "task_done", task_id, results if failed else [])
        if failed:
            return
        self.instance = holder[0]
        concurrency = options.get("max_concurrency")
        if _has_coroutines(type(self.instance)):
            self.start_loop(concurrency or 1000)
        elif concurrency and concurrency > 1:
            self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="ember-actor")
        threading.Thread(target=_warm_graph_runtime, name="ember-warm", daemon=True).start()
        early, self.early_calls = self.early_calls, []
        for fields in early:
            self.actor_call(fields)

    def actor_call(self, fields: tuple) -> None:
        """Run one method call: inline, on the thread pool, or on the event loop."""
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(self._async_call(fields), self.loop)
        elif self.pool is not None:
            self.pool.submit(self._sync_call, fields)
        else:
            self._sync_call(fields)

    def _method(self, name: str):
        if name == EMBER_RUN:
            return lambda fn, *a, **kw: fn(self.instance, *a, **kw)
        return getattr(self.instance, name)

    def _export(self, method: str, owner: str) -> tuple | None:
        """(tensor transport, owner) when ``method`` is marked with one (Note [value transports])."""
        transport = value_transport.transport_of(getattr(type(self.instance), method, None))
        return None if transport is None else (transport, owner)

    def _sync_call(self, fields: tuple) -> None:
        task_id, method, (actor_id, body), resolved, return_ids, owner, _ = fields
        results = self.execute(task_id, lambda: self._method(method), body, resolved,
                               return_ids, f"{self.actor_name}.{method}",
                               self._export(method, owner))
        self.core.endpoint.send(owner, "task_done", task_id, results)

    async def _async_call(self, fields: tuple) -> None:
        task_id, method, (actor_id, body), resolved, return_ids, owner, _ = fields
        where = f"{self.actor_name}.{method}"
        async with self.semaphore:
            try:
                args, kwargs = decode_args(self.core, body, resolved)
                value = self._method(method)(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
            except BaseException as exc:  # noqa: BLE001
                results = _failed(self.wrap_error(exc, where), return_ids)
            else:
                results = self.pack(value, return_ids, where, self._export(method, owner))
        self.core.endpoint.send(owner, "task_done", task_id, results)

    def start_loop(self, concurrency: int) -> None:
        """Run an asyncio loop on its own thread for an async actor."""
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.semaphore = asyncio.Semaphore(concurrency)
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, name="ember-actor-loop", daemon=True).start()
        ready.wait()

    def cancel(self, task_id: str, force: bool) -> None:
        """Interrupt a running task (or kill this worker when ``force``)."""
        if force:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.running_task == task_id:
            self.interrupting = task_id
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        else:
            self.cancelled.add(task_id)

    def _interrupt(self, *_: Any) -> None:
        """SIGUSR1 handler: raise TaskCancelledError in the task ``cancel`` interrupts.

        A signal (unlike an asynchronous exception) also breaks blocking calls such as
        ``time.sleep``; a late signal for a task that already ended is ignored.
        """
        task_id, self.interrupting = self.interrupting, None
        if task_id is not None and task_id == self.running_task:
            raise TaskCancelledError(f"task {task_id} was cancelled")


def _failed(error: BaseException, return_ids: list[str]) -> list:
    try:
        pickle.dumps(error)
    except Exception:  # noqa: BLE001 - an unpicklable exception travels as text
        error = TaskError(str(error))
    return [(FAILED, error)] * max(1, len(return_ids))


# Note [warm actors]: an actor is where compiled-graph executor loops run, and importing their
# modules on first compile costs tens of ms per actor. A new actor imports them in the
# background, by name, so the dynamic layer does not depend on the engine.
WARM_MODULES = ("ember.engine.executor", "ember.channels.shared_memory")


def _warm_graph_runtime() -> None:
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return


def _has_coroutines(cls: type) -> bool:
    return any(inspect.iscoroutinefunction(getattr(cls, name, None)) for name in dir(cls)
               if not name.startswith("__"))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def main() -> None:
    """Entry point of a worker process."""
    bind_to_parent()
    os.environ["EMBER_WORKER"] = "1"
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    nm_address, gcs_address, worker_id = sys.argv[1:4]
    WorkerProcess(nm_address, gcs_address, worker_id).run()
    os._exit(0)


if __name__ == "__main__":
    main()
