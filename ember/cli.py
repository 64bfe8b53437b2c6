"""The ``ember`` command: ``ember --version`` (cluster commands arrive with multi-node support)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command."""
    from ember import __version__
    parser = argparse.ArgumentParser(prog="ember", description="ember command line")
    parser.add_argument("--version", action="version", version=f"ember {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
