"""The ``batcher`` command: ``demo``, ``tune``, ``serve`` and ``bench``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Each subcommand lives in its own module providing register(subparsers); the modules keep
# their heavy imports inside the commands, so building the parser stays cheap.
_SUBCOMMAND_MODULES = ("batcher._demo", "batcher._tune", "batcher._netcli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batcher", description="Batched OpenVINO inference over precompiled batch sizes."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
