"""Draw a compiled graph as Graphviz dot: one cluster per participant, one edge per channel use."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from ember.engine.plan import DRIVER

_STYLE = {True: 'color="#1f77b4"', False: 'color="#2ca02c", style=dashed'}   # between processes?


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(dag: Any) -> str:
    """Return the dot text of compiled graph ``dag``."""
    plan = dag.plan
    graph = plan.graph
    lines = [f"digraph {_quote('compiled graph ' + dag._graph_id)} {{",
             "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    clusters: dict[str, list[str]] = {p: [] for p in plan.participants}
    for pos, node in enumerate(graph.nodes):
        host = plan.hosts[pos] or DRIVER   # input attributes are drawn beside the input
        clusters[host].append(f"    n{pos} [label={_quote(node.label)}];")
    clusters[DRIVER].append('    output [label="output", shape=oval];')
    for i, participant in enumerate(plan.participants):
        proc = dag._health.actor_procs.get(participant)
        if participant in plan.actors:
            title = f"actor {participant}" + (f" (pid {proc[1]})" if proc else "")
        else:
            title = participant
        lines.append(f"  subgraph cluster_{i} {{")
        lines.append(f"    label={_quote(title)};")
        lines.extend(clusters[participant])
        lines.append("  }")
    for pos in range(len(graph.nodes)):
        for up in plan.deps[pos]:
            lines.append(_edge(plan, up, pos, f"n{pos}"))
    for out in dict.fromkeys(graph.outputs):
        lines.append(_edge(plan, out, None, "output"))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _edge(plan: Any, up: int, pos: int | None, target: str) -> str:
    """The edge carrying node ``up``'s value to node ``pos`` (None: the driver's output)."""
    host = plan.hosts[up]
    if host is None:  # an input attribute, picked out of the input where it is read
        return f"  n{up} -> {target};"
    if pos is not None and plan.hosts[pos] == host:
        return f"  n{up} -> {target} [label=\"in-process\", {_STYLE[False]}];"
    channel = plan.channel_of(up)
    edge = plan.tensor_edges.get(channel.id)
    what = "shm" if edge is None else "shm + " + "/".join(dict.fromkeys(edge.transports))
    return f"  n{up} -> {target} [label=\"c{channel.id} {what}\", {_STYLE[True]}];"


def render(dag: Any, filename: str | None = None, format: str | None = None,
           view: bool = False) -> str:
    """Return the dot text; write ``filename.dot`` and, where Graphviz's ``dot`` is installed,
    ``filename.<format>`` (png, svg, pdf). ``view`` opens the picture with xdg-open."""
    text = to_dot(dag)
    if filename is None:
        if format is None:
            return text
        filename = f"compiled_graph_{dag._graph_id}"
    base = filename[:-4] if filename.endswith(".dot") else filename
    with open(base + ".dot", "w") as f:
        f.write(text)
    if format is not None:
        dot = shutil.which("dot")
        if dot is None:
            raise RuntimeError(f"wrote {base}.dot, but rendering {format} needs Graphviz's `dot` "
                               f"program (apt-get install graphviz)")
        subprocess.run([dot, f"-T{format}", base + ".dot", "-o", f"{base}.{format}"],
                       check=True, capture_output=True)
        if view and shutil.which("xdg-open"):
            subprocess.Popen(["xdg-open", f"{base}.{format}"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    return text

