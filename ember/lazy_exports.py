"""A package's public names, each loaded from its module on first use (Note [lazy exports]).

Note [lazy exports]
~~~~~~~~~~~~~~~~~~~
``ember.channels``, ``ember.gpu``, ``ember.dag`` and ``ember.engine`` import none of their
submodules in ``__init__``. An
``__init__`` that imports its submodules closes an import cycle with every submodule that is
imported directly (``from ember.channels.shared_memory import ...``) or that imports a sibling
through the package, and two threads importing such a pair at once get a partially initialized
module: Python's import locks break the deadlock by handing one thread the half-run module
(``ImportError: cannot import name ... from partially initialized module``). A worker does that
when one call unpickles a graph's loop while another unpickles a ``TcpChannel``; a stress test
of two threads importing ``ember.channels.tcp`` and ``ember.engine.channel_setup`` failed 4
times in 30. Lazy names also keep torch out of processes that never touch a tensor, and the
driver's side of the engine (asyncio, thread pools) out of an actor that only runs an executor
loop.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: the first loads each name of
    ``exports`` (name -> module) on first use, or the submodule of that name
    (``ember.dag.collective``), and keeps it in the package's ``namespace``."""
    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}"):
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))
    return __getattr__, __dir__
