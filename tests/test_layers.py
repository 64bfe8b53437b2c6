"""The seams between ember's layers, read from the source: what each layer may import or touch."""

from __future__ import annotations

import ast
import pathlib

import ember

EMBER = pathlib.Path(ember.__file__).parent


def _modules(package: str) -> list[tuple[pathlib.Path, ast.AST]]:
    return [(path, ast.parse(path.read_text())) for path in sorted((EMBER / package).glob("*.py"))]


LAYERS_ABOVE_DYNAMIC = ("ember.dag", "ember.engine", "ember.channels", "ember.gpu")


def test_the_dynamic_runtime_imports_nothing_of_the_layers_above_it():
    """ember.dynamic is the lowest layer: no module of it imports ember.dag, ember.engine,
    ember.channels or ember.gpu, not even inside a function or by name (Notes [bind hook] and
    [warm actors]: the layers above register hooks)."""
    found = []
    for path, tree in _modules("dynamic"):
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}:{node.lineno} {name}" for name in names
                      if name.startswith(LAYERS_ABOVE_DYNAMIC)]
            if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
                    and getattr(node.func, "id", getattr(node.func, "attr", "")) in
                    ("import_module", "__import__")):
                found.append(f"{path.name}:{node.lineno} imports a module by name")
    assert not found, found


# what the engine's own objects keep (a compiled graph, its refs and loops) and the actor
# handle's hooks for the engine (ember/dynamic/actor.py)
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
