"""``@ember.remote`` functions: exported once to the GCS, then submitted by id."""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
from dataclasses import dataclass
from typing import Any, Callable

import cloudpickle

from ember.dynamic import graph_binding
from ember.dynamic.api import driver, placement_group
from ember.dynamic.common import labels
from ember.dynamic.core import code_origin
from ember.dynamic.core.object_ref import ObjectRef
from ember.dynamic.api.runtime_context import call_env_vars, live_node_labels, runtime_env_vars
from ember.exceptions import SerializationError

TASK_DEFAULTS = {"num_cpus": 1, "num_gpus": 0, "resources": None, "memory": None,
                 "max_retries": 3, "retry_exceptions": False, "num_returns": 1, "name": None,
                 "max_calls": 0, "runtime_env": None, "label_selector": None,
                 "fallback_strategy": None, "scheduling_strategy": None}
DEFAULT_TASK_RESOURCES = {"CPU": 1.0}


def resource_request(options: dict) -> dict[str, float]:
    """The resource dict a task or actor with ``options`` asks the scheduler for."""
    request = {"CPU": float(options.get("num_cpus") or 0),
               "GPU": float(options.get("num_gpus") or 0)}
    if options.get("memory"):
        request["memory"] = float(options["memory"])
    for key, value in (options.get("resources") or {}).items():
        request[key] = float(value)
    return {k: v for k, v in request.items() if v}


def export(obj: Any, what: str) -> tuple[str, bytes]:
    """Pickle a function or class once; return its id (a content hash) and bytes.

    The bytes carry the code's origin too (Note [code origin]); ``load`` reads them back.
    """
    try:
        blob = pickle.dumps((cloudpickle.dumps(obj, protocol=5), code_origin.describe(obj)),
                            protocol=5)
    except Exception as exc:  # noqa: BLE001
        raise SerializationError(
            f"Could not pickle {what}: {type(exc).__name__}: {exc}. A remote function or actor "
            f"class must not capture unpicklable objects (locks, sockets, open files); create "
            f"them inside it instead.") from exc
    return hashlib.sha1(blob).hexdigest()[:24], blob


def load(blob: bytes) -> Any:
    """The function or class that ``export`` turned into ``blob``, its file names restored."""
    code, origin = pickle.loads(blob)
    obj = cloudpickle.loads(code)
    code_origin.restore(obj, origin)
    return obj


def publish(core: Any, exported: tuple[str, bytes]) -> str:
    """Put exported code into the GCS function table once per process; return its id."""
    function_id, blob = exported
    if function_id not in core.exported:
        core.gcs_call("kv_put", "functions", function_id, blob, True)
        core.exported.add(function_id)
    return function_id


class ShownDefault:
    """A parameter's default as text: shows in a signature, pickles whatever the value was."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __reduce__(self) -> tuple:
        return (ShownDefault, (self.text,))


class ArgumentCheck:
    """The signature a call must bind to (as Ray checks at ``.remote()``), picklable.

    Defaults become their text and annotations go (they may not pickle; binding needs neither).
    A call with positional arguments only is checked by counting them, without ``bind``.
    """

    __slots__ = ("signature", "required", "most")

    def __init__(self, signature: inspect.Signature) -> None:
        params = [p.replace(default=p.empty if p.default is p.empty
                            else ShownDefault(repr(p.default)), annotation=p.empty)
                  for p in signature.parameters.values()]
        self.signature = signature.replace(parameters=params,
                                           return_annotation=inspect.Signature.empty)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
        self.most = (None if any(p.kind == p.VAR_POSITIONAL for p in params)
                     else len(positional))
        self.required = (None if any(p.kind == p.KEYWORD_ONLY and p.default is p.empty
                                     for p in params)
                         else sum(p.default is p.empty for p in positional))

    def check(self, args: tuple, kwargs: dict, what: str) -> None:
        """Raise TypeError naming ``what`` and the signature when the arguments do not bind."""
        if (not kwargs and self.required is not None and len(args) >= self.required
                and (self.most is None or len(args) <= self.most)):
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{what}{self.signature}: {exc}") from None


def argument_check(target: Any, name: str | None = None) -> ArgumentCheck | None:
    """The check for calls of a function, or of method ``name`` of class ``target``.

    A method loses ``self`` unless it is a static method; ``__init__`` means the
    constructor. None where Python cannot tell the signature.
    """
    try:
        if name is None or name == "__init__":
            sig = inspect.signature(target)
        else:
            sig = inspect.signature(getattr(target, name))
            if inspect.isfunction(inspect.getattr_static(target, name, None)):
                sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    except (TypeError, ValueError):
        return None
    return ArgumentCheck(sig)


def check_arguments(check: ArgumentCheck | None, args: tuple, kwargs: dict,
                    what: str) -> None:
    """Raise TypeError when ``args``/``kwargs`` do not fit ``check`` (None: anything goes)."""
    if check is not None:
        check.check(args, kwargs, what)


def unpack_refs(refs: list[ObjectRef], num_returns: int) -> ObjectRef | list[ObjectRef] | None:
    """What ``.remote()`` returns, as in Ray: one ref, a list for several, None for none."""
    if num_returns == 1:
        return refs[0]
    return refs if num_returns else None


def check_options(options: dict, allowed: dict, what: str) -> None:
    """Reject unknown option names, and values out of range (as Ray does, at decoration)."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {what}; known: "
                         f"{sorted(allowed)}")
    amounts = {k: options.get(k) for k in ("num_cpus", "num_gpus", "memory")}
    amounts.update(options.get("resources") or {})
    for key, value in amounts.items():
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{key}={value!r} for {what}: a resource amount is a number >= 0")
    for key, low in (("num_returns", 0), ("max_calls", 0), ("max_retries", -1),
                     ("max_restarts", -1), ("max_task_retries", -1), ("max_concurrency", 1)):
        value = options.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < low):
            raise ValueError(f"{key}={value!r} for {what}: it must be an int >= {low}")


@dataclass(frozen=True)
class SubmitPlan:
    """What each ``.remote()`` of one remote function (with its options) submits."""

    what: str
    caller: str
    target: Any  # the function id, or (function_id, extras) the worker reads
    lease: tuple | None  # the private lease tag (Note [private leases])
    resources: dict[str, float]
    num_returns: int
    max_retries: int
    retry_exceptions: Any
    feasible: bool  # whether some node's labels satisfy the label_selector / fallbacks
    placement: str | None  # the placement group it runs in (Note [placement gate])
    env_vars: dict[str, str]  # its runtime env's, inherited ones included (call_env_vars)


class RemoteFunction:
    """A function that runs as a task: ``f.remote(*args)`` returns ObjectRef(s).

    Note [private leases]: a task with ``max_calls`` or ``runtime_env`` env vars runs on leases
    of its own that are never given back to the node manager's pool: the worker exits when
    its lease ends (after ``max_calls`` calls, or when idle), so a worker that applied one
    task's env vars never serves another task, and a new worker serves the next call.
    """

    def __init__(self, fn: Callable, options: dict) -> None:
        check_options(options, TASK_DEFAULTS, f"remote function {fn.__name__}")
        self._function = fn
        self._options = opts = {**TASK_DEFAULTS, **options}
        self._env_vars = runtime_env_vars(opts["runtime_env"])
        labels.validate_selector(opts["label_selector"])
        labels.validate_fallback(opts["fallback_strategy"])
        placement_group.check_strategy(opts["scheduling_strategy"], resource_request(opts),
                                       f"remote function {fn.__name__}")
        self._signature = argument_check(fn)
        self._export: tuple[str, bytes] | None = None
        self._plan: SubmitPlan | None = None
        self._captured_plans: dict[str, SubmitPlan] = {}  # Note [captured child tasks]
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"remote function {self._function.__name__} cannot be called "
                        f"directly; use {self._function.__name__}.remote(...)")

    def options(self, **options: Any) -> "RemoteFunction":
        """A copy with some options changed (num_cpus, num_gpus, num_returns, max_retries...)."""
        copy = RemoteFunction(self._function, {**self._options, **options})
        copy._export = self._export
        return copy

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef | list[ObjectRef] | None:
        """Submit the task; return one ref, a list for ``num_returns > 1``, None for 0."""
        core, submitter = driver.runtime()
        plan = self._plan_for(placement_group.inherited(self._options["scheduling_strategy"]))
        check_arguments(self._signature, args, kwargs, plan.caller)
        self.function_id(core)
        if not plan.feasible:
            labels.warn_infeasible(plan.what, self._options["label_selector"])
            return unpack_refs([core.owned_ref(f"{core.new_id()}.{i}")
                                for i in range(plan.num_returns)], plan.num_returns)
        refs = submitter.submit_task(plan.target, plan.what, args, kwargs, plan.resources,
                                     plan.num_returns, plan.max_retries,
                                     plan.retry_exceptions, plan.lease,
                                     placement_group.gate(plan.placement))
        return unpack_refs(refs, plan.num_returns)

    def _plan_for(self, strategy: Any) -> "SubmitPlan":
        """The plan of these options, or of them in the group the caller captures."""
        if strategy is self._options["scheduling_strategy"]:
            if self._plan is None or self._plan.env_vars != call_env_vars(self._env_vars):
                self._plan = self._make_plan(strategy)
            return self._plan
        plan = self._captured_plans.get(strategy.placement_group._id)
        if plan is None or plan.env_vars != call_env_vars(self._env_vars):
            placement_group.check_strategy(strategy, resource_request(self._options),
                                           f"remote function {self._function.__name__}")
            plan = self._captured_plans[strategy.placement_group._id] = \
                self._make_plan(strategy)
        return plan

    def _make_plan(self, strategy: Any) -> "SubmitPlan":
        """What every ``.remote()`` of these options (under ``strategy``) sends."""
        opts = self._options
        qualname = self._function.__qualname__
        if self._export is None:
            self._export = export(self._function, f"remote function {qualname}")
        function_id = self._export[0]
        resources, placement = placement_group.constrain(strategy, resource_request(opts))
        pin = labels.node_constraint(opts["label_selector"], opts["fallback_strategy"],
                                     live_node_labels)
        resources = {**resources, **(pin or {})}
        # A plain task sends only its function id; one with options the worker must know
        # (resources other than one CPU, env vars) sends ``(function_id, extras)``.
        extras: dict[str, Any] = {}
        env_vars = call_env_vars(self._env_vars)
        if resources != DEFAULT_TASK_RESOURCES:
            extras["resources"] = resources
        if env_vars:
            extras["env_vars"] = env_vars
        if placement_group.capture_spec(strategy):
            extras["capture"] = placement_group.capture_spec(strategy)
        max_calls = int(opts["max_calls"] or 0)
        lease = None
        if max_calls or env_vars:
            lease = (("env_vars", tuple(sorted(env_vars.items()))),
                     ("function", function_id if max_calls else None), ("max_calls", max_calls))
        return SubmitPlan(
            what=f"task {qualname}", caller=f"remote function {qualname}",
            target=(function_id, extras) if extras else function_id, lease=lease,
            env_vars=env_vars,
            resources=resources, num_returns=int(opts["num_returns"]),
            max_retries=int(opts["max_retries"]), retry_exceptions=opts["retry_exceptions"],
            feasible=pin is not None,
            placement=placement)

    def function_id(self, core: Any) -> str:
        """Export the function to the GCS once per process; return its id."""
        if self._export is None:
            self._export = export(self._function,
                                  f"remote function {self._function.__qualname__}")
        return publish(core, self._export)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A graph node calling this function (see ember.dag)."""
        return graph_binding.bind(graph_binding.FUNCTION, self, args, kwargs)
