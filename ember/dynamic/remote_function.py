"""``@ember.remote`` functions: exported once to the GCS, then submitted by id."""

from __future__ import annotations

import functools
import hashlib
import pickle
from typing import Any, Callable

import cloudpickle

from ember.dynamic import api, code_origin
from ember.dynamic.object_ref import ObjectRef
from ember.exceptions import SerializationError

TASK_DEFAULTS = {"num_cpus": 1, "num_gpus": 0, "resources": None, "memory": None,
                 "max_retries": 3, "retry_exceptions": False, "num_returns": 1, "name": None}


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


def check_options(options: dict, allowed: dict, what: str) -> None:
    """Reject unknown option names with the list of known ones."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {what}; known: "
                         f"{sorted(allowed)}")


class RemoteFunction:
    """A function that runs as a task: ``f.remote(*args)`` returns ObjectRef(s)."""

    def __init__(self, fn: Callable, options: dict) -> None:
        check_options(options, TASK_DEFAULTS, f"remote function {fn.__name__}")
        self._function = fn
        self._options = {**TASK_DEFAULTS, **options}
        self._export: tuple[str, bytes] | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"remote function {self._function.__name__} cannot be called "
                        f"directly; use {self._function.__name__}.remote(...)")

    def options(self, **options: Any) -> "RemoteFunction":
        """A copy with some options changed (num_cpus, num_gpus, num_returns, max_retries...)."""
        copy = RemoteFunction(self._function, {**self._options, **options})
        copy._export = self._export
        return copy

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef | list[ObjectRef]:
        """Submit the task; return one ref, or a list for ``num_returns > 1``."""
        core, submitter = api.runtime()
        function_id = self.function_id(core)
        opts = self._options
        num_returns = int(opts["num_returns"])
        refs = submitter.submit_task(
            function_id, f"task {self._function.__qualname__}", args, kwargs,
            resource_request(opts), num_returns, int(opts["max_retries"]),
            opts["retry_exceptions"])
        return refs[0] if num_returns == 1 else refs

    def function_id(self, core: Any) -> str:
        """Export the function to the GCS once per process; return its id."""
        if self._export is None:
            self._export = export(self._function,
                                  f"remote function {self._function.__qualname__}")
        return publish(core, self._export)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A graph node calling this function (see ember.dag)."""
        from ember.dag.nodes import bind_function
        return bind_function(self, args, kwargs)
