"""The nodes of a graph built with ``.bind()``: input, actor methods, remote functions, outputs.

A node records what it calls and its bound arguments (constants and upstream nodes). Nodes are
numbered in the order they are created; since a node can only be bound to nodes that already
exist, that order is a topological order, and it is also the "bind order" in which one actor's
nodes run (see Note [bind order]).

Note [bind order]
~~~~~~~~~~~~~~~~~
Every node takes the next number of one process-wide counter when it is created. Sorting the
nodes of a graph by that number gives a topological order that keeps the order in which the user
bound the methods of one actor, both in ``dag.execute`` and in a compiled graph's schedules.

Note [downstream links]
~~~~~~~~~~~~~~~~~~~~~~~
A node remembers the nodes bound to it (``_downstream``), so compile can walk forward from the
input and find the nodes nobody reads (leaf nodes, unused input attributes), which a walk back
from the output cannot see.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import TYPE_CHECKING, Any, Iterator

from ember.gpu.tensors import AUTO, TorchTensorType

if TYPE_CHECKING:
    from ember.gpu.communicator import Communicator

_NODE_COUNTER = itertools.count()
_EMBER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bind_site() -> str:
    """Return ``file:line`` of the first caller outside the ember package."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_EMBER_DIR + os.sep):
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _nested_nodes(value: Any, depth: int = 0) -> Iterator["DAGNode"]:
    """Yield the nodes inside containers (list, tuple, dict, set) of ``value``."""
    if depth > 8:
        return
    if isinstance(value, dict):
        items = list(value.keys()) + list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        return
    for item in items:
        if isinstance(item, DAGNode):
            yield item
        else:
            yield from _nested_nodes(item, depth + 1)


class DAGNode:
    """A node of a graph: what it runs and its bound arguments (constants and other nodes)."""

    def __init__(self, args: tuple = (), kwargs: dict | None = None) -> None:
        self._bound_args: tuple = tuple(args)
        self._bound_kwargs: dict = dict(kwargs or {})
        self._seq = next(_NODE_COUNTER)
        self._bind_site = _bind_site()
        self._downstream: list[DAGNode] = []
        self._type_hint: TorchTensorType | None = None
        for up in self._all_upstream():
            if not any(d is self for d in up._downstream):
                up._downstream.append(self)

    # -- structure -------------------------------------------------------------------------------

    def _direct_upstream(self) -> list["DAGNode"]:
        """Return the nodes passed directly as arguments (in argument order, repeats kept)."""
        return [a for a in itertools.chain(self._bound_args, self._bound_kwargs.values())
                if isinstance(a, DAGNode)]

    def _container_upstream(self) -> list["DAGNode"]:
        """Return the nodes hidden inside container arguments (not allowed when compiling)."""
        found: list[DAGNode] = []
        for arg in itertools.chain(self._bound_args, self._bound_kwargs.values()):
            found.extend(_nested_nodes(arg))
        return found

    def _all_upstream(self) -> list["DAGNode"]:
        return self._direct_upstream() + self._container_upstream()

    def _label(self) -> str:
        """A short name for messages: what the node runs."""
        return type(self).__name__

    def _describe(self) -> str:
        """The node's name for error messages: what it runs and where it was bound."""
        return f"{self._label()} (bound at {self._bind_site})"

    def __repr__(self) -> str:
        return f"<{self._describe()}>"

    # -- type hints ------------------------------------------------------------------------------

    def with_tensor_transport(self, transport: "str | Communicator" = AUTO) -> "DAGNode":
        """Send the tensors in this node's value over a GPU transport ("auto", "ipc", "nccl",
        "cpu", or a Communicator); returns the node. See Note [auto transport] in
        ember/engine/transports.py."""
        return self.with_type_hint(TorchTensorType(transport=transport))

    def with_type_hint(self, hint: TorchTensorType) -> "DAGNode":
        """Declare the tensors of this node's value (shape, dtype, transport); returns the node."""
        if not isinstance(hint, TorchTensorType):
            raise TypeError(f"with_type_hint takes a TorchTensorType, got {hint!r}")
        self._type_hint = hint
        return self

    # -- running ---------------------------------------------------------------------------------

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run the graph ending at this node once through the dynamic layer (no compile).

        Actor-method nodes become ``actor.method.remote(...)`` calls and function nodes
        ``f.remote(...)`` tasks, chained by ObjectRefs; returns the ObjectRef of this node (a
        list of them for a MultiOutputNode).
        """
        from ember.dag._execute import execute_uncompiled
        return execute_uncompiled(self, args, kwargs)

    def compile(self, **options: Any):
        """Compile the graph ending at this node into a ``CompiledDAG``.

        Options (all keyword): ``submit_timeout``, ``get_timeout``, ``buffer_size_bytes``,
        ``max_inflight_executions``, ``max_buffered_results``, ``enable_asyncio`` (accepted and
        ignored: ``execute_async`` always works), ``overlap_gpu_communication`` (GPU
        communication on its own CUDA stream). Ray's spellings with a leading underscore are
        accepted too. See ``ember.engine.CompileOptions``.
        """
        from ember.engine.compiled_dag import compile_dag
        return compile_dag(self, **options)

    def experimental_compile(self, **options: Any):
        """Ray's name for ``compile``."""
        return self.compile(**options)


class InputNode(DAGNode):
    """The input of a graph: what ``execute(*args, **kwargs)`` is called with.

    Use it as a context manager. The node itself stands for the single positional argument;
    ``inp[0]``, ``inp[1]`` stand for positional arguments and ``inp.key`` / ``inp["key"]`` for
    keyword arguments.
    """

    def __init__(self) -> None:
        super().__init__()
        self._attributes: dict[Any, InputAttributeNode] = {}

    def __enter__(self) -> "InputNode":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __getitem__(self, key: Any) -> "InputAttributeNode":
        if not isinstance(key, (int, str)):
            raise TypeError(f"an InputNode is indexed by an int (positional argument) or a str "
                            f"(keyword argument), got {key!r}")
        node = self._attributes.get(key)
        if node is None:
            node = InputAttributeNode(self, key)
            self._attributes[key] = node
        return node

    def __getattr__(self, name: str) -> "InputAttributeNode":
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def _label(self) -> str:
        return "InputNode"


class InputAttributeNode(DAGNode):
    """One argument of ``execute``: ``inp[i]`` (positional) or ``inp.key`` (keyword)."""

    def __init__(self, input_node: InputNode, key: int | str) -> None:
        super().__init__((input_node,))
        self._key = key

    @property
    def key(self) -> int | str:
        """The index (positional argument) or name (keyword argument) this node reads."""
        return self._key

    def _label(self) -> str:
        return f"inp[{self._key!r}]"

    def _extract(self, args: tuple, kwargs: dict) -> Any:
        """Return this argument from the arguments of one ``execute``."""
        key = self._key
        try:
            return args[key] if isinstance(key, int) else kwargs[key]
        except (IndexError, KeyError):
            what = (f"positional argument {key}" if isinstance(key, int)
                    else f"keyword argument {key!r}")
            raise TypeError(f"the graph reads {what} ({self._describe()}), but execute was "
                            f"called with {len(args)} positional and keyword arguments "
                            f"{sorted(kwargs)}") from None


class ClassMethodNode(DAGNode):
    """A call of an actor method, ``actor.method.bind(...)``."""

    def __init__(self, method: Any, args: tuple, kwargs: dict) -> None:
        self._method = method
        self._actor = method._actor
        self._method_name: str = method._method_name
        self._num_returns: int = int(getattr(method, "_num_returns", 1) or 1)
        super().__init__(args, kwargs)

    @property
    def actor_id(self) -> str:
        """The id of the actor whose method this node calls."""
        return self._actor._actor_id

    def _label(self) -> str:
        return f"{_actor_class_name(self._actor)}.{self._method_name} (actor {self.actor_id})"


class ClassMethodOutputNode(DAGNode):
    """Output ``index`` of a method with ``num_returns > 1``."""

    def __init__(self, parent: ClassMethodNode, index: int) -> None:
        super().__init__((parent,))
        self._parent = parent
        self._index = index

    @property
    def actor_id(self) -> str:
        return self._parent.actor_id

    def _label(self) -> str:
        return f"{self._parent._label()}[{self._index}]"


class FunctionNode(DAGNode):
    """A call of a remote function, ``f.bind(...)``; runs as a dynamic task."""

    def __init__(self, remote_function: Any, args: tuple, kwargs: dict) -> None:
        self._remote_function = remote_function
        super().__init__(args, kwargs)

    def _label(self) -> str:
        fn = _python_function(self._remote_function)
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "function"
        return f"{name}()"


class MultiOutputNode(DAGNode):
    """Several nodes returned together: ``execute`` gives a list with one value per node."""

    def __init__(self, nodes: list | tuple) -> None:
        if not isinstance(nodes, (list, tuple)):
            raise TypeError(f"MultiOutputNode takes a list of nodes, got {type(nodes).__name__}")
        for i, node in enumerate(nodes):
            if not isinstance(node, DAGNode):
                raise TypeError(f"MultiOutputNode element {i} is {node!r}, not a node; bind it "
                                f"with actor.method.bind(...) first")
        super().__init__(tuple(nodes))

    def _label(self) -> str:
        return f"MultiOutputNode({len(self._bound_args)})"


def _actor_class_name(handle: Any) -> str:
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


def _python_function(remote_function: Any) -> Any:
    """Return the plain Python function behind a remote function, where it says."""
    for attr in ("_function", "_func", "func", "__wrapped__"):
        fn = getattr(remote_function, attr, None)
        if callable(fn):
            return fn
    return remote_function


def bind_actor_method(method: Any, args: tuple, kwargs: dict) -> Any:
    """``actor.method.bind(*args, **kwargs)``: a ClassMethodNode, or a tuple of one
    ClassMethodOutputNode per output when the method has ``num_returns > 1`` (as Ray does)."""
    node = ClassMethodNode(method, tuple(args), dict(kwargs))
    if node._num_returns > 1:
        return tuple(ClassMethodOutputNode(node, i) for i in range(node._num_returns))
    return node


def bind_function(remote_function: Any, args: tuple, kwargs: dict) -> FunctionNode:
    """``f.bind(*args, **kwargs)`` on a remote function: a FunctionNode."""
    return FunctionNode(remote_function, tuple(args), dict(kwargs))
