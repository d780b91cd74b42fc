"""The ``mai`` command. Thin on purpose: the subcommands live in :mod:`mai.commands`, one module per stage,
each parsing its own flags and calling one library function.

User errors (:class:`mai.errors.MaiError`) become one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mai.commands import MODULES
from mai.errors import MaiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mai", description="Build and own a language model end to end.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in MODULES:
        importlib.import_module(f"mai.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
