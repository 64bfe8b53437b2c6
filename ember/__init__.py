"""ember: compiled static graphs of actors for GPU pipelines, on a dynamic task/actor runtime.

The API mirrors Ray's core, so ``import ember as ray`` ports a Ray program.
"""

from __future__ import annotations

from typing import Any

from ember import exceptions, util
from ember.dynamic.api.actor import ActorHandle, get_actor, kill, make_actor_class, method
from ember.dynamic.api.driver import (available_resources, cancel, cluster_resources, get,
                                      init, is_initialized, nodes, put, shutdown, wait)
from ember.dynamic.core.object_ref import ObjectRef
from ember.dynamic.api.remote_function import RemoteFunction
from ember import experimental  # noqa: F401 - registers the tensor transports' provider
from ember.dynamic import graph_binding
from ember.dynamic.api.runtime_context import get_gpu_ids, get_runtime_context

__version__ = "0.1.0"

__all__ = [
    "ActorHandle", "ObjectRef", "available_resources", "cancel", "cluster_resources",
    "exceptions", "get", "get_actor", "get_gpu_ids", "get_runtime_context", "init",
    "is_initialized", "kill", "method", "nodes", "put", "remote", "shutdown", "util", "wait",
    "__version__",
]


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a task or a class an actor: ``@ember.remote`` or ``@ember.remote(...)``."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @ember.remote or @ember.remote(num_cpus=..., ...) with keywords")
    return lambda target: _make_remote(target, options)


def _bind(kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
    """Build a graph node with ember.dag, loaded on first use (Note [bind hook])."""
    from ember.dag.binders import BINDERS
    return BINDERS[kind](target, args, kwargs)


def _warm_up() -> None:
    """What a new actor imports ahead for compiled graphs (Note [warm actors])."""
    import ember.channels.shared_memory  # noqa: F401
    import ember.engine.actor_side  # noqa: F401 - and the executor loop with it


def _compile(root: Any, **options: Any) -> Any:
    """Compile a bound graph with ember.engine, loaded on first use (Note [compile hook])."""
    from ember.engine.compiled_dag import compile_dag
    return compile_dag(root, **options)


graph_binding.register(_bind, _warm_up, _compile)


def _make_remote(target: Any, options: dict) -> Any:
    if isinstance(target, type):
        return make_actor_class(target, options)
    return RemoteFunction(target, options)
