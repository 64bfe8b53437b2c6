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

Note [class nodes]
~~~~~~~~~~~~~~~~~~
``ActorClass.bind(...)`` gives a ``ClassNode``: running the graph uncompiled creates the actor
(once per ``execute``, as Ray), and ``class_node.method.bind(...)`` calls a method of it. As in
Ray, each such method node also depends on the class node and on the method bound on the same
class node just before it (``get_other_args_to_resolve()``), so ``c.inc.bind(); c.get.bind()``
runs both, in that order, though ``get`` takes no argument. A compiled graph needs live actors
(``Actor.remote()``) and refuses class nodes.

Note [node view]
~~~~~~~~~~~~~~~~
The compiler (``ember.engine``) sees a node only through its public, read-only view: Ray's
``get_args()`` / ``get_kwargs()`` / ``get_method_name()``, and ``upstream``, ``downstream``,
``type_hint``, ``label``, ``describe()``, ``actor``, ``num_returns``, ``parent``, ``index``,
``remote_function``, ``key``; the graph's nodes in bind order come from ``collect_nodes``, the one
walk. What a node keeps behind those is its own.
"""

from __future__ import annotations

import copy
import itertools
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ember.dag.handles import actor_class_name, given_options, python_function
from ember.dynamic import graph_binding
from ember.exceptions import InvalidArgumentsError
from ember.gpu.tensors import AUTO, TorchTensorType

if TYPE_CHECKING:
    from ember.gpu.communicator import Communicator

_NODE_COUNTER = itertools.count()
PARENT_CLASS_NODE_KEY = "parent_class_node"
PREV_CLASS_METHOD_CALL_KEY = "prev_class_method_call"
_DEVICES = ("default", "cpu", "gpu", "cuda")
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


def nested_nodes(value: Any, depth: int = 0, objects: bool = False) -> Iterator["DAGNode"]:
    """Yield the nodes inside containers (list, tuple, dict, set) of ``value``; with
    ``objects`` also inside the attributes of plain Python objects (to refuse them)."""
    if depth > 8:
        return
    if isinstance(value, dict):
        items = list(value.keys()) + list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    elif objects and type(value).__module__ != "builtins" and isinstance(
            getattr(value, "__dict__", None), dict):
        items = list(vars(value).values())
    else:
        return
    for item in items:
        if isinstance(item, DAGNode):
            yield item
        else:
            yield from nested_nodes(item, depth + 1, objects)


def replace_nodes(value: Any, table: dict[int, Any]) -> Any:
    """Replace every node in ``value`` (also inside list, tuple and dict) by ``table[id(node)]``."""
    if isinstance(value, DAGNode):
        return table[id(value)]
    if isinstance(value, list):
        return [replace_nodes(v, table) for v in value]
    if isinstance(value, tuple):
        return tuple(replace_nodes(v, table) for v in value)
    if isinstance(value, dict):
        return {replace_nodes(k, table): replace_nodes(v, table) for k, v in value.items()}
    return value


def collect_nodes(output: "DAGNode") -> list["DAGNode"]:
    """The one graph walk: every node ``output`` depends on (itself included), in bind order."""
    seen: dict[int, DAGNode] = {}
    stack = [output]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(node._all_upstream())
    return sorted(seen.values(), key=lambda n: n._seq)


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
            found.extend(nested_nodes(arg))
        return found

    def _other_upstream(self) -> list["DAGNode"]:
        """The nodes this one depends on besides its arguments (Note [class nodes])."""
        return [v for v in self.get_other_args_to_resolve().values() if isinstance(v, DAGNode)]

    def _all_upstream(self) -> list["DAGNode"]:
        return self._direct_upstream() + self._container_upstream() + self._other_upstream()

    # -- Ray's node interface ----------------------------------------------------------------

    def get_args(self) -> tuple:
        """The bound positional arguments (constants and nodes)."""
        return self._bound_args

    def get_kwargs(self) -> dict:
        """The bound keyword arguments (constants and nodes)."""
        return self._bound_kwargs

    def get_options(self) -> dict:
        """The options given to what this node runs (``.options(...)``), without defaults."""
        return {}

    def get_other_args_to_resolve(self) -> dict:
        """What the node depends on besides its arguments (Note [class nodes])."""
        return {}

    def _get_toplevel_child_nodes(self) -> list["DAGNode"]:
        """The nodes passed directly as arguments, each once, in argument order."""
        return _unique(self._direct_upstream())

    def _get_all_child_nodes(self) -> list["DAGNode"]:
        """Every node this one depends on directly (also inside containers), each once."""
        return _unique(self._all_upstream())

    def _apply_and_replace_all_child_nodes(self, fn: Callable[["DAGNode"], Any]) -> "DAGNode":
        """A copy of this node whose child nodes are replaced by ``fn(child)``."""
        table = {id(child): fn(child) for child in self._get_all_child_nodes()}
        new = copy.copy(self)
        new._bound_args = replace_nodes(self._bound_args, table)
        new._bound_kwargs = replace_nodes(self._bound_kwargs, table)
        new._downstream = []
        new._replace_others(table)
        return new

    def _replace_others(self, table: dict[int, Any]) -> None:
        """Replace the nodes of ``get_other_args_to_resolve`` in this (copied) node."""

    def apply_recursive(self, fn: Callable[["DAGNode"], Any]) -> Any:
        """Apply ``fn`` to every node of the graph ending here, children first, each node once
        (as Ray): ``fn`` gets a copy whose children are already replaced by their results."""
        if not isinstance(fn, _CachingFn):
            fn = _CachingFn(fn)
        elif self._seq in fn.cache:
            return fn.cache[self._seq]
        return fn(self._apply_and_replace_all_child_nodes(lambda n: n.apply_recursive(fn)))

    # -- the read-only view a compiler uses (Note [node view]) -----------------------------------

    @property
    def upstream(self) -> list["DAGNode"]:
        """The nodes passed directly as arguments (in argument order, repeats kept)."""
        return self._direct_upstream()

    @property
    def downstream(self) -> tuple["DAGNode", ...]:
        """The nodes bound with this one as an argument, in bind order."""
        return tuple(self._downstream)

    @property
    def type_hint(self) -> TorchTensorType | None:
        """The tensor hint ``with_tensor_transport`` / ``with_type_hint`` gave, if any."""
        return self._type_hint

    @property
    def label(self) -> str:
        """A short name for messages: what the node runs."""
        return self._label()

    def describe(self) -> str:
        """The node's name for error messages: what it runs and where it was bound."""
        return f"{self._label()} (bound at {self._bind_site})"

    @property
    def remote(self) -> Any:
        raise AttributeError(f".remote() cannot be used on {type(self).__name__}s; run the "
                             f"graph with .execute(), or compile it")

    def _label(self) -> str:
        """A short name for messages: what the node runs."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self.describe()}>"

    # -- type hints ------------------------------------------------------------------------------

    def with_tensor_transport(self, transport: "str | Communicator" = AUTO,
                              device: str = "default", _static_shape: bool = False,
                              _direct_return: bool = False) -> "DAGNode":
        """Send the tensors in this node's value over a GPU transport ("auto", "ipc", "nccl",
        "cpu", or a Communicator); returns the node. See Note [auto transport] in
        ember/engine/transports.py. ``device="cpu"`` (Ray's) with the "auto" transport sends
        through host memory; Ray's ``_static_shape`` and ``_direct_return`` are accepted: ember
        sends the metadata only when it changes anyway."""
        if device not in _DEVICES:
            raise InvalidArgumentsError(f"device must be one of {_DEVICES}, got {device!r}")
        if device == "cpu" and transport == AUTO:
            transport = "cpu"
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
        return execute_uncompiled(self, args, kwargs)

    def _run_uncompiled(self, call_args: tuple, call_kwargs: dict, results: dict[int, Any],
                        inputs: tuple[tuple, dict]) -> Any:
        """This node's value in an uncompiled run (``execute``), its arguments resolved."""
        raise TypeError(f"cannot execute {self.describe()}: unknown node type")

    def compile(self, **options: Any):
        """Compile the graph ending at this node into a ``CompiledDAG``.

        Options (all keyword): ``submit_timeout``, ``get_timeout``, ``buffer_size_bytes``,
        ``max_inflight_executions`` (more pending executions wait, they do not fail),
        ``max_buffered_results`` (None: no limit; a number: ``RayCgraphCapacityExceeded`` past
        it, as Ray), ``enable_asyncio`` (accepted and ignored: ``execute_async`` always works),
        ``overlap_gpu_communication`` (GPU communication on its own CUDA stream). Ray's
        spellings with a leading underscore are accepted too; an option not given comes from
        ``ember.dag.DAGContext.get_current()``. See ``ember.engine.CompileOptions``.
        """
        return graph_binding.compile_graph(self, options)   # Note [compile hook]

    def experimental_compile(self, **options: Any):
        """Ray's name for ``compile``."""
        return self.compile(**options)


class InputNode(DAGNode):
    """The input of a graph: what ``execute(*args, **kwargs)`` is called with.

    Use it as a context manager. The node itself stands for the single positional argument;
    ``inp[0]``, ``inp[1]`` stand for positional arguments and ``inp.key`` / ``inp["key"]`` for
    keyword arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise InvalidArgumentsError("InputNode should not take any args or kwargs; pass "
                                        "the values to execute() instead")
        super().__init__()
        self._attributes: dict[Any, InputAttributeNode] = {}
        self._in_context = False

    def __enter__(self) -> "InputNode":
        self._in_context = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __getitem__(self, key: Any) -> "InputAttributeNode":
        return self._attribute(key, "__getitem__")

    def __getattr__(self, name: str) -> "InputAttributeNode":
        if name.startswith("_"):
            raise AttributeError(name)
        return self._attribute(name, "__getattr__")

    def _attribute(self, key: Any, accessor: str) -> "InputAttributeNode":
        if not isinstance(key, (int, str)):
            raise TypeError(f"an InputNode is indexed by an int (positional argument) or a str "
                            f"(keyword argument), got {key!r}")
        node = self._attributes.get(key)
        if node is None:
            node = InputAttributeNode(self, key, accessor)
            self._attributes[key] = node
        return node

    def _label(self) -> str:
        return "InputNode"


class InputAttributeNode(DAGNode):
    """One argument of ``execute``: ``inp[i]`` (positional) or ``inp.key`` (keyword)."""

    def __init__(self, input_node: InputNode, key: int | str,
                 accessor: str = "__getitem__") -> None:
        self._key = key
        self._accessor = accessor
        super().__init__((input_node,))

    @property
    def key(self) -> int | str:
        """The index (positional argument) or name (keyword argument) this node reads."""
        return self._key

    def _label(self) -> str:
        return f"inp[{self._key!r}]"

    def get_other_args_to_resolve(self) -> dict:
        return {"key": self._key, "accessor_method": self._accessor}

    def _run_uncompiled(self, call_args, call_kwargs, results, inputs):
        return self._extract(*inputs)

    def _extract(self, args: tuple, kwargs: dict) -> Any:
        """Return this argument from the arguments of one uncompiled ``execute``: as Ray, of
        the single positional argument when there is only that (``value[key]``, or
        ``getattr(value, key)`` for ``inp.key``), else ``args[i]`` / ``kwargs[key]``."""
        key = self._key
        if len(args) == 1 and not kwargs:
            if self._accessor == "__getattr__":
                return getattr(args[0], key)
            return args[0][key]
        try:
            return args[key] if isinstance(key, int) else kwargs[key]
        except (IndexError, KeyError):
            what = (f"positional argument {key}" if isinstance(key, int)
                    else f"keyword argument {key!r}")
            raise TypeError(f"the graph reads {what} ({self.describe()}), but execute was "
                            f"called with {len(args)} positional and keyword arguments "
                            f"{sorted(kwargs)}") from None


class ClassMethodNode(DAGNode):
    """A call of an actor method, ``actor.method.bind(...)``."""

    def __init__(self, method: Any, args: tuple, kwargs: dict) -> None:
        self._method = method
        self._actor = method._actor
        self._method_name: str = method._method_name
        self._num_returns: int = int(getattr(method, "_num_returns", 1) or 1)
        self._prev_call: ClassMethodNode | None = None
        if isinstance(self._actor, DAGNode):
            self._prev_call = self._actor._last_call
            self._actor._last_call = self
        super().__init__(args, kwargs)

    @property
    def actor_id(self) -> str:
        """The id of the actor whose method this node calls."""
        return self._actor._actor_id

    def get_method_name(self) -> str:
        """The name of the method this node calls."""
        return self._method_name

    @property
    def actor(self) -> Any:
        """The actor handle (or ClassNode) whose method this node calls."""
        return self._actor

    @property
    def num_returns(self) -> int:
        """How many values the method returns."""
        return self._num_returns

    def get_options(self) -> dict:
        return dict(getattr(self._method, "_bind_options", {}))

    def get_other_args_to_resolve(self) -> dict:
        if not isinstance(self._actor, DAGNode):
            return {}
        return {PARENT_CLASS_NODE_KEY: self._actor, PREV_CLASS_METHOD_CALL_KEY: self._prev_call}

    def _run_uncompiled(self, call_args, call_kwargs, results, inputs):
        method = self._method   # of a handle, or of the actor its ClassNode created
        if isinstance(self._actor, DAGNode):
            method = getattr(results[id(self._actor)], self._method_name).options(
                num_returns=self._num_returns)
        return method.remote(*call_args, **call_kwargs)

    def _replace_others(self, table: dict[int, Any]) -> None:
        if isinstance(self._actor, DAGNode):
            self._actor = table[id(self._actor)]
            if self._prev_call is not None:
                self._prev_call = table[id(self._prev_call)]

    def _label(self) -> str:
        if isinstance(self._actor, DAGNode):
            return f"{self._actor._actor_class.__name__}.{self._method_name} (class node)"
        return f"{actor_class_name(self._actor)}.{self._method_name} (actor {self.actor_id})"


class ClassMethodOutputNode(DAGNode):
    """Output ``index`` of a method with ``num_returns > 1``."""

    def __init__(self, parent: ClassMethodNode, index: int) -> None:
        super().__init__((parent,))
        self._parent = parent
        self._index = index

    @property
    def actor_id(self) -> str:
        return self._parent.actor_id

    @property
    def parent(self) -> ClassMethodNode:
        """The call whose output this node picks."""
        return self._parent

    @property
    def index(self) -> int:
        """Which of the call's outputs this node is."""
        return self._index

    def _label(self) -> str:
        return f"{self._parent._label()}[{self._index}]"

    def _run_uncompiled(self, call_args, call_kwargs, results, inputs):
        return call_args[0][self._index]


class FunctionNode(DAGNode):
    """A call of a remote function, ``f.bind(...)``; runs as a dynamic task."""

    def __init__(self, remote_function: Any, args: tuple, kwargs: dict) -> None:
        self._remote_function = remote_function
        super().__init__(args, kwargs)

    @property
    def remote_function(self) -> Any:
        """The remote function this node calls."""
        return self._remote_function

    def _run_uncompiled(self, call_args, call_kwargs, results, inputs):
        return self._remote_function.remote(*call_args, **call_kwargs)

    def _label(self) -> str:
        fn = python_function(self._remote_function)
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "function"
        return f"{name}()"

    def get_options(self) -> dict:
        from ember.dynamic.api.remote_function import TASK_DEFAULTS
        return given_options(self._remote_function, TASK_DEFAULTS)


class MultiOutputNode(DAGNode):
    """Several nodes returned together: ``execute`` gives a list with one value per node."""

    def __init__(self, nodes: list | tuple) -> None:
        if not isinstance(nodes, (list, tuple)):
            raise InvalidArgumentsError(f"MultiOutputNode takes a list of nodes, got "
                                        f"{type(nodes).__name__}")
        for i, node in enumerate(nodes):
            if not isinstance(node, DAGNode):
                raise InvalidArgumentsError(f"MultiOutputNode element {i} is {node!r}, not a "
                                            f"node; bind it with actor.method.bind(...) first")
        super().__init__(tuple(nodes))

    def _run_uncompiled(self, call_args, call_kwargs, results, inputs):
        return list(call_args)

    def _label(self) -> str:
        return f"MultiOutputNode({len(self._bound_args)})"


class _CachingFn:
    """``apply_recursive``'s function, called once per node; one InputNode per graph."""

    def __init__(self, fn: Callable[[DAGNode], Any]) -> None:
        self.fn = fn
        self.cache: dict[int, Any] = {}
        self.input_seq: int | None = None

    def __call__(self, node: DAGNode) -> Any:
        if node._seq not in self.cache:
            self.cache[node._seq] = self.fn(node)
        if isinstance(node, InputNode):
            if self.input_seq is None:
                self.input_seq = node._seq
            elif self.input_seq != node._seq:
                raise AssertionError("Each DAG should only have one unique InputNode.")
        return self.cache[node._seq]


def bind_actor_method(method: Any, args: tuple, kwargs: dict) -> Any:
    """``actor.method.bind(*args, **kwargs)``: a ClassMethodNode, or a tuple of one
    ClassMethodOutputNode per output when the method has ``num_returns > 1`` (as Ray does)."""
    node = ClassMethodNode(method, tuple(args), dict(kwargs))
    if node._num_returns > 1:
        return tuple(ClassMethodOutputNode(node, i) for i in range(node._num_returns))
    return node


def _unique(nodes: list[DAGNode]) -> list[DAGNode]:
    return list({id(n): n for n in nodes}.values())


# -- running a graph once, uncompiled ---------------------------------------------------------
# Note [uncompiled execution]: ``dag.execute(...)`` runs the graph once through the dynamic layer,
# each node becoming a ``.remote()`` call (its ``_run_uncompiled``, dispatched once by type). The
# nodes run in bind order (Note [bind order]); an upstream node's result travels as its
# ObjectRef, which the dynamic layer resolves before the call. A node inside a container argument
# (``f.bind({"x": g.bind()})``) reaches ``f`` as an ObjectRef inside the container, as in Ray
# (only top-level arguments are resolved).

def input_value(args: tuple, kwargs: dict, node: DAGNode) -> Any:
    """The value of the InputNode itself: the single positional argument of ``execute``."""
    if len(args) != 1 or kwargs:
        raise TypeError(f"the graph reads its InputNode directly ({node.describe()}), so "
                        f"execute takes exactly one positional argument; it got {len(args)} "
                        f"positional and keyword arguments {sorted(kwargs)}. Use inp[i] or "
                        f"inp.key to read several arguments")
    return args[0]


def execute_uncompiled(output: DAGNode, args: tuple, kwargs: dict) -> Any:
    """Submit every node of the graph ending at ``output``; return the output's ObjectRef(s)."""
    results: dict[int, Any] = {}
    nodes = collect_nodes(output)
    inputs = [n for n in nodes if isinstance(n, InputNode)]
    if len(inputs) > 1:
        raise AssertionError("Each DAG should only have one unique InputNode.")
    if inputs and not inputs[0]._in_context:
        raise AssertionError("InputNode is a singleton instance that should be only used in "
                             "context manager: build the graph inside `with InputNode() as inp:`")
    for node in nodes:
        if isinstance(node, InputNode):
            results[id(node)] = (input_value(args, kwargs, node)
                                 if _reads_input_directly(node, nodes) else None)
            continue
        results[id(node)] = node._run_uncompiled(replace_nodes(node._bound_args, results),
                                                 replace_nodes(node._bound_kwargs, results),
                                                 results, (args, kwargs))
    return results[id(output)]


def _reads_input_directly(node: InputNode, nodes: list[DAGNode]) -> bool:
    """Whether a node of the graph takes the InputNode itself (not one of its attributes)."""
    return any(not isinstance(n, InputAttributeNode) and any(u is node for u in n._all_upstream())
               for n in nodes)
