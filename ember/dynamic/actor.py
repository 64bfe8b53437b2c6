"""``@ember.remote`` classes: actors in their own process, called through handles."""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

from ember.dynamic import api, value_transport
from ember.dynamic.object_ref import ObjectRef
from ember.dynamic.remote_function import check_options, export, publish, resource_request
from ember.dynamic.submitter import ActorState
from ember.exceptions import ActorDiedError, ActorNotFoundError, GetTimeoutError

ACTOR_DEFAULTS = {"num_cpus": 0, "num_gpus": 0, "resources": None, "memory": None,
                  "name": None, "namespace": None, "get_if_exists": False,
                  "max_concurrency": None, "max_restarts": 0, "max_task_retries": 0,
                  "lifetime": None}
_NUM_RETURNS = "__ember_num_returns__"


def method(*, num_returns: int = 1, tensor_transport: str | None = None) -> Callable:
    """Decorate an actor method, e.g. ``@ember.method(num_returns=2)``; ``tensor_transport``
    keeps returned tensors in the actor (Note [value transports])."""
    def decorate(fn: Callable) -> Callable:
        setattr(fn, _NUM_RETURNS, num_returns)
        if tensor_transport is not None:
            setattr(fn, value_transport.TRANSPORT_ATTR, tensor_transport.lower())
        return fn
    return decorate


class ActorClass:
    """A class turned into an actor factory: ``Cls.remote(*args)`` starts an actor."""

    def __init__(self, cls: type, options: dict) -> None:
        check_options(options, ACTOR_DEFAULTS, f"actor class {cls.__name__}")
        self._cls = cls
        self._options = {**ACTOR_DEFAULTS, **options}
        self._export: tuple[str, bytes] | None = None
        self._methods = {name: getattr(fn, _NUM_RETURNS, 1)
                         for name, fn in inspect.getmembers(cls, callable)
                         if not name.startswith("__") or name == "__call__"}
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._cls.__name__} cannot be instantiated directly; "
                        f"use {self._cls.__name__}.remote(...)")

    def options(self, **options: Any) -> "ActorClass":
        """A copy with some options changed (name, num_gpus, max_concurrency, ...)."""
        copy = ActorClass(self._cls, {**self._options, **options})
        copy._export = self._export
        return copy

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        """Start the actor (asynchronously) and return its handle."""
        core, submitter = api.runtime()
        opts = self._options
        if self._export is None:
            self._export = export(self._cls, f"actor class {self._cls.__name__}")
        class_id = publish(core, self._export)
        actor_id = core.new_id()
        info = {"actor_id": actor_id, "name": opts["name"], "namespace": opts["namespace"],
                "class_name": self._cls.__name__, "methods": self._methods, "state": "PENDING",
                "owner": core.address, "restartable": int(opts["max_restarts"]) != 0}
        if opts["name"]:
            existing = core.endpoint.call(core.gcs_address, "register_actor", actor_id, info,
                                          opts["get_if_exists"])
            if existing is not None:
                if opts["get_if_exists"]:
                    return handle_from_info(existing)
                raise ValueError(f"an actor named {opts['name']!r} already exists; pick "
                                 f"another name, or pass get_if_exists=True to reuse it")
        else:
            core.endpoint.request(core.gcs_address, "register_actor", actor_id, info, False)
        state = ActorState(actor_id, restarts_left=int(opts["max_restarts"]),
                           max_task_retries=int(opts["max_task_retries"]))
        options = {"max_concurrency": opts["max_concurrency"]}
        submitter.create_actor(state, class_id, f"actor {self._cls.__name__}", args, kwargs,
                               resource_request(opts), options)
        return ActorHandle(actor_id, self._cls.__name__, self._methods, state)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("bind() an actor's methods, not its class: create the actor with "
                        ".remote() first, then use actor.method.bind(...)")


class ActorMethod:
    """``handle.method``: ``.remote(*args)`` calls it; ``.bind(*args)`` puts it in a graph."""

    def __init__(self, actor: "ActorHandle", name: str, num_returns: int) -> None:
        self._actor = actor
        self._method_name = name
        self._num_returns = num_returns

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef | list[ObjectRef]:
        """Call the method; return one ref, or a list for ``num_returns > 1``."""
        _, submitter = api.runtime()
        refs = submitter.submit_actor_call(self._actor._state(), self._method_name, args,
                                           kwargs, self._num_returns)
        return refs[0] if self._num_returns == 1 else refs

    def options(self, num_returns: int | None = None, **_: Any) -> "ActorMethod":
        """A copy with another ``num_returns``."""
        return ActorMethod(self._actor, self._method_name,
                           self._num_returns if num_returns is None else num_returns)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A graph node calling this method (see ember.dag)."""
        from ember.dag.nodes import bind_actor_method
        return bind_actor_method(self, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods cannot be called directly; use "
                        f".{self._method_name}.remote(...)")


class ActorHandle:
    """A reference to a live actor; picklable, so it can be passed to tasks and other actors."""

    def __init__(self, actor_id: str, class_name: str, methods: dict[str, int],
                 state: ActorState | None = None) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._local_state = state

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_") and name not in self.__dict__.get("_methods", {}):
            if name == "_ember_run":
                return ActorMethod(self, "__ember_run__", 1)
            raise AttributeError(name)
        if name not in self._methods:
            raise AttributeError(f"actor {self._class_name} has no method {name!r}")
        return ActorMethod(self, name, self._methods[name])

    def _state(self) -> ActorState:
        _, submitter = api.runtime()
        state = submitter.actors.get(self._actor_id)
        if state is None:
            state = self._local_state or ActorState(self._actor_id)
            submitter.actors.setdefault(self._actor_id, state)
        return state

    def _wait_started(self, timeout: float = 60.0) -> ActorState:
        state = self._state()
        if not state.ready.wait(timeout):
            raise GetTimeoutError(f"actor {self._actor_id} did not start within {timeout} s")
        return state

    def __reduce__(self):
        state = self._state()
        if state.address is None and state.creation is not None:
            state = self._wait_started()
        return (_rebuild_handle, (self._actor_id, self._class_name, self._methods,
                                  state.address, state.worker_id, state.restartable))

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


def _rebuild_handle(actor_id: str, class_name: str, methods: dict, address: str | None,
                    worker_id: str | None, restartable: bool = False) -> ActorHandle:
    _, submitter = api.runtime()
    state = submitter.actors.get(actor_id)
    if state is None:
        state = ActorState(actor_id, address=address, worker_id=worker_id,
                           restartable=restartable)
        state.ready.set()
        submitter.actors[actor_id] = state
        if restartable:
            submitter.watch_actor(state)
    return ActorHandle(actor_id, class_name, methods, state)


def handle_from_info(info: dict) -> ActorHandle:
    """A handle for the actor described by a GCS record."""
    return _rebuild_handle(info["actor_id"], info["class_name"], info["methods"],
                           info.get("address"), info.get("worker_id"),
                           bool(info.get("restartable")))


def get_actor(name: str, namespace: str | None = None, timeout: float = 10.0) -> ActorHandle:
    """The handle of the live actor named ``name``."""
    core, _ = api.runtime()
    deadline = time.monotonic() + timeout
    while True:
        info = core.endpoint.call(core.gcs_address, "get_named_actor", name, namespace)
        if info is None or info.get("state") == "DEAD":
            raise ActorNotFoundError(f"no live actor is named {name!r}; create it with "
                                     f"Cls.options(name={name!r}).remote()")
        if info.get("address") or time.monotonic() > deadline:
            return handle_from_info(info)
        time.sleep(0.01)


def kill(handle: ActorHandle, no_restart: bool = True) -> None:
    """End an actor's process now; with ``no_restart`` its calls raise ActorDiedError from now on."""
    if not isinstance(handle, ActorHandle):
        raise TypeError(f"ember.kill takes an actor handle, not {type(handle).__name__}")
    core, submitter = api.runtime()
    state = handle._wait_started()
    if no_restart:
        with submitter.lock:
            if state.dead is None:
                submitter.actor_died(state, ActorDiedError(
                    f"actor {handle._actor_id} ({handle._class_name}) was killed with "
                    f"ember.kill"))
        core.endpoint.send(core.gcs_address, "update_actor", handle._actor_id,
                           {"state": "DEAD"})
    if state.worker_id is not None:
        core.endpoint.send(core.nm_address, "kill_worker", state.worker_id, True)
