"""The benchmark CLI: runs each runtime's workloads in its own subprocess, prints JSON lines and a table."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report
from benchmarks.harness import REGISTRY, Config, Entry, Row
from benchmarks.procstat import RUN_MARKER

REPO_ROOT = Path(__file__).resolve().parent.parent

# Note [ray channel buffer]: Ray 2.60 compiled-graph channels start at 1e6 bytes, so a 1 MiB value
# makes them grow; after such a resize teardown() never returns (the actors' loops keep spinning).
# The Ray subprocess therefore starts its channels at 4 MiB, which no row's value outgrows.
RAY_CHANNEL_BYTES = 4 * 1024 * 1024

# Note [ray semaphores]: Ray 2.60's compiled-graph channels make two named POSIX semaphores each
# (/dev/shm/sem.hdr<pid>-<n>, sem.obj<pid>-<n>) and leave them behind after teardown and
# shutdown: ~400 files per worker per run. The Ray subprocess's new ones are removed after it.
RAY_SEMAPHORES = ("sem.hdr", "sem.obj")
SHM = Path("/dev/shm")


def _ray_semaphores() -> set[Path]:
    if not SHM.is_dir():
        return set()
    return {p for p in SHM.iterdir() if p.name.startswith(RAY_SEMAPHORES)}


@contextlib.contextmanager
def removing_new_ray_semaphores() -> Iterator[None]:
    """Remove the semaphore files Ray leaves in /dev/shm during the block (Note [ray semaphores])."""
    before = _ray_semaphores()
    try:
        yield
    finally:
        for path in _ray_semaphores() - before:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def load_workloads() -> list[Entry]:
    """Import the workload modules (which register themselves) and return the registry in order."""
    for module in ("workloads_core", "workloads_compiled", "workloads_gpu", "workloads_xnode",
                   "workloads_cluster"):
        importlib.import_module(f"benchmarks.{module}")
    return REGISTRY


def select(entries: list[Entry], only: str | None) -> list[Entry]:
    """Entries named in --only (by workload name or by any row name it emits); all if None."""
    if not only:
        return entries
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {n for e in entries for n in (e.name, *e.rows)}
    if unknown := wanted - known:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; see --list")
    return [e for e in entries if wanted & {e.name, *e.rows}]


# --- child: one runtime, in this process ------------------------------------------------------


class WorkloadTimeout(TimeoutError):
    """A workload ran past --timeout."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise WorkloadTimeout in the main thread if the block runs longer than seconds."""

    def expire(signum: int, frame: Any) -> None:
        raise WorkloadTimeout(f"timed out after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_entry(rt: Any, entry: Entry, cfg: Config, timeout: float) -> list[Row]:
    """Run one workload; turn an exception or a timeout into error rows."""
    start = time.perf_counter()
    print(f"[{rt.__name__}] {entry.name} ...", file=sys.stderr, flush=True)
    try:
        with deadline(timeout):
            rows = entry.fn(rt, cfg)
    except Exception as exc:  # noqa: BLE001 - a failed workload must not stop the others
        message = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")[:400]
        rows = [Row(name, "", None, error=message) for name in entry.rows]
    print(f"[{rt.__name__}] {entry.name} done in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)
    for row in rows:
        row.runtime = rt.__name__
    return rows


def child_main(args: argparse.Namespace) -> int:
    """Run the selected workloads on one runtime, appending each row to args.rows_file."""
    os.environ.setdefault(RUN_MARKER, uuid.uuid4().hex)  # Note [finding the runtime's processes]
    rt = importlib.import_module(args.runtime)
    cfg = Config(quick=args.quick)
    entries = select(load_workloads(), args.only)
    with open(args.rows_file, "a") as out:

        def emit(rows: list[Row]) -> None:
            for row in rows:
                out.write(json.dumps(row.to_json()) + "\n")
            out.flush()

        for entry in (e for e in entries if not e.needs_init):
            emit(run_entry(rt, entry, cfg, args.timeout))
        groups: dict[tuple, list[Entry]] = {}
        for entry in (e for e in entries if e.needs_init):
            groups.setdefault(entry.init, []).append(entry)
        started = [run_session(rt, dict(init), group, cfg, args.timeout, emit)
                   for init, group in groups.items()]
    return 0 if all(started) else 1


def run_session(rt: Any, init: dict[str, Any], entries: list[Entry], cfg: Config,
                timeout: float, emit: Callable[[list[Row]], None]) -> bool:
    """rt.init(**init), run entries, rt.shutdown(); False (with error rows) if init failed."""
    try:
        with deadline(timeout):
            rt.init(**init)
    except Exception as exc:  # noqa: BLE001
        emit([Row(n, "", None, runtime=rt.__name__, error=f"init failed: {exc!r}"[:400])
              for e in entries for n in e.rows])
        return False
    for entry in entries:
        emit(run_entry(rt, entry, cfg, timeout))
    with contextlib.suppress(Exception), deadline(60):
        rt.shutdown()
    return True


# --- parent: one subprocess per runtime -------------------------------------------------------


def run_runtime(runtime: str, args: argparse.Namespace, n_entries: int) -> list[dict[str, Any]]:
    """Run the selected workloads on one runtime in a fresh subprocess; return its rows."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", prefix=f"bench-{runtime}-") as rows:
        cmd = [sys.executable, "-m", "benchmarks", "--child", "--runtime", runtime,
               "--rows-file", rows.name, "--timeout", str(args.timeout)]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--only", args.only] if args.only else []
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env[RUN_MARKER] = uuid.uuid4().hex
        if runtime == "ray":  # Note [ray channel buffer]
            env.setdefault("RAY_CGRAPH_buffer_size_bytes", str(RAY_CHANNEL_BYTES))
        # The child's own output (progress, runtime logs) goes to our stderr, keeping stdout clean.
        cleanup = removing_new_ray_semaphores() if runtime == "ray" else contextlib.nullcontext()
        try:
            with cleanup:
                proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=sys.stderr,
                                      timeout=args.timeout * (n_entries + 1) + 120)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        result = [json.loads(line) for line in rows.read().splitlines() if line.strip()]
    if rc != 0:
        print(f"[{runtime}] benchmark subprocess exited with {rc}", file=sys.stderr)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="ember benchmarks: JSON lines on stdout, then a table.")
    p.add_argument("--runtime", choices=("ember", "ray"), default="ember",
                   help="runtime to measure (default: ember)")
    p.add_argument("--compare-ray", action="store_true",
                   help="run ember, then ray, each in a fresh subprocess; print ratios")
    p.add_argument("--only", help="comma-separated workload or row names (see --list)")
    p.add_argument("--quick", action="store_true", help="few iterations, for smoke tests")
    p.add_argument("--json-out", help="also write the JSON lines to this file")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds allowed per workload (default: 300)")
    p.add_argument("--list", action="store_true", help="list workloads and their rows, then exit")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows-file", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks` and `python benchmarks/run.py`."""
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    entries = select(load_workloads(), args.only)
    if args.list:
        for entry in entries:
            print(f"{entry.name:24} rows: {', '.join(entry.rows)}")
        return 0
    runtimes = ["ember", "ray"] if args.compare_ray else [args.runtime]
    rows: list[dict[str, Any]] = []
    for runtime in runtimes:
        new = run_runtime(runtime, args, len(entries))
        print(report.json_lines(new), flush=True)
        rows += new
    if args.json_out:
        Path(args.json_out).write_text(report.json_lines(rows) + "\n")
    print()
    print(report.table(rows, runtimes))
    return 0 if rows and not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
