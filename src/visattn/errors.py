"""Errors that the ``visattn`` command reports as one line instead of a traceback.

Library code raises ``ValueError``/``TypeError`` for bad arguments and ``OSError`` for
files it cannot read or write; the CLI prints those as ``visattn <command>: error: ...``
with exit code 2. The classes here cover the few cases that are neither: a run folder
held by another process, and a training run that stopped because its loss diverged.
"""

from __future__ import annotations

__all__ = ["VisattnError", "RunFolderLocked", "NonFiniteLoss", "TrainingDiverged", "PeerLost"]


class VisattnError(Exception):
    """Base class: an expected failure with a message for the user. ``exit_code`` is the CLI's exit status."""

    exit_code = 2


class RunFolderLocked(VisattnError):
    """Another process holds the lock of a run folder (two ``visattn train`` on one ``--output``)."""


class NonFiniteLoss(VisattnError):
    """The training loss became NaN or infinite; the run stopped before the optimizer step."""

    exit_code = 1


class TrainingDiverged(VisattnError):
    """A GAN run stopped because the discriminator won for good (G's loss stayed above a bound)."""

    exit_code = 1


class PeerLost(VisattnError):
    """Under ``torchrun``: a collective timed out or failed because a peer process stopped."""

    exit_code = 1
