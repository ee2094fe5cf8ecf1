"""The ``visattn`` command.

Sub-commands live in their own modules; each exposes ``add_parser(subparsers)`` that
registers an ``argparse`` sub-parser whose ``func`` default runs it. To add a command,
append its module to ``_COMMAND_MODULES``.

Errors: option values are checked by argparse type functions (argparse's own one-line
error, exit 2). A command that raises ``ValueError``, ``TypeError``, ``OSError`` or a
:class:`visattn.errors.VisattnError` ends with one line ``visattn <command>: error: <message>``
on stderr and exit code 2 (``VisattnError.exit_code`` for the latter); Ctrl-C ends with
exit code 130; output into a closed pipe (``visattn list | head``) ends quietly with 141. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from visattn.errors import VisattnError

__all__ = ["main", "build_parser", "run_command", "error_message", "silence_stdout"]

_COMMAND_MODULES = [
    "visattn.commands.registry_cmds",  # list, info
    "visattn.commands.bench_cmd",  # bench
    "visattn.commands.viz_cmd",  # viz
    "visattn.commands.train_cmd",  # train
    "visattn.commands.compare_cmd",  # compare
    "visattn.commands.predict_cmd",  # predict
    "visattn.commands.convert_cmd",  # convert (published weights)
    "visattn.commands.sample_cmd",  # sample
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


def error_message(e: BaseException) -> str:
    """One line for the user: an ``OSError`` as "<what went wrong>: '<file>'", others as their text."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        msg = f"{e.strerror}: {str(e.filename)!r}"
        if e.filename2 is not None:
            msg += f" -> {str(e.filename2)!r}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())  # one line


def silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null once the reader of stdout has gone away, so that
    Python's flush at exit raises no second ``BrokenPipeError``."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass


def run_command(name: str, func: Callable[[Any], Any], args: Any) -> int:
    """Run ``func(args)`` for ``visattn <name>``, turning user-facing errors into one line + exit code."""
    try:
        rc = func(args)
    except VisattnError as e:
        print(f"visattn {name}: error: {error_message(e)}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `visattn list | head`: the reader is gone; nothing to report
        silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports a command ended by a closed pipe
    except (ValueError, TypeError, OSError) as e:
        print(f"visattn {name}: error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"visattn {name}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.command, args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
