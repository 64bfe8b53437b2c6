"""A/B runs on a noisy machine: `python -m benchmarks --only ROWS` from each tree in turn.

    python -m benchmarks.ab --rounds 12 --only core_tasks_async,dyn_actor_echo_small \
        --json-out results.jsonl TREE_A TREE_B [TREE_C TREE_D ...]

Each round runs every tree once (the order reversed every other round), so slow minutes of the
machine fall on all of them alike. Prints each tree's median per row, then for each pair of
trees given next to each other (A B, C D, ...) the per-round ratios A/B, sorted, and their
median. A tree is a folder holding ``ember`` and ``benchmarks``: run from there, the benchmark
imports that folder's ember, and so do the processes it starts (PYTHONPATH, process.spawn).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys


def run_once(tree: str, rows: list[str]) -> dict[str, float]:
    """One benchmark run from ``tree``: row name -> value (NaN for a row that failed)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--only", ",".join(rows)],
                         cwd=tree, capture_output=True, text=True).stdout
    values = dict.fromkeys(rows, math.nan)
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if row["name"] in values and row["value"] is not None:
                values[row["name"]] = row["value"]
    return values


def main() -> None:
    """Alternate the trees, then print medians and pairwise ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default="core_tasks_async,dyn_actor_echo_small")
    parser.add_argument("--json-out", help="append every value as a JSON line here")
    args = parser.parse_args()
    rows = args.only.split(",")
    values: dict[str, dict[str, list[float]]] = {t: {r: [] for r in rows} for t in args.trees}
    log = open(args.json_out, "a") if args.json_out else None
    for i in range(args.rounds):
        for tree in args.trees if i % 2 == 0 else args.trees[::-1]:
            for row, value in run_once(tree, rows).items():
                values[tree][row].append(value)
                if log is not None:
                    log.write(json.dumps({"tree": tree, "round": i, "name": row,
                                          "value": value}) + "\n")
                    log.flush()
        print(f"round {i}: " + "; ".join(
            f"{os.path.basename(t)} " + " ".join(f"{values[t][r][-1]:g}" for r in rows)
            for t in args.trees), file=sys.stderr, flush=True)
    for tree in args.trees:
        print(os.path.basename(tree), {r: round(statistics.median(values[tree][r]), 1)
                                       for r in rows})
    for a, b in zip(args.trees[::2], args.trees[1::2]):
        for row in rows:
            ratios = sorted(x / y for x, y in zip(values[a][row], values[b][row]))
            print(f"{row} {os.path.basename(a)}/{os.path.basename(b)}: median "
                  f"{statistics.median(ratios):.3f}, rounds {[round(r, 3) for r in ratios]}")


if __name__ == "__main__":
    main()
