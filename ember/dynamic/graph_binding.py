"""Note [bind hook]: ``.bind()`` on a remote function, an actor class or an actor method makes a
node of a graph, which the graph layer (``ember.dag``) builds. The dynamic runtime sits below that
layer and imports nothing of it: the package above both (``ember/__init__.py``) registers the
builders here, and ``ember.dag`` loads only when a graph is first bound.
"""

from __future__ import annotations

from typing import Any, Callable

FUNCTION, ACTOR_CLASS, ACTOR_METHOD = "function", "actor class", "actor method"

_builder: Callable[[str, Any, tuple, dict], Any] | None = None


def register(builder: Callable[[str, Any, tuple, dict], Any]) -> None:
    """Make ``builder(kind, target, args, kwargs)`` the maker of graph nodes."""
    global _builder
    _builder = builder


def bind(kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
    """The graph node of ``target.bind(*args, **kwargs)``, where ``kind`` says what target is."""
    if _builder is None:
        raise RuntimeError("no graph layer is registered to bind nodes: import ember first")
    return _builder(kind, target, args, kwargs)
