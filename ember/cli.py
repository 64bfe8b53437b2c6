"""The ``ember`` command: ``ember --version`` and ``ember status`` (this node's resources).

Cluster commands (``ember start --head``, ``ember stop``) arrive with multi-node support.
"""

from __future__ import annotations

import argparse
import os
import sys


def status() -> int:
    """Print this node's CPUs, memory and GPUs (found through NVML)."""
    from ember.dynamic.resources import detect_memory
    from ember.gpu.devices import list_gpus
    print(f"CPUs: {os.cpu_count()}")
    print(f"memory: {detect_memory() / 2**30:.1f} GiB")
    gpus = list_gpus()
    print(f"GPUs: {len(gpus)}")
    for gpu in gpus:
        print(f"  [{gpu.index}] {gpu.name}  {gpu.memory_used / 2**30:.1f} / "
              f"{gpu.memory_total / 2**30:.1f} GiB used  {gpu.uuid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command."""
    from ember import __version__
    parser = argparse.ArgumentParser(prog="ember", description="ember command line")
    parser.add_argument("--version", action="version", version=f"ember {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("status", help="show this node's CPUs, memory and GPUs")
    args = parser.parse_args(argv)
    if args.command == "status":
        return status()
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
