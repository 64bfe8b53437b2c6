"""A worker process: runs tasks and hosts at most one actor, receiving calls from their owners.

The I/O thread queues incoming calls; the main thread runs them in arrival order. An actor whose
methods are coroutines runs them on an asyncio loop of its own thread (up to ``max_concurrency``
at once); a threaded actor (``max_concurrency > 1``) runs calls on a thread pool. An actor with
``concurrency_groups`` runs each group's methods on the group's own pool (or, async, under the
group's own limit), so a slow group cannot starve another.
Run as ``python -m ember.dynamic.worker <nm_address> <gcs_address> <worker_id>``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ember._system import gpu_env, shm
from ember.dynamic import graph_binding
from ember.dynamic.api import driver, placement_group, remote_function
from ember.dynamic.core import value_transport
from ember.dynamic.api import runtime_context as context
from ember.dynamic.api.actor import (EXIT_METHOD, GROUP_ATTR, ActorHandle, handle_from_info,
                                 method_table)
from ember.dynamic.core.core_worker import FAILED, CoreWorker
from ember.dynamic.rpc.messaging import listen_address
from ember._system.process import bind_to_parent, session_dir
from ember.dynamic.api.remote_function import DEFAULT_TASK_RESOURCES
from ember._system.serialization import serialize
from ember.dynamic.core.submitter import Submitter
from ember.dynamic.core.task_spec import decode_args
from ember.exceptions import SerializationError, TaskCancelledError, TaskError

EMBER_RUN = "__ember_run__"
DEFAULT_GROUP = "_ember_default"
_log = logging.getLogger(__name__)


class WorkerProcess:
    """The main loop and call execution of one worker."""

    def __init__(self, nm_address: str, gcs_address: str, worker_id: str) -> None:
        address = listen_address(session_dir(shm.session_id()), f"w_{worker_id}")
        self.core = CoreWorker(address, nm_address, gcs_address, worker_id)
        self.submitter = Submitter(self.core)
        driver.set_runtime(self.core, self.submitter)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.instance: Any = None
        self.actor_id: str | None = None
        self.actor_name = ""
        self.early_calls: list[tuple] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.semaphores: dict[str, asyncio.Semaphore] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.group_pools: dict[str, ThreadPoolExecutor] = {}
        self.group_limits: dict[str, int] = {}
        self.exit_call: tuple | None = None
        self.async_calls: set[futures.Future] = set()
        self.async_calls_lock = threading.Lock()
        self.running_task: str | None = None
        self.cancelled: set[str] = set()
        self.interrupting: str | None = None
        signal.signal(signal.SIGUSR1, self._interrupt)
        self.gpu_ids: list[int] | None = None  # None: CUDA_VISIBLE_DEVICES not yet set
        facts = context.facts()
        facts.worker_id, facts.is_worker = worker_id, True
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
            try:
                if kind == "create_actor":
                    self.create_actor(*fields)
                elif kind == "actor_call" and self.instance is None:
                    self.early_calls.append(fields)
                elif kind == "actor_call":
                    self.actor_call(fields)
                else:
                    self.run_task(*fields)
            except Exception as exc:  # noqa: BLE001 - a malformed call; user errors never get here
                _log.warning("dropped a malformed %s message: %s: %s (Note [dropped messages] "
                             "in messaging.py)", kind, type(exc).__name__, exc)
            if self.exit_call is not None:
                self.finish_actor()

    # ---- tasks -------------------------------------------------------------------------------

    def run_task(self, task_id: str, target: Any, body: tuple, resolved: list,
                 return_ids: list[str], owner: str, gpu_ids: list[int]) -> None:
        """Run a normal task and send its results to the owner.

        ``target`` is the function id, or ``(function_id, extras)`` for a task whose options
        the worker must know (remote_function.RemoteFunction._make_plan).
        """
        function_id, extras = target if isinstance(target, tuple) else (target, {})
        self.set_gpus(gpu_ids)
        self.apply_env(extras.get("env_vars"))
        captured = placement_group.enter_capture(extras.get("capture"))
        try:
            results = self.execute(task_id, lambda: self.load(function_id), body, resolved,
                                   return_ids, owner, f"task {task_id}",
                                   extras.get("resources", DEFAULT_TASK_RESOURCES))
        finally:
            placement_group.leave_capture(captured)
        self.core.endpoint.send(owner, "task_done", task_id, results)

    def apply_env(self, env_vars: dict[str, str] | None) -> None:
        """Set a runtime env's variables in this process (its lease is private to them)."""
        if env_vars:
            os.environ.update(env_vars)
            context.facts().runtime_env = {"env_vars": dict(env_vars)}

    def execute(self, task_id: str, target, body: tuple, resolved: list,
                return_ids: list[str], owner: str, where: str, resources: dict | None = None,
                export: tuple | None = None) -> list:
        """Call ``target()(*args)``; return the result entries, or the error for each return.

        ``export``: (tensor transport, owner) of a marked method (Note [value transports]).
        """
        if task_id in self.cancelled:
            self.cancelled.discard(task_id)
            return _failed(TaskCancelledError(f"task {task_id} was cancelled"), return_ids)
        self.core.executing_task.active = True
        if threading.current_thread() is threading.main_thread():
            self.running_task = task_id  # only a task on the main thread can be interrupted
        token = context.enter_call(task_id, resources or {})
        try:
            fn = target()
            args, kwargs = decode_args(self.core, body, resolved)
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the caller
            return _failed(self.wrap_error(exc, where), return_ids)
        finally:
            context.leave_call(token)
            self.running_task = None
            self.core.executing_task.active = False
        return self.pack(value, return_ids, owner, where, export)

    def wrap_error(self, exc: BaseException, where: str) -> BaseException:
        """The error the caller sees for ``exc`` raised in ``where``."""
        if isinstance(exc, TaskCancelledError):
            return exc
        name = f"{where} ({self.actor_name})" if self.actor_name else where
        return TaskError.wrap(exc, name, traceback.format_exc())

    def pack(self, value: Any, return_ids: list[str], owner: str, where: str,
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
            results.append(self.core.store_serialized(oid, ser, owner))
        return results

    def load(self, function_id: str) -> Any:
        """The function or class exported under ``function_id`` (fetched once from the GCS)."""
        fn = self.core.function_cache.get(function_id)
        if fn is None:
            blob = self.core.gcs_call("kv_get", "functions", function_id)
            fn = remote_function.load(blob)
            self.core.function_cache[function_id] = fn
        return fn

    def set_gpus(self, gpu_ids: list[int]) -> None:
        """Make ``gpu_ids`` this process's visible GPUs."""
        if gpu_ids != self.gpu_ids:
            self.gpu_ids = list(gpu_ids)
            gpu_env.show_gpus(gpu_ids)

    # ---- actors ------------------------------------------------------------------------------

    def create_actor(self, task_id: str, class_id: str, body: tuple, resolved: list,
                     return_ids: list[str], owner: str, gpu_ids: list[int]) -> None:
        """Build the actor instance; report failure to the owner."""
        actor_id, args_body, options = body
        self.actor_id = self.core.actor_id = actor_id
        self.set_gpus(gpu_ids)
        self.apply_env(options.get("env_vars"))
        holder: list[Any] = []

        def construct() -> Any:
            cls = self.load(class_id)
            self.actor_name = f"actor {cls.__name__}"
            return lambda *a, **kw: holder.append(cls(*a, **kw))

        self.describe_actor(actor_id, options)
        placement_group.capture_for_actor(options.get("capture"))
        results = self.execute(task_id, construct, args_body, resolved, ["init"], owner,
                               f"the constructor of actor {actor_id}",
                               options.get("resources"))
        failed = results and results[0][0] == FAILED
        self.core.endpoint.send(owner, "task_done", task_id, results if failed else [])
        if failed:
            return
        self.instance = holder[0]
        concurrency = options.get("max_concurrency")
        self.group_limits = dict(options.get("concurrency_groups") or {})
        if _has_coroutines(type(self.instance)):
            self.start_loop(concurrency or 1000)
        else:
            if concurrency and concurrency > 1:
                self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="ember-actor")
            self.group_pools = {name: ThreadPoolExecutor(n, thread_name_prefix=f"ember-{name}")
                                for name, n in self.group_limits.items()}
        threading.Thread(target=graph_binding.warm_up, name="ember-warm", daemon=True).start()
        early, self.early_calls = self.early_calls, []
        for fields in early:
            self.actor_call(fields)

    def describe_actor(self, actor_id: str, options: dict) -> None:
        """Fill the runtime context of the actor this process hosts."""
        facts = context.facts()
        facts.actor_name = options.get("name") or ""
        facts.actor_resources = dict(options.get("resources") or {})
        facts.actor_handle = lambda: self.own_handle(actor_id)
        if options.get("restartable"):
            # The first incarnation writes the key; a restarted one finds it written.
            first = self.core.endpoint.request(self.core.gcs_address, "kv_put",
                                               "actor_incarnations", actor_id, True, False)
            facts.reconstructed = lambda: not first.result(30)

    def own_handle(self, actor_id: str) -> ActorHandle:
        """A handle of the actor hosted here (``get_runtime_context().current_actor``)."""
        cls = type(self.instance)
        methods, signatures = method_table(cls)
        return handle_from_info({"actor_id": actor_id, "class_name": cls.__name__,
                                 "methods": methods, "signatures": signatures,
                                 "address": self.core.address,
                                 "worker_id": self.core.worker_id})

    def actor_call(self, fields: tuple) -> None:
        """Run one method call: inline, on a (group's) thread pool, or on the event loop."""
        name, group = _method_and_group(fields[1])
        if name == EXIT_METHOD:
            self.exit_call = fields
            return
        group = group or getattr(getattr(type(self.instance), name, None), GROUP_ATTR, None)
        if group is not None and group not in self.group_limits:
            self.reply_failed(fields, ValueError(
                f"{self.actor_name} has no concurrency group {group!r}; its groups are "
                f"{sorted(self.group_limits)}"))
        elif self.loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._async_call(fields, group), self.loop)
            with self.async_calls_lock:
                self.async_calls.add(future)
            future.add_done_callback(self._async_call_done)
        elif group is not None:
            self.group_pools[group].submit(self._sync_call, fields)
        elif self.pool is not None:
            self.pool.submit(self._sync_call, fields)
        else:
            self._sync_call(fields)

    def _async_call_done(self, future: futures.Future) -> None:
        with self.async_calls_lock:
            self.async_calls.discard(future)

    def reply_failed(self, fields: tuple, error: BaseException) -> None:
        """Answer a call with ``error`` without running it."""
        task_id, _, _, _, return_ids, owner, _ = fields
        self.core.endpoint.send(owner, "task_done", task_id, _failed(error, return_ids))

    def finish_actor(self) -> None:
        """The actor's last handle is gone: finish running calls, then answer the exit call.

        The owner sends ``exit`` once it has that answer, which follows every earlier answer
        (Note [actor lifetime] in actor.py).
        """
        fields, self.exit_call = self.exit_call, None
        for pool in [self.pool, *self.group_pools.values()]:
            if pool is not None:
                pool.shutdown(wait=True)
        self.pool, self.group_pools, self.group_limits = None, {}, {}
        with self.async_calls_lock:
            running = list(self.async_calls)
        futures.wait(running)
        task_id, _, _, _, return_ids, owner, _ = fields
        self.core.endpoint.send(owner, "task_done", task_id,
                                self.pack(None, return_ids, owner, self.actor_name))

    def _method(self, name: str):
        if name in (EMBER_RUN, "__ray_call__"):
            return lambda fn, *a, **kw: fn(self.instance, *a, **kw)
        if name == "__ray_ready__":
            return lambda: True
        return getattr(self.instance, name)

    def _export(self, method: str, owner: str) -> tuple | None:
        """(tensor transport, owner) when ``method`` is marked with one (Note [value transports])."""
        transport = value_transport.transport_of(getattr(type(self.instance), method, None))
        return None if transport is None else (transport, owner)

    def _sync_call(self, fields: tuple) -> None:
        task_id, target, (actor_id, body), resolved, return_ids, owner, _ = fields
        method = _method_and_group(target)[0]
        results = self.execute(task_id, lambda: self._method(method), body, resolved,
                               return_ids, owner, f"{self.actor_name}.{method}",
                               context.facts().actor_resources, self._export(method, owner))
        self.core.endpoint.send(owner, "task_done", task_id, results)

    async def _async_call(self, fields: tuple, group: str | None) -> None:
        task_id, target, (actor_id, body), resolved, return_ids, owner, _ = fields
        method = _method_and_group(target)[0]
        where = f"{self.actor_name}.{method}"
        async with self.semaphores[group or DEFAULT_GROUP]:
            token = context.enter_call(task_id, context.facts().actor_resources)
            try:
                args, kwargs = decode_args(self.core, body, resolved)
                value = self._method(method)(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
            except BaseException as exc:  # noqa: BLE001
                results = _failed(self.wrap_error(exc, where), return_ids)
            else:
                results = self.pack(value, return_ids, owner, where,
                                    self._export(method, owner))
            finally:
                context.leave_call(token)
        self.core.endpoint.send(owner, "task_done", task_id, results)

    def start_loop(self, concurrency: int) -> None:
        """Run an asyncio loop on its own thread for an async actor."""
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.semaphores = {DEFAULT_GROUP: asyncio.Semaphore(concurrency)}
            self.semaphores.update((name, asyncio.Semaphore(n))
                                   for name, n in self.group_limits.items())
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


def _method_and_group(target: Any) -> tuple[str, str | None]:
    """An actor call's target is a method name, or ``(name, concurrency group)``."""
    return target if isinstance(target, tuple) else (target, None)


def _failed(error: BaseException, return_ids: list[str]) -> list:
    try:
        pickle.dumps(error)
    except Exception:  # noqa: BLE001 - an unpicklable exception travels as text
        error = TaskError(str(error))
    return [(FAILED, error)] * max(1, len(return_ids))


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
