"""``@ember.remote`` classes: actors in their own process, called through handles.

Note [actor lifetime]: like Ray, an actor lives while a handle to it exists. Its creator owns a
*handle object* (``<actor id>.handle``) and every ``ActorHandle`` holds an ObjectRef to it, so
the ownership protocol of core_worker.py counts the handles: those in the creator, those
pickled into other processes (borrowers) and those in transit. When the count falls to zero,
the creator queues a last call, ``__ember_exit__``, behind every call already submitted; the
actor finishes those calls, answers, and the creator then tells its process to exit, which
returns its resources. Handles from ``get_actor`` do not keep an actor alive (Ray's rule); an
actor created with ``lifetime="detached"`` has no handle object and lives until ``kill`` or
``shutdown``.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

from ember.dynamic import graph_binding
from ember.dynamic.api import driver, placement_group
from ember.dynamic.common import labels
from ember.dynamic.core import value_transport
from ember.dynamic.core.core_worker import INLINE
from ember.dynamic.core.object_ref import ObjectRef
from ember.dynamic.api.remote_function import (argument_check, check_arguments, check_options,
                                           export, publish, resource_request, unpack_refs)
from ember.dynamic.api.runtime_context import (call_env_vars, current_namespace, live_node_labels,
                                               runtime_env_vars)
from ember.dynamic.core.submitter import ActorState
from ember.exceptions import (ActorClassInheritanceException, ActorDiedError, ActorNotFoundError,
                              GetTimeoutError)

ACTOR_DEFAULTS = {"num_cpus": 0, "num_gpus": 0, "resources": None, "memory": None,
                  "name": None, "namespace": None, "get_if_exists": False,
                  "max_concurrency": None, "max_restarts": 0, "max_task_retries": 0,
                  "lifetime": None, "concurrency_groups": None, "runtime_env": None,
                  "label_selector": None, "fallback_strategy": None, "scheduling_strategy": None}
NUM_RETURNS_ATTR = "__ember_num_returns__"
GROUP_ATTR = "__ember_concurrency_group__"
EXIT_METHOD = "__ember_exit__"
# Methods every actor has (worker.py runs them): Ray's names, and ember's hook for the engine.
BUILTIN_METHODS = {"__ray_ready__": "__ray_ready__", "__ray_call__": "__ray_call__",
                   "_ember_run": "__ember_run__"}


def method(*, num_returns: int = 1, concurrency_group: str | None = None,
           tensor_transport: str | None = None) -> Callable:
    """Decorate an actor method: ``@ember.method(num_returns=2, concurrency_group="io")``;
    ``tensor_transport`` keeps returned tensors in the actor (Note [value transports])."""
    def decorate(fn: Callable) -> Callable:
        setattr(fn, NUM_RETURNS_ATTR, num_returns)
        if concurrency_group is not None:
            setattr(fn, GROUP_ATTR, concurrency_group)
        if tensor_transport is not None:
            setattr(fn, value_transport.TRANSPORT_ATTR, tensor_transport.lower())
        return fn
    return decorate


def method_table(cls: type) -> tuple[dict[str, int], dict[str, Any]]:
    """The methods a handle of ``cls`` offers: name -> num_returns, and name -> signature."""
    methods = {name: getattr(fn, NUM_RETURNS_ATTR, 1)
               for name, fn in inspect.getmembers(cls, callable)
               if not name.startswith("__") or name == "__call__"}
    return methods, {name: argument_check(cls, name) for name in methods}


def make_actor_class(cls: type, options: dict) -> "ActorClass":
    """The actor factory for ``cls``: an ActorClass that is also a subclass of ``cls``.

    As in Ray, the factory inherits from the user's class, so its class attributes, static and
    class methods stay reachable through it (``Cls.X`` inside a method of ``Cls`` works) and
    ``isinstance(Cls, Base)`` holds. A class that cannot be subclassed that way (slots, a C
    base, a metaclass conflict) gets a plain ActorClass.
    """
    factory = object.__new__(_derived_class(cls))
    factory._setup(cls, options)
    return factory


_DERIVED: dict[type, type] = {}


def _derived_class(cls: type) -> type:
    derived = _DERIVED.get(cls)
    if derived is None:
        name = f"ActorClass({cls.__name__})"
        try:
            derived = type(name, (ActorClass, cls), {"__module__": cls.__module__,
                                                     "__qualname__": name})
            object.__new__(derived)
        except Exception:  # noqa: BLE001 - any refusal to subclass means "a plain factory"
            derived = ActorClass
        _DERIVED[cls] = derived
    return derived


class ActorClass:
    """A class turned into an actor factory: ``Cls.remote(*args)`` starts an actor."""

    def _setup(self, cls: type, options: dict, exported: tuple[str, bytes] | None = None) -> None:
        check_options(options, ACTOR_DEFAULTS, f"actor class {cls.__name__}")
        opts = {**ACTOR_DEFAULTS, **options}
        _check_actor_options(cls, opts)
        methods, signatures = method_table(cls)
        self.__dict__.update(
            _cls=cls, _options=opts, _export=exported, __name__=cls.__name__,
            __doc__=cls.__doc__, _methods=methods, _signatures=signatures,
            _init_signature=argument_check(cls, "__init__"))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._cls.__name__} cannot be instantiated directly; "
                        f"use {self._cls.__name__}.remote(...)")

    def __mro_entries__(self, bases: tuple) -> tuple:
        raise ActorClassInheritanceException(
            f"Inheriting from actor classes is not currently supported: inherit from the "
            f"original class {self._cls.__name__} and decorate the subclass with @ember.remote")

    def __reduce_ex__(self, protocol: int) -> tuple:
        # The class travels in the state, not the arguments, so that a class whose methods
        # name their own actor class (a cycle) pickles: the blank factory is memoized first.
        return (_blank_actor_class, (), {"cls": self._cls, "options": self._options})

    def __setstate__(self, state: dict) -> None:
        derived = _derived_class(state["cls"])
        if derived is not ActorClass:
            self.__class__ = derived
        self._setup(state["cls"], state["options"])

    def __repr__(self) -> str:
        return f"ActorClass({self._cls.__module__}.{self._cls.__qualname__})"

    # The factory's own attribute protocol and identity, whatever the user's class overrides.
    __getattribute__ = object.__getattribute__
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        return True

    def __del__(self) -> None:
        pass  # not the user's class's __del__: this object is a factory, not an instance

    def options(self, **options: Any) -> "ActorClass":
        """A copy with some options changed (name, num_gpus, max_concurrency, ...)."""
        copy = make_actor_class(self._cls, {**self._options, **options})
        copy._export = self._export
        return copy

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        """Start the actor (asynchronously) and return its handle."""
        core, submitter = driver.runtime()
        opts = self._options
        cls = self._cls
        check_arguments(self._init_signature, args, kwargs, f"the constructor of {cls.__name__}")
        if self._export is None:
            self._export = export(cls, f"actor class {cls.__name__}")
        class_id = publish(core, self._export)
        actor_id = core.new_id()
        namespace = opts["namespace"] if opts["namespace"] is not None else current_namespace()
        info = {"actor_id": actor_id, "name": opts["name"], "namespace": namespace,
                "class_name": cls.__name__, "methods": self._methods,
                "signatures": self._signatures, "state": "PENDING", "owner": core.address,
                "restartable": int(opts["max_restarts"]) != 0,
                "detached": opts["lifetime"] == "detached"}
        if opts["name"]:
            existing = core.gcs_call("register_actor", actor_id, info, opts["get_if_exists"])
            if existing is not None:
                if opts["get_if_exists"]:
                    return handle_from_info(existing)
                raise ValueError(f"an actor named {opts['name']!r} already exists; pick "
                                 f"another name, or pass get_if_exists=True to reuse it")
        else:
            core.endpoint.request(core.gcs_address, "register_actor", actor_id, info, False)
        state = ActorState(actor_id, restarts_left=int(opts["max_restarts"]),
                           max_task_retries=int(opts["max_task_retries"]),
                           detached=opts["lifetime"] == "detached")
        strategy = placement_group.inherited(opts["scheduling_strategy"])
        if strategy is not opts["scheduling_strategy"]:  # Note [captured child tasks]
            placement_group.check_strategy(strategy, resource_request(opts),
                                           f"actor {cls.__name__}")
        resources, placement = placement_group.constrain(strategy, resource_request(opts))
        pin = labels.node_constraint(opts["label_selector"], opts["fallback_strategy"],
                                     live_node_labels)
        resources = {**resources, **(pin or {})}
        options = {"max_concurrency": opts["max_concurrency"],
                   "concurrency_groups": opts["concurrency_groups"] or {},
                   "env_vars": call_env_vars(runtime_env_vars(opts["runtime_env"])),
                   "resources": resources,
                   "name": opts["name"] or "", "restartable": info["restartable"],
                   "capture": placement_group.capture_spec(strategy)}
        if pin is not None:
            submitter.create_actor(state, class_id, f"actor {cls.__name__}", args, kwargs,
                                   resources, options, placement_group.gate(placement))
        else:
            labels.warn_infeasible(f"actor {cls.__name__}", opts["label_selector"])
            state.ready.set()  # placed nowhere: calls queue until a matching node exists
            submitter.actors[actor_id] = state
        ref = None if opts["lifetime"] == "detached" else _handle_object(core, submitter, state)
        return ActorHandle(actor_id, cls.__name__, self._methods, state, self._signatures, ref)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A graph node that creates the actor when the graph runs uncompiled (see ember.dag)."""
        return graph_binding.bind(graph_binding.ACTOR_CLASS, self, args, kwargs)


def _blank_actor_class() -> ActorClass:
    return object.__new__(ActorClass)


def _check_actor_options(cls: type, opts: dict) -> None:
    """Reject option values Ray rejects, naming the option."""
    if opts["name"] is not None and not isinstance(opts["name"], str):
        raise TypeError(f"name must be a str, not {type(opts['name']).__name__}")
    if opts["namespace"] is not None and not isinstance(opts["namespace"], str):
        raise TypeError(f"namespace must be a str, not {type(opts['namespace']).__name__}")
    if opts["get_if_exists"] and not opts["name"]:
        raise ValueError("get_if_exists=True needs a name: Cls.options(name=..., "
                         "get_if_exists=True)")
    if opts["lifetime"] not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be None, 'detached' or 'non_detached', not "
                         f"{opts['lifetime']!r}")
    groups = opts["concurrency_groups"] or {}
    if not isinstance(groups, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in groups.items()):
        raise ValueError(f"concurrency_groups must map group names to positive ints, not "
                         f"{groups!r}")
    for name, fn in inspect.getmembers(cls, callable):
        group = getattr(fn, GROUP_ATTR, None)
        if group is not None and group not in groups:
            raise ValueError(f"method {name} of {cls.__name__} is in concurrency group "
                             f"{group!r}, which concurrency_groups={groups} does not define")
    runtime_env_vars(opts["runtime_env"])
    labels.validate_selector(opts["label_selector"])
    labels.validate_fallback(opts["fallback_strategy"])
    placement_group.check_strategy(opts["scheduling_strategy"], resource_request(opts),
                                   f"actor {cls.__name__}")


def _handle_object(core: Any, submitter: Any, state: ActorState) -> ObjectRef:
    """The ref every handle of a new actor holds (Note [actor lifetime])."""
    oid = f"{state.actor_id}.handle"
    ref = core.owned_ref(oid)
    core.when_freed(oid, lambda: _out_of_scope(core, submitter, state))
    core.resolve(oid, INLINE, None)
    return ref


def _out_of_scope(core: Any, submitter: Any, state: ActorState) -> None:
    """The last handle is gone: end the actor after the calls already submitted.

    Runs from an ObjectRef's ``__del__`` (any thread, any moment), so the work moves to the
    I/O thread.
    """
    core.endpoint.call_soon(lambda: _end_actor(core, submitter, state))


def _end_actor(core: Any, submitter: Any, state: ActorState) -> None:
    with submitter.lock:
        if not driver.is_initialized() or driver.runtime()[0] is not core or state.dead is not None:
            return
        state.restartable, state.restarts_left = False, 0
        if state.creation is None:  # never placed (label_selector): nothing runs to finish
            submitter.actor_died(state, ActorDiedError(
                f"actor {state.actor_id} went out of scope before any node could host it"))
            core.endpoint.send(core.gcs_address, "update_actor", state.actor_id,
                               {"state": "DEAD"})
            return
        done = submitter.submit_actor_call(state, EXIT_METHOD, (), {}, 1)[0]

    def exit_now(_answer: ObjectRef = done) -> None:
        if state.address is not None and state.dead is None:
            core.endpoint.send(state.address, "exit")

    core.when_ready(done, exit_now)


class ActorMethod:
    """``handle.method``: ``.remote(*args)`` calls it; ``.bind(*args)`` puts it in a graph."""

    def __init__(self, actor: "ActorHandle", name: str, num_returns: int,
                 concurrency_group: str | None = None) -> None:
        self._actor = actor
        self._method_name = name
        self._num_returns = num_returns
        self._group = concurrency_group

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef | list[ObjectRef] | None:
        """Call the method; return one ref, a list for ``num_returns > 1``, None for 0."""
        _, submitter = driver.runtime()
        name = self._method_name
        check_arguments(self._actor._signatures.get(name), args, kwargs,
                        f"{self._actor._class_name}.{name}")
        target = name if self._group is None else (name, self._group)
        refs = submitter.submit_actor_call(self._actor._state(), target, args, kwargs,
                                           self._num_returns)
        return unpack_refs(refs, self._num_returns)

    def options(self, num_returns: int | None = None, concurrency_group: str | None = None,
                **_: Any) -> "ActorMethod":
        """A copy with another ``num_returns`` or ``concurrency_group`` for this call."""
        return ActorMethod(self._actor, self._method_name,
                           self._num_returns if num_returns is None else num_returns,
                           self._group if concurrency_group is None else concurrency_group)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A graph node calling this method (see ember.dag)."""
        return graph_binding.bind(graph_binding.ACTOR_METHOD, self, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods cannot be called directly; use "
                        f".{self._method_name}.remote(...)")


class ActorHandle:
    """A reference to a live actor; picklable, so it can be passed to tasks and other actors."""

    def __init__(self, actor_id: str, class_name: str, methods: dict[str, int],
                 state: ActorState | None = None, signatures: dict | None = None,
                 ref: ObjectRef | None = None) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._signatures = signatures or {}
        self._local_state = state
        self._ref = ref

    def __getattr__(self, name: str) -> ActorMethod:
        if name in BUILTIN_METHODS:
            return ActorMethod(self, BUILTIN_METHODS[name], 1)
        if name.startswith("_") and name not in self.__dict__.get("_methods", {}):
            raise AttributeError(name)
        if name not in self._methods:
            raise AttributeError(f"actor {self._class_name} has no method {name!r}")
        return ActorMethod(self, name, self._methods[name])

    def _state(self) -> ActorState:
        _, submitter = driver.runtime()
        state = submitter.actors.get(self._actor_id)
        if state is None:
            state = self._local_state or ActorState(self._actor_id)
            submitter.actors.setdefault(self._actor_id, state)
        return state

    def _ember_node(self) -> str | None:
        """The node the actor runs on, if this process knows it (the engine's compile)."""
        return self._state().node_id

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
                                  state.address, state.worker_id, state.restartable,
                                  self._signatures, self._ref))

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


def _rebuild_handle(actor_id: str, class_name: str, methods: dict, address: str | None,
                    worker_id: str | None, restartable: bool = False,
                    signatures: dict | None = None, ref: ObjectRef | None = None
                    ) -> ActorHandle:
    _, submitter = driver.runtime()
    state = submitter.actors.get(actor_id)
    if state is None:
        state = ActorState(actor_id, address=address, worker_id=worker_id,
                           restartable=restartable)
        state.ready.set()
        submitter.actors[actor_id] = state
        if restartable:
            submitter.watch_actor(state)
    return ActorHandle(actor_id, class_name, methods, state, signatures, ref)


def handle_from_info(info: dict) -> ActorHandle:
    """A handle for the actor described by a GCS record (it does not keep the actor alive)."""
    return _rebuild_handle(info["actor_id"], info["class_name"], info["methods"],
                           info.get("address"), info.get("worker_id"),
                           bool(info.get("restartable")), info.get("signatures"))


def get_actor(name: str, namespace: str | None = None, timeout: float = 10.0) -> ActorHandle:
    """The handle of the live actor named ``name`` (in the job's namespace by default)."""
    core, _ = driver.runtime()
    if namespace is None:
        namespace = current_namespace()
    deadline = time.monotonic() + timeout
    while True:
        info = core.gcs_call("get_named_actor", name, namespace)
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
    core, submitter = driver.runtime()
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
        nm_address = state.nm_address or (core.gcs_call("kv_get", "actors", handle._actor_id)
                                          or {}).get("nm_address", core.nm_address)
        core.endpoint.send(nm_address, "kill_worker", state.worker_id, True)
