"""What graph nodes need to know of the handles they are bound on: the actor's class, the
plain function behind a remote function, the options given to either."""

from __future__ import annotations

from typing import Any


def given_options(remote: Any, defaults: dict) -> dict:
    """The options of a remote function or actor class that differ from the defaults."""
    options = getattr(remote, "_options", {})
    return {k: v for k, v in options.items() if k not in defaults or defaults[k] != v}


def actor_class_name(handle: Any) -> str:
    """The name of the class behind an actor handle, for messages."""
    for attr in ("_class_name", "_ember_class_name"):
        name = getattr(handle, attr, None)
        if isinstance(name, str):
            return name
    cls = actor_class(handle)
    return cls.__name__ if cls is not None else "Actor"


def actor_class(handle: Any) -> type | None:
    """Return the user class behind an actor handle, where the handle says."""
    for attr in ("_ember_class", "_cls", "_class", "_actor_class", "_user_class"):
        cls = getattr(handle, attr, None)
        if isinstance(cls, type):
            return cls
    return None


def python_function(remote_function: Any) -> Any:
    """Return the plain Python function behind a remote function, where it says."""
    for attr in ("_function", "_func", "func", "__wrapped__"):
        fn = getattr(remote_function, attr, None)
        if callable(fn):
            return fn
    return remote_function
