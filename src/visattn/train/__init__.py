"""Training: engine, checkpoints, torchrun support. See :mod:`visattn.train.engine`."""

from visattn.train.checkpoint import latest_checkpoint, load_checkpoint, load_weights, save_checkpoint
from visattn.train.engine import TrainConfig, Trainer, TrainResult, lr_factor, plot_curves, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "train",
    "lr_factor",
    "plot_curves",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "load_weights",
]
