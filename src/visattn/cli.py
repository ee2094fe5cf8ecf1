"""The ``visattn`` command.

Sub-commands live in their own modules; each exposes ``add_parser(subparsers)`` that
registers an ``argparse`` sub-parser whose ``func`` default runs it. To add a command,
append its module to ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser"]

_COMMAND_MODULES = [
    "visattn.commands.registry_cmds",  # list, info
    "visattn.bench.cli",  # bench
    "visattn.commands.viz_cmd",  # viz
    "visattn.commands.train_cmd",  # train
    "visattn.commands.compare_cmd",  # compare
    "visattn.commands.predict_cmd",  # predict
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visattn",
        description="Alternatives to global self-attention for vision: list, inspect, benchmark, train, compare.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _COMMAND_MODULES:
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"visattn {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
