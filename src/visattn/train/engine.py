"""The training engine behind ``visattn train`` and ``visattn compare``.

AdamW (no weight decay on biases and norm parameters), linear warm-up then cosine decay
per step, cross-entropy with label smoothing, optional mixed precision (bf16 autocast on
CPU or CUDA; fp16 with a GradScaler on CUDA), optional ``torch.compile``, evaluation
every epoch, metrics as JSON lines and a PNG of the curves.

Exact resume: the sample order of epoch ``e`` is a function of ``(seed, e)``
(:class:`visattn.data.EpochBatches`), augmentation is drawn per example from the same
key, and a checkpoint records the batches already consumed in the running epoch, the
optimizer, scheduler, GradScaler and RNG states. ``resume=True`` restores all of it and
skips the consumed batches, so a run killed at any point and resumed ends with the
weights of an uninterrupted run (bit for bit in ``deterministic`` mode on the same
machine and thread count).

Under ``torchrun`` the model is wrapped in DistributedDataParallel; ``batch_size`` is
per process (global batch = batch_size x processes); metrics are summed over processes;
rank 0 alone writes checkpoints, metrics and plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import numbers
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visattn._io import atomic_path, atomic_write_text
from visattn._strict_json import strict as _strict
from visattn.data import DataBundle, EpochBatches, load_data, normalize
from visattn.data.datasets import MAX_IMAGE_SIZE
from visattn.data.transforms import eval_indices
from visattn.errors import NonFiniteLoss, VisattnError
from visattn.models.info import check_model_size
from visattn.models.io import save_weights
from visattn.registry import create_model, model_entry
from visattn.train import distributed as D
from visattn.train.checkpoint import (
    RunLock,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_tmp,
    save_checkpoint,
)

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train", "lr_factor", "plot_curves", "plot_panels"]

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
#: Bounds of ``dist_timeout`` (seconds): below 1 s the process group cannot even form; timedelta
#: and the backends overflow on absurd values.
DIST_TIMEOUT_RANGE = (1.0, 30 * 86400.0)
# Files that hold a started or finished run's results (metrics.jsonl only when not empty).
_RUN_FILES = ("config.json", "curves.png", "metrics.jsonl", "model.safetensors")
AUGMENT_CHOICES = ("auto", "none", "crop", "crop+flip")
# Options that must match for a resumed run to continue the same run.
_RESUME_KEYS = (
    "model",
    "attention",
    "attn_kwargs",
    "model_kwargs",
    "data",
    "image_size",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "label_smoothing",
    "augment",
    "crop_pad",
    "seed",
    "precise_bn",
    "pretrained",
)


@dataclass
class TrainConfig:
    """Everything a training run depends on (``visattn train --help`` documents each)."""

    model: str = "resnet_tiny"
    attention: str | None = None
    attn_kwargs: dict[str, Any] | None = None
    model_kwargs: dict[str, Any] | None = None
    data: str = "digits"
    image_size: int | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.1
    augment: str = "auto"
    crop_pad: int | None = None
    grad_clip: float | None = None
    amp: str = "auto"
    compile: bool = False
    sync_bn: bool = False
    deterministic: bool = False
    seed: int = 0
    output: str | None = "runs/train"
    resume: bool = False
    overwrite: bool = False
    save_every: int = 0
    keep: int = 2
    checkpoints: bool = True
    device: str = "auto"
    progress: bool = True
    verbose: bool = True
    plot: bool = True
    eval_batch_size: int | None = None
    precise_bn: int = 0
    dist_timeout: float = 600.0
    #: Published or converted weights to start from (fine-tuning; docs/weights.md): a path, a URL,
    #: hf-hub:ORG/REPO[:FILE] or a source name. Images are then normalised with their mean / std.
    pretrained: str | None = None

    def validate(self) -> None:
        for f in dataclasses.fields(self):  # numpy integers work as ints (and stay JSON-able)
            v = getattr(self, f.name)
            if isinstance(v, numbers.Integral) and not isinstance(v, (int, bool)):
                setattr(self, f.name, int(v))
        for name in ("epochs", "batch_size", "keep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("precise_bn", "save_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
        if not 0 <= self.seed < 2**32:  # numpy's seed range (the stratified split); torch takes it too
            raise ValueError(f"seed must be an int in 0..{2**32 - 1}, got {self.seed!r}")
        for name, v, lo in (("eval_batch_size", self.eval_batch_size, 1), ("warmup_steps", self.warmup_steps, 0)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                raise ValueError(f"{name} must be None or an int >= {lo}, got {v!r}")
        if self.image_size is not None and (
            isinstance(self.image_size, bool)
            or not isinstance(self.image_size, int)
            or not 1 <= self.image_size <= MAX_IMAGE_SIZE
        ):
            raise ValueError(
                f"image_size must be None or an int in 1..{MAX_IMAGE_SIZE} (images are held in "
                f"memory), got {self.image_size!r}"
            )
        for name, v, positive in (
            ("lr", self.lr, True),
            ("grad_clip", self.grad_clip, True),
            ("dist_timeout", self.dist_timeout, True),
            ("weight_decay", self.weight_decay, False),
            ("min_lr_ratio", self.min_lr_ratio, False),
        ):
            if name == "grad_clip" and v is None:
                continue
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or (v <= 0 if positive else v < 0)
            ):
                raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")
        if self.min_lr_ratio > 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.augment not in AUGMENT_CHOICES:
            raise ValueError(f"augment must be one of {AUGMENT_CHOICES}, got {self.augment!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precise_bn < 0:
            raise ValueError(f"precise_bn must be >= 0 (batches; 0: off), got {self.precise_bn}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0 (0: once per epoch), got {self.save_every}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.output is not None and (not isinstance(self.output, (str, os.PathLike)) or not os.fspath(self.output)):
            raise ValueError(f"output must be None (write nothing) or a folder name, got {self.output!r}")
        if self.resume and not self.output:
            raise ValueError("resume needs an output directory holding the checkpoints")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other; give one")
        t_lo, t_hi = DIST_TIMEOUT_RANGE
        if not t_lo <= self.dist_timeout <= t_hi:
            raise ValueError(
                f"dist_timeout must be a number of seconds in {t_lo:.0f}..{t_hi:.0f} (30 days), "
                f"got {self.dist_timeout!r}"
            )
        for name in ("attn_kwargs", "model_kwargs"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, dict):
                raise TypeError(f"{name} must be a dict, got {type(v).__name__}")
        if self.pretrained is not None and (not isinstance(self.pretrained, str) or not self.pretrained):
            raise TypeError(f"pretrained must be a weights source (a non-empty str) or None, got {self.pretrained!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a run produced. ``model`` is the trained, unwrapped model (eval mode)."""

    model: nn.Module
    history: list[dict[str, Any]]
    final: dict[str, Any]
    output: str | None
    num_classes: int
    image_size: int
    extra: dict[str, Any] = field(default_factory=dict)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup`` for ``step < warmup``, then cosine from 1 down
    to ``min_ratio`` at ``step = total``.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("--amp fp16 needs CUDA (it relies on a GradScaler); on CPU use --amp bf16 or none")
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def _deterministic(on: bool, device: torch.device):
    if not on:
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    prev_det = torch.backends.cudnn.deterministic
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cudnn.deterministic = prev_det


def plot_panels(
    history: Sequence[dict],
    path: str | os.PathLike,
    panels: Sequence[tuple[str, Sequence[tuple[str, str, float]]]],
    title: str = "",
) -> None:
    """Per-epoch curves as a PNG, one panel per ``(y label, [(record key, legend label, scale)])``
    (a ``matplotlib.figure.Figure``: no pyplot, no backend switch). Missing values are left out."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(4.5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ylabel, curves) in zip(axes, panels):
        for (key, label, scale), marker in zip(curves, ("o-", "s-", "^-", "v-")):
            ax.plot(ep, [math.nan if h.get(key) is None else scale * h[key] for h in history], marker, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if len(curves) > 1:
            ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def plot_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Loss and accuracy per epoch (train and test) as a PNG (see :func:`plot_panels`)."""
    plot_panels(
        history,
        path,
        [
            ("loss", [("train_loss", "train", 1.0), ("test_loss", "test", 1.0)]),
            ("accuracy (%)", [("train_acc", "train", 100.0), ("test_acc", "test", 100.0)]),
        ],
        title,
    )


def _json_line(rec: dict) -> str:
    return json.dumps(_strict(rec), allow_nan=False)


def _empty_file(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == 0


def _remove_run(out: Path) -> None:
    """``overwrite``: remove the previous run's results, log and checkpoint folders; other files stay."""
    for name in (*_RUN_FILES, "train.log"):
        if (out / name).is_file() or (out / name).is_symlink():
            (out / name).unlink()
    root = out / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if re.fullmatch(r"step-\d+", p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
        if (root / "latest.json").is_file():
            (root / "latest.json").unlink()


class Trainer:
    """One training run (see module docstring). Use :func:`train` unless you need hooks.

    A task is a subclass that overrides task hooks, never the loop: ``_setup`` (data),
    ``_build_model``, ``_distribute`` (DDP wrapping), ``_build_optimizer``, ``_batches``,
    ``_train_step`` (one optimizer step, returns the 3 running sums; ``_signed_running`` says
    which may be negative), ``_batch_sums``, ``_train_fields``, ``_eval_fields`` / ``evaluate``,
    ``_complete_record``, ``_epoch_line``, ``_bar_fields``, ``_plot``, ``_run_config`` (options a
    resume must match) and ``_finish``. :class:`~visattn.train.segment.SegTrainer` (one network)
    and :class:`~visattn.train.generate.GanTrainer` (G, D, an EMA of G, two learning rates) are
    the examples.

    ``callbacks`` are objects with any of ``after_backward(trainer)``,
    ``after_step(trainer)``, ``after_checkpoint(trainer, folder)``; during those calls
    ``trainer.model`` (unwrapped), ``trainer.epoch``, ``trainer.batch_in_epoch`` (batches
    done in the running epoch) and ``trainer.step`` (optimizer steps done) are current.

    Rank 0 appends every message it logs to ``DIR/train.log`` as well as printing it; a
    standard output that goes away (``visattn train ... | head``) stops the printing, not the run.
    """

    #: The registry task of the models this trainer trains (a task plug-in sets its own).
    task = "classify"

    def __init__(
        self, cfg: TrainConfig, data: DataBundle | None = None, callbacks: Sequence[Any] = (), bar_position: int = 0
    ):
        cfg.validate()
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.bar_position = bar_position
        self.data = data
        self.dist = D.DistContext()
        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.out: Path | None = None
        self._stdout_gone = False

    # -- small helpers -------------------------------------------------------
    def _call(self, event: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, event, None)
            if fn is not None:
                fn(self, *args)

    def _log(self, msg: str) -> None:
        """Append ``msg`` to ``DIR/train.log`` (rank 0) and print it (``verbose``) while stdout is open."""
        if not self.dist.is_main:
            return
        if self.out is not None and self.out.is_dir():
            path = self.out / "train.log"
            try:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(msg + "\n")
            except OSError as e:
                raise OSError(e.errno, f"cannot append to the run log ({e.strerror or e})", str(path)) from e
        if self.cfg.verbose and not self._stdout_gone:
            from tqdm.auto import tqdm

            try:
                tqdm.write(msg)
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):  # the reader went away (or stdout was closed): keep training
                self._stdout_gone = True

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- task hooks (a subclass such as visattn.train.segment.SegTrainer overrides these) --------
    def _batch_sums(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[loss x count, correct, count] of one training batch, float64."""
        n = y.numel()
        return torch.tensor([float(loss.detach()) * n, float((logits.argmax(1) == y).sum()), n], dtype=torch.float64)

    def _complete_record(self, rec: dict[str, Any]) -> None:
        """Add task-specific figures to an epoch's metrics record, in place, before it is logged."""

    #: Which of the 3 running sums may be negative (a checkpoint's are checked against it).
    _signed_running: tuple[bool, bool, bool] = (False, False, False)
    #: Leave out an epoch's last, smaller batch.
    _drop_last: bool = False

    def _build_model(self, b: DataBundle) -> nn.Module:
        """The model to train (seeded by the caller), before it moves to the device."""
        cfg = self.cfg
        return create_model(
            cfg.model,
            num_classes=b.num_classes,
            attention=cfg.attention,
            attn_kwargs=cfg.attn_kwargs,
            **(cfg.model_kwargs or {}),
            **({"pretrained": cfg.pretrained} if cfg.pretrained else {}),
        )

    def _distribute(self, model: nn.Module) -> nn.Module:
        """Under torchrun: what ``self.net`` is (the model in DistributedDataParallel)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW, no weight decay on biases and norm parameters."""
        cfg = self.cfg
        return torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, batch: int, num_batches: int) -> torch.Tensor:
        """One optimizer step on batch ``batch`` of ``num_batches`` (x, y on the device); returns
        this process's running sums of the batch (see :meth:`_batch_sums`). The scheduler step and
        the step count are the loop's."""
        cfg = self.cfg
        with self._autocast():
            logits = self.fwd(x)
            loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._call("after_backward")
        self._stop_if_not_finite(float(loss.detach()), batch, num_batches)
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return self._batch_sums(loss, logits, y)

    def _train_fields(self, tot: torch.Tensor) -> dict[str, Any]:
        """An epoch record's training figures from the running sums over every process."""
        return {"train_loss": float(tot[0] / tot[2]), "train_acc": float(tot[1] / tot[2])}

    def _bar_fields(self, running: torch.Tensor) -> dict[str, object]:
        """The progress bar's figures from this process's running sums."""
        return {"loss": f"{running[0] / running[2]:.3f}", "acc": f"{running[1] / running[2]:.3f}"}

    def _eval_fields(self) -> dict[str, Any]:
        """An epoch record's evaluation figures (classification: test loss and accuracy)."""
        test_loss, test_acc = self.evaluate()
        return {"test_loss": test_loss, "test_acc": test_acc}

    def _epoch_line(self, rec: dict[str, Any]) -> str:
        """The log line of a finished epoch."""
        return (
            f"epoch {rec['epoch']}/{self.cfg.epochs}: train loss {rec['train_loss']:.4f} "
            f"acc {100 * rec['train_acc']:.2f}% | test loss {rec['test_loss']:.4f} acc {100 * rec['test_acc']:.2f}% | "
            f"{rec['images_per_s']:.0f} img/s"
        )

    def _plot(self, path: Path, title: str) -> None:
        """The run's curves (``curves.png``) from ``self.history``."""
        plot_curves(self.history, path, title)

    def _bundle(self) -> DataBundle:
        """The run's data (given to the constructor, or loaded by ``_setup``)."""
        if self.data is None:
            raise RuntimeError("the data is loaded by _setup(); call it first")
        return self.data

    # -- setup ---------------------------------------------------------------
    def _check_task(self) -> None:
        """Refuse, before any data is loaded, a model of another task (a segmentation model here)."""
        task = model_entry(self.cfg.model).task
        if task != self.task:
            raise ValueError(
                f"{self.cfg.model!r} is a {task} model, not a {self.task} model; train it with --task {task}"
            )

    def _setup(self) -> None:
        cfg = self.cfg
        self._check_task()
        self.device = self.dist.device
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        if self.data is None:
            self.data = load_data(cfg.data, cfg.image_size, seed=cfg.seed)
        b = self.data
        self.augment = b.augment if cfg.augment == "auto" else cfg.augment
        self.crop_pad = cfg.crop_pad if cfg.crop_pad is not None else max(1, b.image_size // 8)

        kw = dict(attention=cfg.attention, attn_kwargs=cfg.attn_kwargs, **(cfg.model_kwargs or {}))
        check_model_size(cfg.model, b.num_classes, **kw)  # options that would allocate terabytes: refused
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = self._build_model(b).to(self.device)
        pcfg = getattr(self.model, "pretrained_cfg", None)
        if pcfg:  # fine-tuning: normalise as the weights were trained
            self.data = b = dataclasses.replace(b, mean=tuple(pcfg["mean"]), std=tuple(pcfg["std"]))
            self._log(f"normalising with the weights' mean {b.mean} and std {b.std} ({cfg.pretrained})")
        # BatchNorm cannot train on one value per channel: a last batch of one image joins the one before
        self.merge_single_last = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        torch.manual_seed(cfg.seed + 1 + self.dist.rank)  # dropout etc. differ per rank
        if cfg.sync_bn and self.dist.distributed:
            if self.device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.net: nn.Module = self._distribute(self.model) if self.dist.distributed else self.model
        self.fwd = torch.compile(self.net) if cfg.compile else self.net

        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = len(self._batches(0))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup = (
            cfg.warmup_steps
            if cfg.warmup_steps is not None
            else min(self.steps_per_epoch, max(1, round(0.05 * self.total_steps)))
        )
        total, warm, mr = self.total_steps, self.warmup, cfg.min_lr_ratio
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, total, warm, mr))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion: nn.Module = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss(reduction="sum")

    def _batches(self, epoch: int) -> EpochBatches:
        b = self._bundle()
        return EpochBatches(
            b.train,
            self.cfg.batch_size,
            epoch,
            self.cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            augment=self.augment,
            pad=self.crop_pad,
            mean=b.mean,
            std=b.std,
            drop_last=self._drop_last,
            merge_single_last=self.merge_single_last,
        )

    def _run_config(self) -> dict[str, Any]:
        d = {k: getattr(self.cfg, k) for k in _RESUME_KEYS}
        d["world_size"] = self.dist.world_size
        return d

    # -- checkpoints -----------------------------------------------------------
    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return D.all_reduce_sum(t.clone().to(self.device), self.dist).cpu()

    def _save(self, running: torch.Tensor, train_time: float) -> torch.Tensor:
        """Checkpoint now. ``running``: this process's [loss_sum, correct, count] for the epoch.

        Returns the running sums to continue with: the sums over every process on rank 0
        (that is what the checkpoint holds), zeros elsewhere.
        """
        running = self._reduce(running)
        if self.dist.is_main and self.out is not None and self.cfg.checkpoints:
            state = {
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "step": self.step,
                "running": [float(v) for v in running],
                "train_time": train_time,
                "history": _strict(self.history),
                "config": self._run_config(),
            }
            folder = save_checkpoint(
                self.out, self.model, self.optimizer, self.scheduler, self.scaler, state, keep=self.cfg.keep
            )
            self._call("after_checkpoint", folder)
        D.barrier(self.dist)
        return running if self.dist.is_main else torch.zeros_like(running)

    def _check_same_run(self, st: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint made with other options (named, with old and new values)."""
        want, got = self._run_config(), st.get("config")
        if not isinstance(got, dict):
            return
        keys = list(want) + [k for k in got if k not in want]  # e.g. task: a segmentation run
        diff = {k: (got.get(k), want.get(k)) for k in keys if got.get(k) != want.get(k)}
        if diff:
            hint = ""
            if got.get("task") != want.get("task"):
                hint = f" (the run was trained with --task {got.get('task') or 'classify'})"
            raise ValueError(
                "cannot resume: the checkpoint was made with other options "
                + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
                + hint
            )

    def _resume(self) -> tuple[torch.Tensor, float]:
        running, train_time = torch.zeros(3, dtype=torch.float64), 0.0
        self.history: list[dict[str, Any]] = []
        if self.out is None:
            return running, train_time
        ck_root = self.out / "checkpoints"
        existing = latest_checkpoint(self.out) if ck_root.is_dir() else None
        if existing is None and ck_root.is_dir():
            partial = sorted(p.name for p in ck_root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name))
            if partial:
                raise ValueError(
                    f"{ck_root} holds step folders but none is a complete checkpoint "
                    f"({', '.join(partial)}); remove them or choose another --output"
                )
        if existing is not None and not self.cfg.resume:
            raise ValueError(
                f"{self.out} already holds a checkpoint ({existing.name}); pass --resume to continue "
                "that run, --overwrite to replace it, or choose another --output"
            )
        if existing is None:
            if self.cfg.resume:
                self._log(f"no checkpoint in {self.out}: starting a new run")
            return running, train_time
        # Changed options first, before the weights meet a model of another shape and before the
        # progress fields are checked (their bounds depend on the options: steps per epoch).
        st = load_checkpoint(
            self.out, self.model, self.optimizer, self.scheduler, self.scaler, check_state=self._check_same_run
        )
        if self.dist.rank != 0:  # RNG saved by rank 0; keep ranks distinct
            torch.manual_seed(self.cfg.seed + 1 + self.dist.rank + 7919 * int(st["step"]))
        self._check_state(st)
        self.epoch, self.batch_in_epoch, self.step = st["epoch"], st["batch_in_epoch"], st["step"]
        if self.scheduler.last_epoch != self.step:
            raise ValueError(
                f"{st['checkpoint']}: scheduler field 'last_epoch' is {self.scheduler.last_epoch}, "
                f"but the checkpoint's step is {self.step}"
            )
        self.history = list(st["history"])
        if self.dist.is_main:
            running = torch.tensor(st["running"], dtype=torch.float64)
            train_time = float(st.get("train_time", 0.0))
            # Drop metric lines written after the checkpoint (a kill between the two).
            lines = [_json_line(h) for h in self.history]
            atomic_write_text(self.out / "metrics.jsonl", "".join(line + "\n" for line in lines))
        self._log(
            f"resumed from {st['checkpoint']}: epoch {self.epoch + 1}, batch {self.batch_in_epoch}, step {self.step}"
        )
        return running, train_time

    def _check_state(self, st: dict[str, Any]) -> None:
        """Refuse a checkpoint whose progress fields are missing, mistyped or inconsistent."""
        where = st.get("checkpoint", "checkpoint")
        spe, epochs = self.steps_per_epoch, self.cfg.epochs

        def bad(field: str, expected: str) -> ValueError:
            return ValueError(f"{where}: checkpoint field {field!r} must be {expected}, got {st.get(field)!r}"[:400])

        for k in ("epoch", "batch_in_epoch", "step", "running", "history", "config"):
            if k not in st:
                raise ValueError(f"{where}: checkpoint field {k!r} is missing")
        for k, hi in (("epoch", epochs), ("batch_in_epoch", spe), ("step", epochs * spe)):
            v = st[k]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
                raise bad(k, f"an int in 0..{hi}")
        if st["step"] != st["epoch"] * spe + st["batch_in_epoch"]:
            raise bad(
                "step", f"epoch x {spe} steps per epoch + batch_in_epoch = {st['epoch'] * spe + st['batch_in_epoch']}"
            )
        r = st["running"]
        if not (
            isinstance(r, list)
            and len(r) == 3
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= 0 or signed)
                for v, signed in zip(r, self._signed_running)
            )
        ):
            raise bad("running", "a list of 3 finite numbers" + " >= 0" * (not any(self._signed_running)))
        t = st.get("train_time", 0.0)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise bad("train_time", "a finite number >= 0")
        h = st["history"]
        if not (isinstance(h, list) and len(h) == st["epoch"] and all(isinstance(x, dict) for x in h)):
            raise bad("history", f"a list of {st['epoch']} epoch records (one per finished epoch)")
        if not isinstance(st["config"], dict):
            raise bad("config", "a JSON object")

    # -- evaluation -------------------------------------------------------------
    @torch.no_grad()
    def recompute_bn_stats(self, num_batches: int) -> None:
        """Precise BatchNorm: replace the running statistics by the exact average over the
        first ``num_batches`` training batches (fixed order, no augmentation).

        BatchNorm's running variance starts at 1 and forgets it at rate (1 - momentum) per
        step: after a few dozen steps a layer whose activations have a variance of 1e-5
        still holds ~1e-3 and its eval-mode output is wrong by a large factor. Recomputing
        the statistics (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv 2105.07576,
        section 3) removes that bias. Only BatchNorm layers run in train mode here;
        nothing random is drawn, so training continues exactly as without it.
        """
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns or num_batches < 1:
            return
        b = self._bundle()
        was_training = self.model.training
        self.model.eval()
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
            m.train()
        bs = self.cfg.batch_size
        n = min(len(b.train), num_batches * bs)
        starts = list(range(0, n, bs))
        if len(starts) > 1 and n - starts[-1] == 1:  # a last batch of one image joins the one before
            starts.pop()
        for i, j in zip(starts, starts[1:] + [n]):
            x, _ = b.train.batch(torch.arange(i, j))
            with self._autocast():
                self.model(normalize(x, b.mean, b.std).to(self.device))
        for m, mom in zip(bns, saved):
            m.momentum = mom
        self.model.train(was_training)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(mean cross-entropy without smoothing, accuracy) on the test split, over all processes."""
        b = self._bundle()
        self.net.eval()
        idx = eval_indices(len(b.test), self.dist.rank, self.dist.world_size)
        bs = self.cfg.eval_batch_size or 2 * self.cfg.batch_size
        sums = torch.zeros(3, dtype=torch.float64)
        for i in range(0, len(idx), bs):
            x, y = b.test.batch(idx[i : i + bs])
            x, y = normalize(x, b.mean, b.std).to(self.device), y.to(self.device)
            with self._autocast():
                logits = self.fwd(x)
            sums += torch.tensor(
                [float(self.eval_criterion(logits.float(), y)), float((logits.argmax(1) == y).sum()), float(y.numel())],
                dtype=torch.float64,
            )
        sums = self._reduce(sums)
        return float(sums[0] / sums[2].clamp_min(1)), float(sums[1] / sums[2].clamp_min(1))

    # -- main loop -----------------------------------------------------------------
    def run(self) -> TrainResult:
        self.dist = D.setup(self.cfg.device, timeout=self.cfg.dist_timeout)
        self._lock: RunLock | None = None
        cuda = [self.dist.device] if self.dist.device.type == "cuda" else []
        try:  # the caller's RNG state and deterministic flags are restored afterwards
            with (
                torch.random.fork_rng(devices=cuda),
                _deterministic(self.cfg.deterministic, self.dist.device),
                D.peer_errors(self.dist),
            ):
                return self._run()
        finally:
            if self._lock is not None:
                self._lock.release()
            D.cleanup(self.dist)

    def _open_output(self, out: Path) -> None:
        """Rank 0 creates the run folder and takes its lock; every rank fails if that fails."""
        err: BaseException | None = None
        if self.dist.is_main:
            try:
                if out.exists() and not out.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, "--output must be a directory, but it is a file", str(out))
                out.mkdir(parents=True, exist_ok=True)
                self._lock = RunLock(out).acquire()
                if self.cfg.overwrite:
                    _remove_run(out)
                remove_stale_tmp(out)
            except (OSError, VisattnError) as e:
                err = e
        failed = D.all_reduce_sum(torch.tensor([float(err is not None)], device=self.device), self.dist)
        if err is not None:
            raise err
        if float(failed) > 0:
            raise VisattnError(f"rank 0 could not open the run folder {str(out)!r}; see its message")

    def _check_run_folder(self, out: Path) -> None:
        """Refuse, before any work, a folder that holds a started or finished run's results but no
        checkpoint (a checkpoint is for :meth:`_resume` to continue or refuse), unless ``overwrite``."""
        if self.cfg.overwrite or not out.is_dir():
            return
        root = out / "checkpoints"
        if root.is_dir() and any(p.is_dir() and re.fullmatch(r"step-\d+", p.name) for p in root.iterdir()):
            return
        found = [n for n in _RUN_FILES if (out / n).exists() and not (n == "metrics.jsonl" and _empty_file(out / n))]
        if found:
            raise ValueError(
                f"{str(out)!r} holds a finished or started run ({', '.join(found)}) and no checkpoint to "
                "resume; pass --overwrite to replace it or choose another --output"
            )

    def _run(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.cfg
        if cfg.output:
            self._check_run_folder(Path(cfg.output))
        self._setup()
        self.out = Path(cfg.output) if cfg.output else None
        if self.out is not None:
            self._open_output(self.out)
        D.barrier(self.dist)
        running, train_time = self._resume()
        if self.out is not None and self.dist.is_main and self.step == 0:
            atomic_write_text(self.out / "metrics.jsonl", "")
        show = cfg.progress and self.dist.is_main
        world = self.dist.world_size

        while self.epoch < cfg.epochs:
            batches = self._batches(self.epoch)
            self.net.train()
            bar = tqdm(
                total=len(batches),
                initial=self.batch_in_epoch,
                disable=not show,
                dynamic_ncols=True,
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                position=self.bar_position,
                leave=self.bar_position == 0,
                unit="batch",
            )
            t0 = time.perf_counter()
            seen_this_session = 0
            for i, x, y in batches.iter_from(self.batch_in_epoch):
                D.heartbeat(self.dist, self.step + 1)  # working on optimizer step step + 1
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                sums = self._train_step(x, y, i, len(batches))
                self.scheduler.step()
                self.step += 1
                self.batch_in_epoch = i + 1
                running += sums
                seen_this_session += x.shape[0]
                if show:
                    elapsed = time.perf_counter() - t0
                    fields = self._bar_fields(running)
                    fields["img_s"] = f"{seen_this_session * world / max(elapsed, 1e-9):.0f}"
                    bar.set_postfix(fields, refresh=False)
                    bar.update(1)
                self._call("after_step")
                if cfg.save_every and self.step % cfg.save_every == 0 and self.batch_in_epoch < len(batches):
                    running = self._save(running, train_time + time.perf_counter() - t0)
            bar.close()
            train_time += time.perf_counter() - t0
            tot = self._reduce(running)
            if cfg.precise_bn:
                self.recompute_bn_stats(cfg.precise_bn)
            rec = {
                "epoch": self.epoch + 1,
                "step": self.step,
                "lr": self.optimizer.param_groups[0]["lr"],
                **self._train_fields(tot),
                **self._eval_fields(),
                "images_per_s": float(tot[2]) / max(train_time, 1e-9),
                "train_time_s": train_time,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            self._complete_record(rec)
            self.history.append(_strict(rec))  # a measurement that could not be made is None, as in the file
            self._log(self._epoch_line(rec))
            if self.out is not None and self.dist.is_main:
                path = self.out / "metrics.jsonl"
                try:
                    with open(path, "a") as f:
                        f.write(_json_line(rec) + "\n")
                except OSError as e:
                    raise OSError(e.errno, f"cannot append to the metrics file ({e.strerror or e})", str(path)) from e
            self.epoch += 1
            self.batch_in_epoch = 0
            running, train_time = torch.zeros(3, dtype=torch.float64), 0.0
            self._save(running, train_time)

        return self._finish()

    def _stop_if_not_finite(self, loss_value: float, batch: int, num_batches: int) -> None:
        """Raise :class:`NonFiniteLoss` (on every rank) before the optimizer step of a NaN/inf loss."""
        bad = not math.isfinite(loss_value)
        if self.dist.distributed:
            bad = float(D.all_reduce_sum(torch.tensor([float(bad)], device=self.device), self.dist)) > 0
        if not bad:
            return
        ck = latest_checkpoint(self.out) if self.out is not None and (self.out / "checkpoints").is_dir() else None
        who = f"{loss_value}" if not math.isfinite(loss_value) else "non-finite on another process"
        raise NonFiniteLoss(
            f"the training loss became non-finite ({who}) at epoch {self.epoch + 1}, step {self.step + 1} "
            f"(batch {batch + 1} of {num_batches}); stopped before that optimizer step. Lower --lr, set "
            f"--grad-clip or check the data" + (f"; the last good checkpoint is {ck}" if ck else "")
        )

    def _finish(self) -> TrainResult:
        cfg, b = self.cfg, self._bundle()
        final = dict(self.history[-1]) if self.history else {}
        if self.out is not None and self.dist.is_main:
            save_weights(self.model, self.out / "model.safetensors", metadata={"format": "visattn-model"})
            info = {
                "config": cfg.as_dict(),
                "classes": b.classes,
                "image_size": b.image_size,
                "mean": list(b.mean),
                "std": list(b.std),
                "pretrained_cfg": getattr(self.model, "pretrained_cfg", None),
                "world_size": self.dist.world_size,
                "final": final,
            }
            atomic_write_text(self.out / "config.json", json.dumps(_strict(info), indent=2, allow_nan=False))
            if cfg.plot and self.history:
                title = cfg.model + (f" + {cfg.attention}" if cfg.attention else "") + f" on {b.name}"
                self._plot(self.out / "curves.png", title)
        D.barrier(self.dist)
        self.model.eval()
        return TrainResult(
            self.model, list(self.history), final, str(self.out) if self.out else None, b.num_classes, b.image_size
        )


def train(
    cfg: TrainConfig, data: DataBundle | None = None, callbacks: Sequence[Any] = (), bar_position: int = 0
) -> TrainResult:
    """Run one training job (see :class:`Trainer`). ``data`` skips loading ``cfg.data``."""
    return Trainer(cfg, data, callbacks, bar_position).run()
