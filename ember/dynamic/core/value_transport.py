"""Hooks through which a higher layer keeps some values out of the object store.

Note [value transports]
~~~~~~~~~~~~~~~~~~~~~~~
An actor method marked ``@ember.method(tensor_transport=name)`` (or ``ember.put(value,
_tensor_transport=name)``) keeps the tensors of its value in its own process; only a small *stub*
(what a consumer needs to fetch them) travels as the object's value, inline, the normal way. The
dynamic layer knows nothing of tensors or communicators: it offers three hooks, and a higher
layer (``ember.gpu.objects``) registers itself when imported.

* ``export(name, value, oid, owner)`` -- the worker calls it on a marked method's return value
  (``put`` on the put value) before serializing it; the transport keeps what it wants and
  returns the stub that is stored instead. Names without a registered transport first run the
  *providers* (callables the package registers at import, which import the transport's module),
  so a worker process needs no import by module name here.
* ``resolve(value)`` -- called on every value the runtime deserializes for a consumer (a task's
  top-level ref arguments, ``get``): a value whose exact type was registered as a stub type is
  replaced by what its resolver fetches. One dict lookup for any other value.
* ``watch_free(core, oid, owner, callback)`` -- the producer asks the object's owner to tell it
  (message ``value_freed``) when the owner frees the object, that is when the last reference
  anywhere is gone (Note [ownership] in core_worker), and then drops the tensors it kept.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from ember.exceptions import TensorTransportError

OBJECT_STORE = "object_store"


class ValueTransport(Protocol):
    """What a higher layer registers under one or more transport names."""

    def export(self, name: str, value: Any, oid: str, owner: str) -> Any:
        """Keep what travels by this transport; return the stub to store as the value."""


_lock = threading.Lock()
_transports: dict[str, ValueTransport] = {}
_resolvers: dict[type, Callable[[Any], Any]] = {}
_providers: list[Callable[[], None]] = []
_free_callbacks: dict[str, Callable[[str], None]] = {}
_listening: "weakref.WeakSet[Any]" = weakref.WeakSet()   # cores with the value_freed handler


def register(names: tuple[str, ...], transport: ValueTransport, stub_type: type,
             resolver: Callable[[Any], Any]) -> None:
    """Serve the transport ``names`` with ``transport``; resolve values of ``stub_type``."""
    with _lock:
        for name in names:
            _transports[name] = transport
        _resolvers[stub_type] = resolver


def add_provider(provider: Callable[[], None]) -> None:
    """Run ``provider`` (once) the first time an unregistered transport name is asked for."""
    _providers.append(provider)


def export(name: str | None, value: Any, oid: str, owner: str) -> Any:
    """The value to serialize for an object made with transport ``name`` (None: ``value``)."""
    if name is None or name == OBJECT_STORE:
        return value
    transport = _transports.get(name)
    if transport is None:
        while _providers and name not in _transports:
            _providers.pop(0)()
        transport = _transports.get(name)
        if transport is None:
            raise TensorTransportError(f"no tensor transport is named {name!r}; use one of "
                                       f"{sorted(_transports) + [OBJECT_STORE]}")
    return transport.export(name, value, oid, owner)


def resolve(value: Any) -> Any:
    """``value``, or the value its stub stands for (Note [value transports])."""
    if _resolvers:
        resolver = _resolvers.get(type(value))
        if resolver is not None:
            return resolver(value)
    return value


def watch_free(core: Any, oid: str, owner: str, callback: Callable[[str], None]) -> None:
    """Call ``callback(oid)`` in this process once the owner of ``oid`` has freed it."""
    with _lock:
        _free_callbacks[oid] = callback
        if core not in _listening:
            _listening.add(core)
            core.endpoint.on("value_freed", _on_value_freed)
    core.endpoint.send(owner, "watch_free", oid, core.address)


def _on_value_freed(oid: str) -> None:
    with _lock:
        callback = _free_callbacks.pop(oid, None)
    if callback is not None:
        callback(oid)


def transport_of(fn: Any) -> str | None:
    """The ``tensor_transport`` that ``@ember.method`` gave ``fn`` (None if none)."""
    return getattr(fn, TRANSPORT_ATTR, None)


TRANSPORT_ATTR = "__ember_tensor_transport__"
