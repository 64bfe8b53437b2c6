"""Render result rows: JSON lines, and a table with an ember-vs-ray ratio column."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

# Units where lower is better; every other unit is a rate or an efficiency: higher is better.
LOWER_IS_BETTER = {"us", "ms", "s", "%core", "bytes"}
# Reference rows have no runtime in them: no ratio.
REFERENCE_ROWS = {"numpy_copy_100mb", "torch_allreduce_100mb", "bare_processes_parallel_cpu",
                  "torch_gloo_p2p_100mb", "torch_p2p_100mb_nccl"}


def json_lines(rows: Iterable[dict[str, Any]]) -> str:
    """One compact JSON object per row, newline separated."""
    return "\n".join(json.dumps(row, sort_keys=False) for row in rows)


def ratio(ember: dict[str, Any] | None, ray: dict[str, Any] | None) -> float | None:
    """ember vs ray, oriented so that >1 means ember is better; None if either value is missing."""
    if not ember or not ray or not ember.get("value") or not ray.get("value"):
        return None
    if ember["unit"] in LOWER_IS_BETTER:
        return ray["value"] / ember["value"]
    return ember["value"] / ray["value"]


def _fmt(value: Any) -> str:
    """A number with 3-4 significant digits, or '-'."""
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pcts(row: dict[str, Any] | None) -> str:
    """'p50 / p99' µs of a latency row, or ''."""
    if not row or row.get("p50_us") is None:
        return ""
    return f"{_fmt(row['p50_us'])} / {_fmt(row['p99_us'])}"


def _remark(row: dict[str, Any] | None) -> str:
    """The row's error or note, shortened for the table."""
    if not row:
        return ""
    text = row.get("error") or row.get("note") or ""
    return text if len(text) <= 70 else text[:67] + "..."


def _grid(header: Sequence[str], body: list[list[str]]) -> str:
    """A plain-text table with aligned columns."""
    widths = [max(len(r[i]) for r in [list(header), *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def table(rows: Sequence[dict[str, Any]], runtimes: Sequence[str]) -> str:
    """The human table: one line per row name, one value column per runtime, ratio if both."""
    by_key = {(r["name"], r["runtime"]): r for r in rows}
    names = list(dict.fromkeys(r["name"] for r in rows))
    units: dict[str, str] = {}
    for r in rows:  # an error row has no unit; take it from a row that has one
        if r["unit"] or r["name"] not in units:
            units[r["name"]] = r["unit"]
    header = ["name", "unit"]
    for rt in runtimes:
        header += [rt, f"{rt} p50/p99 us"]
    compare = "ember" in runtimes and "ray" in runtimes
    if compare:
        header.append("ember vs ray (>1 = ember better)")
    header.append("notes")
    body = []
    for name in names:
        cells = [name, units[name]]
        for rt in runtimes:
            row = by_key.get((name, rt))
            cells += [_fmt(row.get("value")) if row else "-", _pcts(row)]
        if compare:
            r = ratio(by_key.get((name, "ember")), by_key.get((name, "ray")))
            cells.append("(reference)" if name in REFERENCE_ROWS
                         else f"{r:.2f}x" if r is not None else "-")
        remarks = {rt: _remark(by_key.get((name, rt))) for rt in runtimes}
        if len(set(remarks.values())) == 1:  # the same note (or none) everywhere: say it once
            cells.append(next(iter(remarks.values())))
        else:
            cells.append("; ".join(f"{rt}: {text}" for rt, text in remarks.items() if text))
        body.append(cells)
    return _grid(header, body)
