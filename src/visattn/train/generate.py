"""Image generation: ``visattn train --task generate`` and ``visattn sample``.

:class:`GanTrainer` is the engine's :class:`~visattn.train.engine.Trainer` with the task hooks
swapped: the model is a :class:`GAN` (generator ``g``, discriminator ``d`` and ``g_ema``, an
exponential moving average of G); each training batch of real images is one discriminator
step, and every ``n_critic``-th batch also one generator step (hinge loss, SAGAN: Zhang et al.
2019, arXiv 1805.08318). Everything else is the engine's own: checkpoints every epoch or
``save_every`` steps holding G, D, G-EMA, the optimizer, scheduler, GradScaler and RNG states
(exact ``--resume``), ``torchrun`` (G and D each in DistributedDataParallel), mixed precision,
``metrics.jsonl``, ``model.safetensors`` + ``config.json`` and ``curves.png``.

TTUR (Heusel et al. 2017) as SAGAN: Adam with beta1 = 0, beta2 = 0.9, G at ``lr`` (1e-4) and D
at ``lr_d`` (4e-4). Both are one ``torch.optim.Adam`` with two parameter groups: Adam keeps
its moments and step count per parameter and skips parameters without a gradient, and a D step
leaves G's gradients unset (and a G step drops D's), so this is exactly two optimizers in one
checkpointable object. The learning rates are constant unless ``min_lr_ratio`` < 1 (cosine).

Each epoch (rank 0): a grid of ``grid_size`` samples of G-EMA from fixed noise
(``samples/epoch-NNN.png``) and, every ``fid_every`` epochs and at the end, FID and KID of
``fid_samples`` G-EMA samples against the test images through torchmetrics
(:mod:`visattn.train.gan_metrics`), on ``fid_features``: ``inception:PATH`` or ``run:DIR``; by
default a ``resnet_tiny`` classifier trained by visattn on the same data into
``OUTPUT/feature_net`` before the GAN (the fallback, **not comparable to published FIDs**).
Sampling uses its own seeded generator, so evaluation never changes the training's random stream.

Divergence: a non-finite D or G loss stops the run before that optimizer step
(:class:`~visattn.errors.NonFiniteLoss`); G's hinge loss above ``diverge_g_loss`` for
``diverge_patience`` G steps in a row (D wins, G's loss explodes) stops it with
:class:`~visattn.errors.TrainingDiverged`; both name the epoch and step.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visattn._io import atomic_path
from visattn.data import DataBundle
from visattn.data.generation import PAIR_DATA, load_gen_data
from visattn.errors import TrainingDiverged
from visattn.models.gan import discriminator_for, hinge_d_loss, hinge_g_loss
from visattn.registry import create_model, list_models, model_entry
from visattn.train.diffaug import diff_augment, parse_policy
from visattn.train.engine import TrainConfig, Trainer, TrainResult, plot_panels
from visattn.train.gan_metrics import FEATURE_NOTE, ClassifierFeatures, generation_metrics

__all__ = [
    "GenTrainConfig",
    "GanTrainer",
    "GAN",
    "train_generate",
    "update_ema",
    "ema_decay_at",
    "load_generator",
    "sample_images",
    "save_grid",
    "GEN_DEFAULT_DATA",
    "train_fallback_features",
    "build_gan",
    "BEST_WEIGHTS",
]

GEN_DEFAULT_DATA = "shapepairs"
#: The weights (G, D, G-EMA) of the epoch with the lowest FID, next to ``model.safetensors`` (the last epoch's).
BEST_WEIGHTS = "best.safetensors"
_HALF = (0.5, 0.5, 0.5)  # images in [0, 1] -> [-1, 1] (G's tanh range): (x - 0.5) / 0.5


@dataclass
class GenTrainConfig(TrainConfig):
    """A GAN run: :class:`TrainConfig` plus the GAN's options.

    ``model`` / ``discriminator``: registered generate models ("auto": ``sagan{side}_g`` and its
    ``_d``); ``model_kwargs`` go to both (e.g. ``{"ch": 64}``); ``width`` is their ``ch``
    unless ``model_kwargs`` gives one. ``attention`` / ``attn_kwargs``: the mechanism of both
    attention blocks. ``lr`` is G's learning rate, ``lr_d`` D's. ``conditional``: class-
    conditional G and D (the data's labels). ``diffaug``: the DiffAugment policy applied to every
    image D sees, real and generated (:mod:`visattn.train.diffaug`; ``""``: none). ``ema_decay`` 0
    turns the EMA off (samples then come from G). ``fid_every`` 0: no FID / KID.
    """

    task: str = "generate"
    model: str = "auto"
    discriminator: str = "auto"
    data: str = GEN_DEFAULT_DATA
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int | None = 0
    min_lr_ratio: float = 1.0
    label_smoothing: float = 0.0
    n_critic: int = 1
    width: int = 16
    z_dim: int = 128
    conditional: bool = True
    diffaug: str = ""
    aux_weight: float = 0.0
    ema_decay: float = 0.999
    grid_size: int = 64
    fid_every: int = 2
    fid_samples: int = 1000
    fid_features: str | None = None
    feature_epochs: int = 4
    diverge_g_loss: float = 25.0
    diverge_patience: int = 200

    def validate(self) -> None:
        super().validate()
        for name, lo in (
            ("n_critic", 1),
            ("width", 1),
            ("z_dim", 1),
            ("grid_size", 1),
            ("fid_every", 0),
            ("fid_samples", 2),
            ("feature_epochs", 1),
            ("diverge_patience", 1),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        v = self.aux_weight
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"aux_weight must be a finite number >= 0 (0: no auxiliary classifier), got {v!r}")
        for name, v in (("lr_d", self.lr_d), ("diverge_g_loss", self.diverge_g_loss)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA), got {self.ema_decay!r}")
        b = tuple(self.betas)
        if len(b) != 2 or not all(isinstance(v, (int, float)) and 0.0 <= v < 1.0 for v in b):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(b[0]), float(b[1]))
        for name in ("model", "discriminator"):
            v = getattr(self, name)
            if v != "auto" and model_entry(v).task != "generate":
                raise ValueError(
                    f"--task generate needs a generate model for {name}; {v!r} is a {model_entry(v).task} model "
                    f"(generate models: {', '.join(list_models('generate'))})"
                )
        if self.pretrained is not None:
            raise ValueError(
                f"--pretrained is not used by --task generate (G and D start from scratch), got {self.pretrained!r}"
            )
        if self.precise_bn:
            raise ValueError(f"precise_bn is a classification option; --task generate takes 0, got {self.precise_bn}")
        parse_policy(self.diffaug)
        if self.fid_features is not None and not isinstance(self.fid_features, str):
            raise TypeError(f"fid_features must be None or 'inception:PATH' / 'run:DIR', got {self.fid_features!r}")


class GAN(nn.Module):
    """G, D and G's moving average, saved and loaded as one module (keys ``g.*``, ``d.*``, ``g_ema.*``).

    ``g_ema`` is None with ``ema=False``; :attr:`sampler` is the network samples come from.
    """

    def __init__(self, g: nn.Module, d: nn.Module, ema: bool = True):
        super().__init__()
        self.g, self.d = g, d
        self.g_ema = copy.deepcopy(g).requires_grad_(False).eval() if ema else None

    @property
    def sampler(self) -> nn.Module:
        return self.g_ema if self.g_ema is not None else self.g

    def train(self, mode: bool = True) -> GAN:
        super().train(mode)
        if self.g_ema is not None:
            self.g_ema.eval()
        return self


def ema_decay_at(decay: float, g_steps: int) -> float:
    """The EMA's decay after ``g_steps`` generator steps: ``min(decay, (1 + t) / (10 + t))`` (the
    warm-up of TensorFlow's ExponentialMovingAverage ``num_updates``), so a short run's EMA is not
    dominated by the initial weights."""
    return min(decay, (1.0 + g_steps) / (10.0 + g_steps))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every floating parameter; buffers (BN
    statistics, spectral norm's power-iteration vectors) are copied."""
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(b)


def _gan_names(cfg: GenTrainConfig, side: int) -> tuple[str, str]:
    g = cfg.model if cfg.model != "auto" else f"sagan{side}_g"
    d = cfg.discriminator if cfg.discriminator != "auto" else discriminator_for(g)
    return g, d


def _gan_kwargs(cfg: GenTrainConfig, num_classes: int) -> dict[str, Any]:
    kw: dict[str, Any] = {"ch": cfg.width}
    kw.update(cfg.model_kwargs or {})
    kw["num_classes"] = num_classes if cfg.conditional else 0
    return kw


def _d_kwargs(cfg: GenTrainConfig, num_classes: int) -> dict[str, Any]:
    kw = _gan_kwargs(cfg, num_classes)
    if cfg.aux_weight > 0 and kw["num_classes"]:
        kw["aux_classifier"] = True
    return kw


def build_gan(cfg: GenTrainConfig, image_size: int, num_classes: int) -> GAN:
    """The run's :class:`GAN` (random weights) from its config and data."""
    g_name, d_name = _gan_names(cfg, image_size)
    kw = _gan_kwargs(cfg, num_classes)
    g = create_model(g_name, attention=cfg.attention, attn_kwargs=cfg.attn_kwargs, z_dim=cfg.z_dim, **kw)
    d = create_model(d_name, attention=cfg.attention, attn_kwargs=cfg.attn_kwargs, **_d_kwargs(cfg, num_classes))
    for name, m in ((g_name, g), (d_name, d)):
        if getattr(m, "img_size", None) != image_size:
            raise ValueError(
                f"{name} works on {getattr(m, 'img_size', '?')} px images but the data is {image_size} px; "
                f"use sagan{image_size}_g / sagan{image_size}_d or --image-size {getattr(m, 'img_size', '?')}"
            )
    return GAN(g, d, ema=cfg.ema_decay > 0)


def _seeded_noise(n: int, z_dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z (n, z_dim) and labels (n,) (classes in turn; None unconditional) from a generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, z_dim, generator=gen)
    y = torch.arange(n) % num_classes if num_classes else None
    return z, y


@torch.no_grad()
def sample_images(
    g: nn.Module, n: int, seed: int = 0, batch_size: int = 256, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """``n`` samples of generator ``g`` (in eval mode) as images (n, 3, S, S) in [0, 1].

    Noise from a generator seeded with ``seed`` (the global RNG is untouched): the same seed gives
    the same images. A class-conditional ``g`` draws the classes in turn unless ``labels`` (n,) are given.
    """
    z_dim, k = int(getattr(g, "z_dim", 0)), int(getattr(g, "num_classes", 0))
    if z_dim < 1:
        raise TypeError(f"sample_images needs a generator with an int z_dim, got {type(g).__name__}")
    z, y = _seeded_noise(n, z_dim, k, seed)
    if labels is not None:
        if not k:
            raise ValueError("labels were given but the generator is unconditional")
        y = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if y.shape[0] != n or int(y.min()) < 0 or int(y.max()) >= k:
            raise ValueError(f"labels must be {n} class indices in 0..{k - 1}, got {labels!r}"[:300])
    was = g.training
    g.eval()
    dev = next(g.parameters()).device
    out = []
    for i in range(0, n, batch_size):
        yy = y[i : i + batch_size].to(dev) if y is not None else None
        out.append(g(z[i : i + batch_size].to(dev), yy).float().cpu())
    g.train(was)
    return (torch.cat(out) * 0.5 + 0.5).clamp_(0.0, 1.0)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 2) -> Path:
    """Write images (N, 3, H, W) in [0, 1] as one PNG grid (``nrow`` per row, default ~sqrt(N);
    2-pixel gaps; each pixel ``scale`` x ``scale``), atomically. Returns the path."""
    from PIL import Image

    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f"save_grid expects images (N, 3, H, W) with N >= 1, got {tuple(images.shape)}")
    n, _, h, w = images.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows, gap = math.ceil(n / cols), 2
    grid = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, dtype=np.uint8)
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        grid[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = arr[i]
    im = Image.fromarray(grid)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        im.save(tmp, format="PNG")
    return path


class GanTrainer(Trainer):
    """One GAN run (see module docstring); the engine's :class:`Trainer` with task hooks."""

    cfg: GenTrainConfig
    model: GAN
    _signed_running = (False, True, False)  # [D loss sum, G loss sum (hinge: any sign), images]
    _drop_last = True  # equal-sized D batches: the hinge terms of real and fake weigh alike
    task = "generate"

    def _check_task(self) -> None:
        """The generator and discriminator names are checked by :meth:`GenTrainConfig.validate`
        (``"auto"`` picks them from the data's size)."""

    def __init__(
        self,
        cfg: GenTrainConfig,
        data: DataBundle | None = None,
        callbacks: Sequence[Any] = (),
        bar_position: int = 0,
        features: nn.Module | None = None,
    ):
        """``features``: a feature network module for FID / KID (overrides ``cfg.fid_features``;
        e.g. one :func:`train_fallback_features` network shared by the runs of a comparison)."""
        if not isinstance(cfg, GenTrainConfig):
            raise TypeError(f"GanTrainer needs a GenTrainConfig, got {type(cfg).__name__}")
        super().__init__(cfg, data, callbacks, bar_position)
        self.feature_module = features
        self._high_g = 0  # G steps in a row with the loss above diverge_g_loss
        self._real_images: torch.Tensor | None = None

    # -- setup -------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        b = self.data if self.data is not None else load_gen_data(cfg.data, cfg.image_size, seed=cfg.seed)
        self.source_data = b  # as loaded: what the fallback feature classifier trains on
        # Batches in [-1, 1] (G's tanh range); no flips for the built-in mirrored pairs.
        self.data = dataclasses.replace(
            b, mean=_HALF, std=_HALF, augment="none" if b.name in PAIR_DATA else "crop+flip"
        )
        self._ddp_nets: tuple[nn.Module, nn.Module] | None = None
        super()._setup()
        self.crop_pad = cfg.crop_pad if cfg.crop_pad is not None else 0  # flips only, by default
        self.num_classes = self.data.num_classes if cfg.conditional else 0
        self.z_dim = cfg.z_dim
        self._policy = parse_policy(cfg.diffaug)
        self.aux_weight = float(cfg.aux_weight) if self.num_classes else 0.0
        self._aux_kw = {"with_classes": True} if self.aux_weight > 0 else {}
        nets: tuple[Any, Any] = self._ddp_nets or (self.model.g, self.model.d)
        if cfg.compile:
            nets = (torch.compile(nets[0]), torch.compile(nets[1]))
        self.g_net, self.d_net = nets

    def _build_model(self, b: DataBundle) -> nn.Module:
        return build_gan(self.cfg, b.image_size, b.num_classes)

    def _distribute(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        gan = model if isinstance(model, GAN) else self.model
        self._ddp_nets = (DDP(gan.g, device_ids=ids), DDP(gan.d, device_ids=ids))
        return model  # the container itself is never called; G and D run through their DDP wrappers

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.Adam(
            [
                {"params": [p for p in self.model.g.parameters() if p.requires_grad], "lr": cfg.lr},
                {"params": [p for p in self.model.d.parameters() if p.requires_grad], "lr": cfg.lr_d},
            ],
            betas=cfg.betas,
            eps=1e-8,
        )

    def _run_config(self) -> dict[str, Any]:
        d = super()._run_config()
        cfg = self.cfg
        d.update(
            task="generate",
            discriminator=cfg.discriminator,
            lr_d=cfg.lr_d,
            betas=list(cfg.betas),
            n_critic=cfg.n_critic,
            width=cfg.width,
            z_dim=cfg.z_dim,
            conditional=cfg.conditional,
            diffaug=cfg.diffaug,
            aux_weight=cfg.aux_weight,
            ema_decay=cfg.ema_decay,
        )
        return d

    # -- one step ----------------------------------------------------------------
    def _noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(n, self.z_dim, device=self.device)
        y = torch.randint(0, self.num_classes, (n,), device=self.device) if self.num_classes else None
        return z, y

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, batch: int, num_batches: int) -> torch.Tensor:
        cfg, g_net, d_net = self.cfg, self.g_net, self.d_net
        n = x.shape[0]
        y_real = y if self.num_classes else None
        # Discriminator: real and generated images in one forward (one DDP reduction).
        z, y_fake = self._noise(n)
        with torch.no_grad(), self._autocast():
            fake = g_net(z, y_fake)
        labels = torch.cat([y_real, y_fake]) if y_real is not None and y_fake is not None else None
        aux = self.aux_weight > 0
        with self._autocast():
            out = d_net(diff_augment(torch.cat([x, fake.to(x.dtype)]), self._policy), labels, **self._aux_kw)
            logits = (out[0] if aux else out).float()
            d_loss = hinge_d_loss(logits[:n], logits[n:])
            if aux and y_real is not None:  # AC-GAN: D's classifier learns the real images' classes
                d_loss = d_loss + self.aux_weight * F.cross_entropy(out[1][:n].float(), y_real)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(d_loss).backward()
        self._call("after_backward")
        d_value = float(d_loss.detach())
        self._stop_if_not_finite(d_value, batch, num_batches)
        self._step(self.model.d)
        sums = torch.tensor([d_value * n, 0.0, n], dtype=torch.float64)
        if (self.step + 1) % cfg.n_critic:
            return sums
        # Generator: one step every n_critic discriminator steps.
        z, y_fake = self._noise(n)
        with self._autocast():
            out = d_net(diff_augment(g_net(z, y_fake), self._policy), y_fake, **self._aux_kw)
            g_loss = hinge_g_loss((out[0] if aux else out).float())
            if aux and y_fake is not None:  # ... and G makes images that it classifies as the requested class
                g_loss = g_loss + self.aux_weight * F.cross_entropy(out[1].float(), y_fake)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(g_loss).backward()
        for p in self.model.d.parameters():
            p.grad = None  # D's gradients of G's loss: not a D step
        g_value = float(g_loss.detach())
        self._stop_if_not_finite(g_value, batch, num_batches)
        self._check_divergence(g_value, d_value, batch, num_batches)
        self._step(self.model.g)
        if self.model.g_ema is not None:
            update_ema(self.model.g_ema, self.model.g, ema_decay_at(cfg.ema_decay, (self.step + 1) // cfg.n_critic - 1))
        sums[1] = g_value * n * cfg.n_critic
        return sums

    def _step(self, module: nn.Module) -> None:
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(module.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _check_divergence(self, g_value: float, d_value: float, batch: int, num_batches: int) -> None:
        self._high_g = self._high_g + 1 if g_value > self.cfg.diverge_g_loss else 0
        if self._high_g >= self.cfg.diverge_patience:
            raise TrainingDiverged(
                f"the GAN diverged at epoch {self.epoch + 1}, step {self.step + 1} (batch {batch + 1} of "
                f"{num_batches}): G's hinge loss stayed above {self.cfg.diverge_g_loss:g} for "
                f"{self._high_g} generator steps (now {g_value:.3g}; D's loss {d_value:.3g}): the "
                "discriminator wins. Lower --lr-d (or raise --lr), or check the data"
            )

    # -- records -----------------------------------------------------------------
    def _train_fields(self, tot: torch.Tensor) -> dict[str, Any]:
        return {"d_loss": float(tot[0] / tot[2]), "g_loss": float(tot[1] / tot[2])}

    def _bar_fields(self, running: torch.Tensor) -> dict[str, object]:
        return {"d": f"{running[0] / running[2]:.3f}", "g": f"{running[1] / running[2]:.3f}"}

    def _eval_fields(self) -> dict[str, Any]:
        cfg = self.cfg
        last = self.epoch + 1 == cfg.epochs
        if self.dist.is_main and self.out is not None:
            self.write_grid(self.out / "samples" / f"epoch-{self.epoch + 1:03d}.png")
        if not cfg.fid_every or not ((self.epoch + 1) % cfg.fid_every == 0 or last) or not self.dist.is_main:
            return {"fid": None, "kid": None, "kid_std": None}
        m = self.metrics()
        self._keep_if_best(m["fid"])
        return {"fid": m["fid"], "kid": m["kid"], "kid_std": m["kid_std"]}

    def _keep_if_best(self, fid: float | None) -> None:
        """Write G, D and G-EMA to ``OUTPUT/best.safetensors`` when ``fid`` is the run's lowest so
        far (the history survives a resume, so a resumed run keeps the same best)."""
        if self.out is None or fid is None or not math.isfinite(fid):
            return
        best = _best_record(self.history)
        if best is None or fid < best["fid"]:
            from visattn.models.io import save_weights

            meta = {"format": "visattn-model", "epoch": str(self.epoch + 1), "fid": repr(float(fid))}
            save_weights(self.model, self.out / BEST_WEIGHTS, metadata=meta)

    def _epoch_line(self, rec: dict[str, Any]) -> str:
        fid = f" | FID {rec['fid']:.2f} KID {rec['kid']:.4f}" if rec.get("fid") is not None else ""
        return (
            f"epoch {rec['epoch']}/{self.cfg.epochs}: D loss {rec['d_loss']:.4f} G loss {rec['g_loss']:.4f}"
            f"{fid} | {rec['images_per_s']:.0f} img/s"
        )

    def _plot(self, path: Path, title: str) -> None:
        plot_gan_curves(self.history, path, title)

    # -- evaluation --------------------------------------------------------------
    def write_grid(self, path: Path) -> Path:
        """``grid_size`` samples of the sampling network from fixed noise (seeded by ``seed``); a
        class-conditional run with up to 16 classes draws them in turn, one class per column."""
        imgs = sample_images(self.model.sampler, self.cfg.grid_size, seed=self.cfg.seed)
        k = self.num_classes
        return save_grid(imgs, path, nrow=k if 0 < k <= 16 else None)

    def features(self) -> str | nn.Module:
        """The FID / KID feature network (the fallback classifier is trained on first use)."""
        cfg = self.cfg
        if self.feature_module is not None:
            return self.feature_module
        if cfg.fid_features is not None:
            return cfg.fid_features
        if self.out is None:
            raise ValueError("the fallback FID features are trained into the run folder: set an output or fid_features")
        folder = self.out / "feature_net"
        if not (folder / "model.safetensors").is_file():
            self._log(f"training the fallback FID feature network (resnet_tiny) into {folder}")
            train_fallback_features(
                self.source_data, cfg.feature_epochs, cfg.seed, folder, cfg.device, cfg.progress, cfg.verbose
            )
        return f"run:{folder}"

    def metrics(self) -> dict[str, Any]:
        """FID and KID of ``fid_samples`` samples against (up to as many) test images."""
        cfg, b = self.cfg, self._bundle()
        features = _cached_features(self, self.features())  # may train the fallback network first
        if self._real_images is None:
            n = min(cfg.fid_samples, len(b.test))
            self._real_images = b.test.batch(torch.arange(n))[0]
        fake = sample_images(self.model.sampler, cfg.fid_samples, seed=cfg.seed + 1)
        # KID's subsets: half of the smaller set, so the subsets differ and kid_std means something
        half = max(2, min(len(self._real_images), len(fake)) // 2)
        return generation_metrics(self._real_images, fake, features, kid_subset_size=half, seed=cfg.seed)

    def _finish(self) -> TrainResult:
        res = super()._finish()
        if self.out is not None and self.dist.is_main:
            info = json.loads((self.out / "config.json").read_text())
            g_name, d_name = _gan_names(self.cfg, self._bundle().image_size)
            info.update(
                task="generate",
                generator=g_name,
                discriminator=d_name,
                gan_kwargs=_gan_kwargs(self.cfg, self._bundle().num_classes),
                fid_features=_feature_name(self),
                fid_note=None if _feature_name(self).startswith("inception:") else FEATURE_NOTE,
            )
            best = _best_record(self.history)
            info["best"] = (
                {"epoch": best["epoch"], "fid": best["fid"], "kid": best["kid"], "weights": BEST_WEIGHTS}
                if best is not None and (self.out / BEST_WEIGHTS).is_file()
                else None
            )
            from visattn._io import atomic_write_text
            from visattn._strict_json import strict

            atomic_write_text(self.out / "config.json", json.dumps(strict(info), indent=2, allow_nan=False))
            self.write_grid(self.out / "samples.png")
        return res


def _best_record(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch record with the lowest finite FID (the first of equals), or None."""
    scored = [h for h in history if h.get("fid") is not None and math.isfinite(h["fid"])]
    return min(scored, key=lambda h: h["fid"]) if scored else None


def _cached_features(trainer: GanTrainer, spec: str | nn.Module) -> nn.Module:
    from visattn.train.gan_metrics import feature_network

    key = spec if isinstance(spec, str) else id(spec)
    cache = trainer.__dict__.setdefault("_feature_cache", {})
    if key not in cache:
        cache[key] = feature_network(spec, trainer.device)
    return cache[key]


def _feature_name(trainer: GanTrainer) -> str:
    if trainer.feature_module is not None:
        return str(getattr(trainer.feature_module, "name", type(trainer.feature_module).__name__))
    if trainer.cfg.fid_features is not None or trainer.out is None:
        return trainer.cfg.fid_features or "none"
    return f"run:{trainer.out / 'feature_net'}"


def train_fallback_features(
    data: DataBundle,
    epochs: int = 4,
    seed: int = 0,
    output: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = False,
    verbose: bool = False,
) -> ClassifierFeatures:
    """Train the fallback FID / KID feature network: ``resnet_tiny`` on ``data``'s classes with
    ``visattn train``'s engine (into ``output``, resumable, or in memory with ``output=None``), and
    return it as a :class:`~visattn.train.gan_metrics.ClassifierFeatures` (images in [0, 1] ->
    pooled features)."""
    from visattn.train.engine import train

    res = train(
        TrainConfig(
            model="resnet_tiny",
            data=data.name,
            image_size=data.image_size,
            epochs=epochs,
            batch_size=64,
            seed=seed,
            output=None if output is None else str(output),
            resume=output is not None,
            device=device,
            progress=progress,
            verbose=verbose,
            plot=False,
            keep=1,
        ),
        data=data,
    )
    name = f"run:{output}" if output is not None else f"resnet_tiny trained {epochs} epochs on {data.name}"
    return ClassifierFeatures(res.model, data.image_size, data.mean, data.std, name=name)


def plot_gan_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """D and G losses and FID per epoch as a PNG (see :func:`~visattn.train.engine.plot_panels`)."""
    plot_panels(
        history,
        path,
        [
            ("hinge loss", [("d_loss", "D", 1.0), ("g_loss", "G", 1.0)]),
            ("FID (see config.json fid_features)", [("fid", "FID", 1.0)]),
        ],
        title,
    )


def train_generate(
    cfg: GenTrainConfig, data: DataBundle | None = None, callbacks: Sequence[Any] = (), bar_position: int = 0
) -> TrainResult:
    """Run one GAN job (see :class:`GanTrainer`). ``data`` skips loading ``cfg.data``."""
    return GanTrainer(cfg, data, callbacks, bar_position).run()


def load_generator(
    run: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu", best: bool = True
) -> nn.Module:
    """The generator of a finished ``visattn train --task generate`` run (its EMA unless ``ema=False``
    or the run kept none), in eval mode. ``run`` holds ``config.json`` and ``model.safetensors``.

    ``best`` (default): the weights of the epoch with the lowest FID (``best.safetensors``, written
    by runs that measured FID) where the run has them, else the last epoch's; ``best=False``: the
    last epoch's."""
    from visattn.models.io import load_weights

    root = Path(run).expanduser()
    cfg_path, weights = root / "config.json", root / "model.safetensors"
    if not root.is_dir():
        raise FileNotFoundError(
            f"run folder {str(root)!r} does not exist; expected the --output folder of "
            "`visattn train --task generate` (config.json and model.safetensors)"
        )
    if not cfg_path.is_file() or not weights.is_file():
        hint = (
            " (it holds checkpoints: the run has not finished; resume it with --resume)"
            if (root / "checkpoints").is_dir()
            else ""
        )
        raise FileNotFoundError(
            f"{str(root)!r} is not a finished generation run: expected config.json and model.safetensors "
            f"written by `visattn train --task generate`{hint}"
        )
    info = json.loads(cfg_path.read_text())
    if info.get("task") != "generate":
        raise ValueError(
            f"{str(root)!r} is a {info.get('config', {}).get('task', 'classify')} run, not a generation run "
            "(`visattn train --task generate`)"
        )
    conf: dict[str, Any] = dict(info["config"])
    fields = set(GenTrainConfig.__dataclass_fields__)
    kept: dict[str, Any] = {k: v for k, v in conf.items() if k in fields}
    if "betas" in kept:
        kept["betas"] = tuple(kept["betas"])
    cfg = GenTrainConfig(**kept)
    gan = build_gan(cfg, int(info["image_size"]), len(info["classes"]))
    best_info = info.get("best")
    if best and best_info and (root / best_info["weights"]).is_file():
        weights = root / best_info["weights"]
    load_weights(gan, weights)
    g = gan.g_ema if (ema and gan.g_ema is not None) else gan.g
    return g.to(device).eval()
