"""In-process stand-ins for actor handles and remote functions, to test the engine without the
dynamic layer: an actor is a plain object whose ``_ember_run`` runs in the caller's process, so
executor loops run as threads of the test process over real shared-memory channels."""

from __future__ import annotations

import uuid
from typing import Any

from ember.dag.binders import bind_actor_method, bind_function


class FakeRef:
    def __init__(self, value: Any = None, exc: BaseException | None = None) -> None:
        self._value, self._exc = value, exc

    def __ember_get__(self, timeout: float | None = None) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._value


class FakeMethod:
    def __init__(self, actor: "FakeActor", name: str, num_returns: int = 1) -> None:
        self._actor, self._method_name, self._num_returns = actor, name, num_returns

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        return bind_actor_method(self, args, kwargs)

    def options(self, num_returns: int = 1) -> "FakeMethod":
        return FakeMethod(self._actor, self._method_name, num_returns)


class FakeActor:
    def __init__(self, instance: Any) -> None:
        self._instance = instance
        self._actor_id = uuid.uuid4().hex
        self._ember_class = type(instance)

    def __getattr__(self, name: str) -> FakeMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        fn = getattr(type(self._instance), name)
        return FakeMethod(self, name, getattr(fn, "_num_returns", 1))

    def _ember_run(self, fn: Any, *args: Any, **kwargs: Any) -> FakeRef:
        try:
            return FakeRef(fn(self._instance, *args, **kwargs))
        except Exception as exc:  # noqa: BLE001
            return FakeRef(exc=exc)


def returns(n: int):
    def mark(fn):
        fn._num_returns = n
        return fn
    return mark


class FakeRemoteFunction:
    def __init__(self, fn: Any) -> None:
        self._function = fn

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        return bind_function(self, args, kwargs)
