"""``argparse`` type functions: bad option values fail in argparse's own error path
(``visattn <command>: error: argument --lr: ...``, exit 2) before any work starts."""

from __future__ import annotations

import argparse
import math

__all__ = [
    "positive_int",
    "nonneg_int",
    "positive_float",
    "nonneg_float",
    "fraction",
    "int_range",
    "float_range",
    "folder_name",
    "device_name",
    "add_model_option",
    "given_model",
    "model_option",
]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _checked(convert, ok, expected: str):
    """A type function: ``convert(text)``, then refuse values for which ``ok`` is false."""

    def parse(text: str):
        v = convert(text)
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v

    parse.__name__ = expected
    return parse


positive_int = _checked(_int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _checked(_int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(_float, lambda v: v > 0, "a finite number > 0")
nonneg_float = _checked(_float, lambda v: v >= 0, "a finite number >= 0")
fraction = _checked(_float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def int_range(lo: int, hi: int, why: str = ""):
    """An integer in ``lo..hi`` (``why`` explains the upper bound in the message)."""
    return _checked(_int, lambda v: lo <= v <= hi, f"an integer in {lo}..{hi}{why}")


def float_range(lo: float, hi: float, expected: str):
    """A finite number in ``lo..hi``; ``expected`` says what it is ("a number of seconds in 1..60")."""
    return _checked(_float, lambda v: lo <= v <= hi, expected)


def folder_name(text: str) -> str:
    """A non-empty path (an empty one would silently mean "write nothing")."""
    if not text:
        raise argparse.ArgumentTypeError(f"expected a folder name, got {text!r}")
    return text


def device_name(text: str) -> str:
    """A torch device string that names an available device: ``cpu``, ``cuda``, ``cuda:1``, ``mps``..."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected a device such as 'cpu', 'cuda' or 'cuda:0', got {text!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} was given but CUDA is not available here (use 'cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text!r} was given but MPS is not available here (use 'cpu')")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected 'cpu', 'cuda[:i]' or 'mps', got {text!r}")
    return text


def add_model_option(p: argparse.ArgumentParser, what: str, positional_help: str) -> None:
    """``--model NAME`` (the spelling every sub-command shares) and, for compatibility, the older
    positional ``NAME``; :func:`model_option` reconciles the two."""
    p.add_argument("model_positional", nargs="?", default=None, metavar="MODEL", help=positional_help)
    p.add_argument("--model", default=None, metavar="NAME", help=what)


def given_model(args: argparse.Namespace) -> str | None:
    """The name given as ``--model NAME`` or positionally (None: neither); two different names are an error."""
    pos, opt = args.model_positional, args.model
    if pos is not None and opt is not None and pos != opt:
        raise ValueError(f"two different models given: {pos!r} (positional) and --model {opt!r}; give one")
    return opt if opt is not None else pos


def model_option(args: argparse.Namespace) -> str:
    """The model named with ``--model NAME`` or positionally; naming none is an error."""
    name = given_model(args)
    if name is None:
        raise ValueError("no model given: name one with --model NAME (see `visattn list`)")
    return name
