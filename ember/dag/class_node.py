"""``ActorClass.bind(...)``: a node that creates an actor when the graph runs (Note [class nodes]).

Its methods bind like a handle's (``ClassNodeMethod``), as in Ray's ``class_node.py``.
"""

from __future__ import annotations

from typing import Any

from ember.dag.handles import given_options
from ember.dag.nodes import (ClassMethodNode, DAGNode, InputAttributeNode, InputNode,
                             bind_actor_method)
from ember.exceptions import InvalidArgumentsError


class ClassNode(DAGNode):
    """``ActorClass.bind(*args)``: an actor the uncompiled graph creates (Note [class nodes])."""

    def __init__(self, actor_class: Any, args: tuple, kwargs: dict) -> None:
        self._actor_class = actor_class
        self._last_call: ClassMethodNode | None = None
        super().__init__(args, kwargs)
        if any(isinstance(n, (InputNode, InputAttributeNode)) for n in self._all_upstream()):
            raise InvalidArgumentsError(
                "InputNode handles user dynamic input the the DAG, and cannot be used as args, "
                "kwargs, or other_args_to_resolve in ClassNode constructor because it is not "
                "available at class construction or binding time.")

    def __getattr__(self, name: str) -> "ClassNodeMethod":
        if name.startswith("_"):
            raise AttributeError(name)
        if name == "bind":
            raise AttributeError(f".bind() cannot be used again on {self._label()}; bind "
                                 f"one of its methods: node.method.bind(...)")
        methods = self._actor_class._methods
        if name not in methods:
            raise AttributeError(f"'{self._actor_class.__name__}' has no attribute '{name}'")
        return ClassNodeMethod(self, name, methods[name], {})

    def get_options(self) -> dict:
        from ember.dynamic.api.actor import ACTOR_DEFAULTS
        return given_options(self._actor_class, ACTOR_DEFAULTS)

    def _run_uncompiled(self, call_args, call_kwargs, results, inputs):
        return self._actor_class.remote(*call_args, **call_kwargs)

    def _label(self) -> str:
        return f"{self._actor_class.__name__}.bind()"


class ClassNodeMethod:
    """``class_node.method``: ``.bind(*args)`` gives a ClassMethodNode, ``.options(...)`` a copy."""

    def __init__(self, class_node: ClassNode, name: str, num_returns: int,
                 options: dict) -> None:
        self._actor = class_node
        self._method_name = name
        self._num_returns = int(options.get("num_returns") or num_returns)
        self._bind_options = options

    def options(self, **options: Any) -> "ClassNodeMethod":
        return ClassNodeMethod(self._actor, self._method_name, self._num_returns,
                               {**self._bind_options, **options})

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        return bind_actor_method(self, args, kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        raise AttributeError(".remote() cannot be used on ClassMethodNodes; call .bind() and "
                             "run the graph with .execute()")
