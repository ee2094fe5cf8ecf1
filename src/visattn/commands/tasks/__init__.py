"""The one task table of the CLI: what ``--task`` means for ``visattn train``, ``predict`` and ``compare``.

Each task is a :class:`CliTask` in its own module here (``TASK = CliTask(...)``), listed once in
:data:`_TASK_MODULES`. The commands take their ``--task`` choices, its help, the task's own
option group and the runner from this table; an option of one task given with another is
refused with one line. Library code stays in its layer: a runner only turns the parsed
arguments into a library call and prints the result (``compare --task NAME`` runs the
:mod:`visattn.compare` plug-in of the same name through the one compare).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CliTask", "COMMANDS", "table", "choices", "add_task_argument", "chosen", "with_defaults", "say", "percent"]

#: One module per task; each defines ``TASK``. A new task adds its line here.
_TASK_MODULES = [
    "visattn.commands.tasks.classify",
    "visattn.commands.tasks.segment",
    "visattn.commands.tasks.detect",
    "visattn.commands.tasks.generate",
    "visattn.commands.tasks.points",
    "visattn.commands.tasks.partseg",
]

#: The commands that take ``--task``.
COMMANDS = ("train", "predict", "compare")


@dataclass(frozen=True)
class CliTask:
    """A task's entry in the CLI table.

    Attributes:
        name: ``--task NAME`` (for ``compare``, also the name of its :mod:`visattn.compare` plug-in).
        help: one line saying what the task is (``--task`` help of every command).
        train: runs ``visattn train --task NAME`` from the parsed arguments, returns the exit code.
        train_options: adds the task's own ``train`` options to an argument group; each with
            ``default=None`` (or ``False`` for flags), so that giving one with another task is refused.
        train_defaults: shared ``train`` options it gives another default (``model``, ``data``,
            ``label_smoothing``): used when the option was not typed.
        predict, predict_options: the same for ``visattn predict`` (None: no ``predict --task NAME``).
        compare: ``visattn compare --task NAME`` runs the compare plug-in ``NAME``.
        shares: tasks whose own options this task takes too (``partseg`` takes ``points``' options).
    """

    name: str
    help: str
    train: Callable[[argparse.Namespace], int] | None = None
    train_options: Callable[[Any], None] | None = None
    train_defaults: Mapping[str, Any] = field(default_factory=dict)
    predict: Callable[[argparse.Namespace], int] | None = None
    predict_options: Callable[[Any], None] | None = None
    compare: bool = False
    shares: tuple[str, ...] = ()

    def runs(self, command: str) -> bool:
        return self.compare if command == "compare" else getattr(self, command) is not None

    def options(self, command: str) -> Callable[[Any], None] | None:
        return getattr(self, f"{command}_options", None)

    def defaults(self, command: str) -> Mapping[str, Any]:
        return self.train_defaults if command == "train" else {}


_TABLE: dict[str, CliTask] = {}


def table() -> dict[str, CliTask]:
    """Every task of the CLI by name (the modules of :data:`_TASK_MODULES`, loaded once)."""
    if not _TABLE:
        for mod in _TASK_MODULES:
            t = importlib.import_module(mod).TASK
            _TABLE[t.name] = t
    return _TABLE


def choices(command: str) -> list[str]:
    """The ``--task`` choices of ``command``."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    return [n for n, t in table().items() if t.runs(command)]


class _ClassifyDefault(str):
    """A shared default (``--model``, ``--data``) that was not typed on the command line: a task's
    ``train_defaults`` replace it; a value the user typed is kept (and refused with a clear error
    if the task cannot use it)."""


class _Recorder:
    """An argument group that remembers the actions added to it (the task's own options)."""

    def __init__(self, group):
        self.group, self.actions = group, []

    def add_argument(self, *args, **kwargs):
        action = self.group.add_argument(*args, **kwargs)
        self.actions.append(action)
        return action


def add_task_argument(
    p: argparse.ArgumentParser, command: str, default: str, describe: Callable[[CliTask], str] | None = None
) -> None:
    """``--task`` (choices and help from the table), then each task's own option group.
    ``describe``: the help of one task (default: its ``help``)."""
    tasks = {n: table()[n] for n in choices(command)}
    describe = describe or (lambda t: t.help)
    p.add_argument(
        "--task",
        default=default,
        choices=list(tasks),
        help="; ".join(f"{n}: {describe(t)}" for n, t in tasks.items()) + " (default: %(default)s)",
    )
    own: dict[str, list[tuple[str, str]]] = {}
    for name, t in tasks.items():
        adder = t.options(command)
        if adder is not None:
            rec = _Recorder(p.add_argument_group(f"{name} (--task {name})"))
            adder(rec)
            own[name] = [((a.option_strings or [a.dest])[0], a.dest) for a in rec.actions]
        for dest in t.defaults(command):
            d = p.get_default(dest)
            if isinstance(d, str) and not isinstance(d, _ClassifyDefault):
                p.set_defaults(**{dest: _ClassifyDefault(d)})
    p.set_defaults(_task_options=own)


def chosen(args: argparse.Namespace, command: str) -> CliTask:
    """The table entry of ``args.task``; options of another task given with it are refused."""
    if args.task not in choices(command):
        raise ValueError(f"--task must be one of {choices(command)}, got {args.task!r}")
    for name, opts in getattr(args, "_task_options", {}).items():
        given = [flag for flag, dest in opts if (v := getattr(args, dest, None)) is not None and v is not False]
        if name != args.task and name not in table()[args.task].shares and given:
            raise ValueError(f"{', '.join(given)} belong(s) to --task {name}, not --task {args.task}")
    return table()[args.task]


def with_defaults(args: argparse.Namespace, defaults: Mapping[str, Any]) -> argparse.Namespace:
    """A copy of ``args`` where each option of ``defaults`` that was not typed (None, or a
    :class:`_ClassifyDefault`) takes the task's value."""
    out = argparse.Namespace(**vars(args))
    for dest, value in defaults.items():
        current = getattr(out, dest, None)
        if current is None or isinstance(current, _ClassifyDefault):
            setattr(out, dest, value)
    return out


def percent(v) -> str:
    """A fraction as a percentage for a summary line; a metric with nothing to measure (None, NaN) says so."""
    return "n/a (nothing to measure)" if v is None or v != v else f"{100 * v:.2f}%"


def say(msg: str) -> None:
    """Print the run's summary; a reader that went away (``| head``) does not fail a finished run."""
    import sys

    from visattn.cli import silence_stdout

    try:
        print(msg, flush=True)
    except BrokenPipeError:
        silence_stdout()
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # pragma: no cover - flushed above
        silence_stdout()
