"""Where code shipped by value came from, so that remote tracebacks name the user's file and line.

Note [code origin]: cloudpickle sends functions and classes defined in ``__main__`` (or in any
module a worker cannot import) by value, code objects included. Since cloudpickle 3.1 every such
code object arrives named ``"<dynamic-code>"`` instead of its source file (a deterministic
payload), so a traceback raised in a worker loses the user's file name and source lines; older
versions keep the name but the worker may still lack the file (another machine, a notebook cell).
The exporter therefore records, beside the pickled code, the file of every code object it ships
(keyed by name and first line) and those files' source lines; the loader puts the names back on
the code objects and the lines into ``linecache``, which is what ``traceback`` reads. This works
whatever cloudpickle does with file names.
"""

from __future__ import annotations

import linecache
import types
from typing import Any, Iterator

DYNAMIC = "<dynamic-code>"
_MAX_SOURCE_LINES = 20_000

# (co_name, co_firstlineno) -> file name; file name -> its source lines
Origin = tuple[dict[tuple[str, int], str], dict[str, list[str]]]


def describe(obj: Any) -> Origin:
    """The file names and source lines of the code shipped with function or class ``obj``."""
    files: dict[tuple[str, int], str] = {}
    sources: dict[str, list[str]] = {}
    for fn in _functions(obj):
        for code in _codes(fn.__code__):
            files[(code.co_name, code.co_firstlineno)] = code.co_filename
            if code.co_filename not in sources:
                lines = linecache.getlines(code.co_filename)
                if 0 < len(lines) <= _MAX_SOURCE_LINES:
                    sources[code.co_filename] = lines
    return files, sources


def restore(obj: Any, origin: Origin) -> None:
    """Give the code of ``obj`` back its file names and make its source lines readable here."""
    files, sources = origin
    for filename, lines in sources.items():
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    for fn in _functions(obj):
        if any(code.co_filename == DYNAMIC for code in _codes(fn.__code__)):
            fn.__code__ = _renamed(fn.__code__, files)


def _renamed(code: types.CodeType, files: dict[tuple[str, int], str]) -> types.CodeType:
    consts = tuple(_renamed(c, files) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    name = code.co_filename
    if name == DYNAMIC:
        name = files.get((code.co_name, code.co_firstlineno), name)
    return code.replace(co_filename=name, co_consts=consts)


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _functions(obj: Any) -> Iterator[types.FunctionType]:
    """Every Python function reachable from ``obj`` that came from ``obj``'s module.

    Reachable: ``obj`` itself, the members of a class (methods, static and class methods,
    properties, nested classes) and of its bases, closure cells, and the module globals a
    function names.
    """
    module = getattr(obj, "__module__", None)
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (staticmethod, classmethod)):
            stack.append(item.__func__)
        elif isinstance(item, property):
            stack.extend(f for f in (item.fget, item.fset, item.fdel) if f is not None)
        elif isinstance(item, type) and item.__module__ == module:
            stack.extend(vars(item).values())
            stack.extend(item.__bases__)
        elif isinstance(item, types.FunctionType) and item.__module__ == module:
            yield item
            stack.extend(cell.cell_contents for cell in item.__closure__ or ()
                         if _filled(cell))
            stack.extend(item.__globals__[name] for name in _names(item.__code__)
                         if name in item.__globals__)


def _names(code: types.CodeType) -> Iterator[str]:
    for c in _codes(code):
        yield from c.co_names


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True
