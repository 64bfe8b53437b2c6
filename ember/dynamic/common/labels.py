"""Node labels and label selectors (Ray's ``label_selector`` and ``fallback_strategy`` options).

A selector maps a label key to a condition on its value: ``"v"`` (equals), ``"!v"`` (differs or
is absent), ``"in(a,b)"`` (one of), ``"!in(a,b)"`` (none of). Keys and values follow the
Kubernetes label syntax, as in Ray. Every node carries ``ray.io/node-id``; ``ember.init(labels=)``
adds the user's own (keys under ``ray.io/`` are reserved).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable

RESERVED_PREFIX = "ray.io/"
NODE_ID_LABEL = "ray.io/node-id"
_NAME = r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?"
_KEY = re.compile(rf"^({_NAME}(\.{_NAME})*/)?{_NAME}$")
_CONDITION = re.compile(rf"^(!?)(?:in\(({_NAME}(?:, ?{_NAME})*)\)|({_NAME}))$")


def validate_labels(labels: Any) -> dict[str, str]:
    """Check node labels a user gives ``ember.init``; return them as a dict."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise TypeError(f"labels must be a dict of str to str, not {type(labels).__name__}")
    for key, value in labels.items():
        _check_key(key, "node label")
        if key.startswith(RESERVED_PREFIX):
            raise ValueError(f"node label key {key!r}: the prefix {RESERVED_PREFIX!r} is "
                             f"reserved for labels ember sets itself")
        if not isinstance(value, str) or (value and not re.fullmatch(_NAME, value)):
            raise ValueError(f"node label {key!r} has an invalid value {value!r}: at most 63 "
                             f"letters, digits, '-', '_' or '.', starting and ending "
                             f"alphanumeric")
    return dict(labels)


def validate_selector(selector: Any, option: str = "label_selector") -> dict[str, str] | None:
    """Check a label selector; raise ValueError/TypeError naming what is wrong."""
    if selector is None:
        return None
    if not isinstance(selector, dict):
        raise TypeError(f"{option} must be a dict of label key to condition, not "
                        f"{type(selector).__name__}")
    for key, condition in selector.items():
        _check_key(key, option)
        if not isinstance(condition, str) or (condition and not _CONDITION.match(condition)):
            raise ValueError(f"{option}[{key!r}] = {condition!r} is not a condition: use "
                             f"'value', '!value', 'in(a,b)' or '!in(a,b)'")
    return dict(selector)


def validate_fallback(strategy: Any) -> list[dict] | None:
    """Check a ``fallback_strategy``: a list of ``{"label_selector": {...}}`` dicts."""
    if strategy is None:
        return None
    if not isinstance(strategy, list):
        raise TypeError(f"fallback_strategy must be a list of dicts, not "
                        f"{type(strategy).__name__}")
    for entry in strategy:
        if not isinstance(entry, dict) or not entry:
            raise ValueError("each fallback_strategy entry must be a non-empty dict such as "
                             "{'label_selector': {...}}")
        unknown = set(entry) - {"label_selector"}
        if unknown:
            raise ValueError(f"fallback_strategy supports only 'label_selector', not "
                             f"{sorted(unknown)}")
        validate_selector(entry.get("label_selector"), "fallback_strategy label_selector")
    return list(strategy)


def matches(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """Whether a node with ``labels`` satisfies every condition of ``selector``."""
    for key, condition in (selector or {}).items():
        match = _CONDITION.match(condition) if condition else None
        negate = bool(match and match.group(1))
        allowed = ({v.strip() for v in match.group(2).split(",")} if match and match.group(2)
                   else {match.group(5) if match else ""})
        if (labels.get(key) in allowed) == negate:
            return False
    return True


def node_accepts(selector: dict | None, fallback: list[dict] | None,
                 labels: dict[str, str]) -> bool:
    """Whether a node with ``labels`` may run work with this selector or one of its fallbacks."""
    if matches(selector, labels):
        return True
    return any(matches(entry.get("label_selector"), labels) for entry in fallback or ())


def _check_key(key: Any, option: str) -> None:
    if not isinstance(key, str) or len(key) > 317 or not _KEY.match(key):
        raise ValueError(f"{option} key {key!r} is not a valid label key (an optional "
                         f"DNS-subdomain prefix and '/', then a name of at most 63 letters, "
                         f"digits, '-', '_' or '.')")


NODE_RESOURCE = "node:{}"   # a cluster node's own resource (1.0), as Ray's "node:<ip>"
PIN = 0.001                # how much of it one task or actor asks for


def node_constraint(selector: dict | None, fallback: list[dict] | None,
                    live_nodes: Callable[[], list[tuple[str, dict[str, str]]]]
                    ) -> dict[str, float] | None:
    """Resources that keep work with ``selector`` on a node whose labels match: none needed
    (``{}``) without a selector or on a lone matching node; ``{"node:<id>": PIN}`` for the
    chosen node of a cluster (this node first, then the others; the selector first, then each
    fallback in order, as Ray tries them); None where no node matches. ``live_nodes`` gives the
    cluster's live (node id, labels), asked only when there is a selector."""
    if not selector and not fallback:
        return {}
    nodes = live_nodes()
    for wanted in (selector, *(entry.get("label_selector") for entry in fallback or ())):
        for node_id, labels in nodes:
            if matches(wanted, labels):
                return {} if len(nodes) == 1 else {NODE_RESOURCE.format(node_id): PIN}
    return None


def warn_infeasible(what: str, selector: dict | None) -> None:
    """Say once per call site that ``what`` waits for a node that matches ``selector``."""
    warnings.warn(f"{what} stays pending: no node has labels matching label_selector="
                  f"{selector} or its fallback_strategy (as in Ray, it waits for such a node)",
                  stacklevel=3)
