"""What ``.bind()`` makes of an actor method, a remote function or an actor class: a graph node.

The dynamic layer reaches these through Note [bind hook] (``ember/__init__.py`` registers
``BINDERS``).
"""

from __future__ import annotations

from typing import Any

from ember.dag.class_node import ClassNode
from ember.dag.nodes import FunctionNode, bind_actor_method
from ember.dynamic import graph_binding


def bind_function(remote_function: Any, args: tuple, kwargs: dict) -> FunctionNode:
    """``f.bind(*args, **kwargs)`` on a remote function: a FunctionNode."""
    return FunctionNode(remote_function, tuple(args), dict(kwargs))


def bind_actor_class(actor_class: Any, args: tuple, kwargs: dict) -> ClassNode:
    """``ActorClass.bind(*args, **kwargs)``: a ClassNode (Note [class nodes])."""
    return ClassNode(actor_class, tuple(args), dict(kwargs))


BINDERS = {graph_binding.FUNCTION: bind_function, graph_binding.ACTOR_CLASS: bind_actor_class,
           graph_binding.ACTOR_METHOD: bind_actor_method}   # Note [bind hook]
