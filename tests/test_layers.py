"""The seams between ember's layers, read from the source: what each layer may import or touch,
and that no two modules import each other, even through a chain (Note [process runtime],
Note [compile hook]: the shared piece moves down, or a callback is passed down, instead)."""

from __future__ import annotations

import ast
import pathlib

import ember

EMBER = pathlib.Path(ember.__file__).parent


def _modules(package: str) -> list[tuple[pathlib.Path, ast.AST]]:
    return [(path, ast.parse(path.read_text())) for path in sorted((EMBER / package).rglob("*.py"))]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(EMBER.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, module, under TYPE_CHECKING) of every import in a module, at any depth."""
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for inner in ast.walk(node)}
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, name, id(node) in typing_only) for name in names]
    return found


def _import_graph(typing_too: bool) -> dict[str, set[str]]:
    modules = {_module_name(path): (path, tree) for path, tree in _modules(".")}
    return {name: {target for _, target, typing_only in _imports(path, tree)
                   if target in modules and target != name and (typing_too or not typing_only)}
            for name, (path, tree) in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_two_modules_import_each_other():
    """No import circle among ember's modules: not at the top, not inside a function, not
    through type hints (a Protocol in the lower module names what it needs of the upper)."""
    assert _circles(_import_graph(typing_too=False)) == []
    assert _circles(_import_graph(typing_too=True)) == []


def test_the_circle_check_sees_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = _import_graph(typing_too=False)
    assert "ember.dynamic.core.core_worker" in graph["ember.dynamic.core.submitter"]   # it reads


def _forbidden(package: str, prefixes: tuple[str, ...]) -> list[str]:
    """Where a module of ``package`` imports one of ``prefixes``, or any module by name."""
    found = []
    for path, tree in _modules(package):
        found += [f"{path.relative_to(EMBER)}:{line} {name}" for line, name, _ in _imports(path, tree)
                  if name.startswith(prefixes)]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
                    and getattr(node.func, "id", getattr(node.func, "attr", "")) in
                    ("import_module", "__import__")):
                found.append(f"{path.relative_to(EMBER)}:{node.lineno} imports a module by name")
    return found


ABOVE_SYSTEM = ("ember.dynamic", "ember.dag", "ember.engine", "ember.channels", "ember.gpu",
                "ember.experimental", "ember.util", "ember.cli")
LAYERS_ABOVE_DYNAMIC = ("ember.dag", "ember.engine", "ember.channels", "ember.gpu")


def test_the_system_base_imports_nothing_above_it():
    """ember._system knows nothing of tasks, graphs or transports."""
    assert not _forbidden("_system", ABOVE_SYSTEM)


def test_the_dynamic_runtime_imports_nothing_of_the_layers_above_it():
    """ember.dynamic imports no module of ember.dag, ember.engine, ember.channels or ember.gpu,
    not even inside a function or by name (Notes [bind hook] and [warm actors]: the layers above
    register hooks)."""
    assert not _forbidden("dynamic", LAYERS_ABOVE_DYNAMIC)


def test_channels_know_only_the_system_base():
    """Channels move bytes: they import nothing of the runtime, graphs or GPUs."""
    assert not _forbidden("channels", ("ember.dynamic", "ember.dag", "ember.engine", "ember.gpu"))


def test_graph_nodes_reach_the_compiler_through_its_hook():
    """ember.dag imports nothing of ember.engine (Note [compile hook])."""
    assert not _forbidden("dag", ("ember.engine",))


ROOMS = ["api", "cluster", "gcs", "node_manager", "core", "objects", "rpc", "common"]


def test_the_runtime_rooms_import_downward():
    """Each room of ember.dynamic imports only the rooms below it (ember/dynamic/__init__.py)."""
    graph = _import_graph(typing_too=True)
    upward = []
    for name, targets in graph.items():
        parts = name.split(".")
        if parts[:2] != ["ember", "dynamic"] or len(parts) < 4:
            continue
        for target in targets:
            tparts = target.split(".")
            if tparts[:2] == ["ember", "dynamic"] and len(tparts) >= 4 and tparts[2] != parts[2]:
                if ROOMS.index(tparts[2]) < ROOMS.index(parts[2]) and not (
                        {parts[2], tparts[2]} == {"gcs", "node_manager"}):
                    upward.append(f"{name} -> {target}")
    assert not upward, upward


# what the engine's own objects keep (a compiled graph, its refs and loops) and the actor
# handle's hooks for the engine (ember/dynamic/api/actor.py)
ENGINE_OWN = {"_ember_run", "_ember_node", "_thread", "_dag", "_returns_list", "_async_pool",
              "_buffer", "_health", "_graph_id"}


def test_the_engine_reads_no_private_attribute_of_graph_nodes():
    """Note [node view]: the compiler sees nodes through their public view only; every private
    attribute it reads of another object is one of its own, and none is a node's."""
    node_privates = {node.attr for _, tree in _modules("dag") for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id == "self" and node.attr.startswith("_")
                     and not node.attr.startswith("__")}
    assert {"_bound_args", "_method_name", "_type_hint"} <= node_privates   # the scan sees them
    read = {}
    for path, tree in _modules("engine"):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if node.attr.startswith("_") and not node.attr.startswith("__") and not own:
                read.setdefault(node.attr, f"{path.name}:{node.lineno}")
    assert set(read) <= ENGINE_OWN, {k: v for k, v in read.items() if k not in ENGINE_OWN}
    assert not (ENGINE_OWN & node_privates)
