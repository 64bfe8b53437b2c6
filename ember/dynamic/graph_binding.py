"""The graph layer's hooks into the dynamic runtime, which sits below it and imports nothing of
it: the package above both (``ember/__init__.py``) registers them here.

Note [bind hook]: ``.bind()`` on a remote function, an actor class or an actor method makes a
node of a graph, which the graph layer (``ember.dag``) builds; ``ember.dag`` loads only when a
graph is first bound.

Note [warm actors]: an actor is where compiled-graph executor loops run, and importing their
modules on first compile costs tens of ms per actor, so a new actor runs ``warm_up()`` in the
background: whatever the graph layer registered to load ahead.

Note [compile hook]: the compiler (``ember.engine``) reads graphs through dag's public node view
(Note [node view]), so it imports ``ember.dag``; were a node's ``compile()`` to import the engine
back, dag and engine would form one import circle. Instead ``compile()`` calls the compiler
registered here by the same package above, which loads the engine on first compile. The hook
sits here, beside the other two, so that importing ``ember`` loads no graph module.
"""

from __future__ import annotations

from typing import Any, Callable

FUNCTION, ACTOR_CLASS, ACTOR_METHOD = "function", "actor class", "actor method"

_builder: Callable[[str, Any, tuple, dict], Any] | None = None
_warm_up: Callable[[], None] | None = None
_compiler: Callable[..., Any] | None = None


def register(builder: Callable[[str, Any, tuple, dict], Any],
             warm_up: Callable[[], None] | None = None,
             compiler: Callable[..., Any] | None = None) -> None:
    """Make ``builder(kind, target, args, kwargs)`` the maker of graph nodes, ``warm_up()``
    what a new actor loads ahead (Note [warm actors]) and ``compiler(root, **options)`` what
    compiles a graph (Note [compile hook])."""
    global _builder, _warm_up, _compiler
    _builder, _warm_up, _compiler = builder, warm_up, compiler


def compile_graph(root: Any, options: dict[str, Any]) -> Any:
    """Compile the graph that ends at ``root`` with the registered compiler."""
    if _compiler is None:
        raise RuntimeError("no compiler is registered: import ember first")
    return _compiler(root, **options)


def warm_up() -> None:
    """Load what compiled graphs will need in this process, if the graph layer said what."""
    if _warm_up is not None:
        _warm_up()


def bind(kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
    """The graph node of ``target.bind(*args, **kwargs)``, where ``kind`` says what target is."""
    if _builder is None:
        raise RuntimeError("no graph layer is registered to bind nodes: import ember first")
    return _builder(kind, target, args, kwargs)
