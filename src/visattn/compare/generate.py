"""``visattn compare --task generate``: one GAN per mechanism on the same data (docs/generation.md).

SAGAN's G and D (default ``sagan32_g`` and its pair, width 32) with the mechanism in both
attention blocks, trained by :func:`visattn.train.generate.train_generate` (same seed, data order
and schedule). Per run: ``fid`` (primary, lower is better) and ``kid`` of the final EMA
generator, on one fallback feature network per data set (a ``resnet_tiny`` trained once on it,
shared by every mechanism and seed so their FIDs are comparable with each other — and not with
published FIDs). Costs: ``params`` of G + D, ``flops`` and ``latency_ms`` of one G + D forward
from noise, ``peak_mib`` of one G step (hinge loss through D). Results go to ``OUT/generate/``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visattn.compare.plugin import Metric, Task, TaskPlugin, register_task
from visattn.train.generate import GEN_DEFAULT_DATA, GenTrainConfig

__all__ = ["GenerateTask", "GEN_TASKS", "GanPair"]

GEN_TASKS: dict[str, Task] = {
    GEN_DEFAULT_DATA: Task(
        GEN_DEFAULT_DATA,
        GEN_DEFAULT_DATA,
        32,
        4,
        1,
        0.0,
        "a shape and its mirror image in one 32x32 image: generate both halves consistently",
    ),
}


class GanPair(nn.Module):
    """G and D of a trained GAN for the cost columns: z (B, z_dim) -> D(G(z)) logits (B,) (a
    class-conditional pair draws the classes in turn)."""

    def __init__(self, g: nn.Module, d: nn.Module):
        super().__init__()
        self.g, self.d = g, d

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        k = int(getattr(self.g, "num_classes", 0))
        y = torch.arange(z.shape[0], device=z.device) % k if k else None
        return self.d(self.g(z, y), y)


class GenerateTask(TaskPlugin):
    """Image generation: a SAGAN per mechanism, FID and KID of its samples."""

    name = "generate"
    about = "a SAGAN per mechanism (its attention block), FID and KID of the samples (docs/generation.md)"
    metrics = (
        Metric(
            "fid",
            "FID",
            "FID of 1000 EMA samples on the fallback features (not comparable to published FIDs)",
            unit="",
            scale=1.0,
            digits=2,
            higher_is_better=False,
        ),
        Metric(
            "kid",
            "KID x1e3",
            "KID (unbiased MMD^2, cubic kernel) on the same features",
            unit="",
            scale=1e3,
            digits=2,
            higher_is_better=False,
        ),
    )
    datasets = GEN_TASKS
    custom_data = GEN_TASKS[GEN_DEFAULT_DATA]
    defaults = {
        "model": "sagan32_g",
        "tasks": (GEN_DEFAULT_DATA,),
        "seeds": 1,
        "batch_size": GenTrainConfig.batch_size,
        "lr": GenTrainConfig.lr,  # G's; D's is GenTrainConfig.lr_d
        "precise_bn": 0,  # G's BN statistics are its own (no classifier to re-estimate them for)
    }

    def __init__(self) -> None:
        self._features: dict[tuple[str, int], nn.Module] = {}

    def check_model(self, model: str) -> None:
        from visattn.registry import list_models, model_entry

        if model_entry(model).task != "generate" or not model.endswith("_g"):
            raise ValueError(
                f"compare --task generate needs a generator (NAME_g); {model!r} is not one "
                f"(generate models: {', '.join(list_models('generate'))})"
            )

    def load_data(self, data: Task, seed: int):
        from visattn.data.generation import load_gen_data

        return load_gen_data(data.data, data.image_size, seed=seed)

    def _shared_features(self, bundle, config: dict[str, Any]) -> nn.Module:
        from visattn.train.generate import GenTrainConfig, train_fallback_features

        key = (bundle.name, bundle.image_size)
        if key not in self._features:  # one network per data set for every mechanism and seed
            self._features[key] = train_fallback_features(
                bundle, GenTrainConfig.feature_epochs, 0, None, config.get("device", "auto")
            )
        return self._features[key]

    def train(self, config: dict[str, Any], bundle):
        import dataclasses

        from visattn.train.generate import GAN, GanTrainer, GenTrainConfig

        fields = set(GenTrainConfig.__dataclass_fields__)
        cfg = GenTrainConfig(**{k: v for k, v in config.items() if k in fields and k != "precise_bn"})
        cfg.fid_every = cfg.epochs  # FID once, after the last epoch
        features = self._shared_features(bundle, config)
        res = GanTrainer(cfg, bundle, bar_position=1, features=features).run()
        gan = res.model
        if not isinstance(gan, GAN):
            raise TypeError(f"the GAN trainer returned a {type(gan).__name__}, expected a GAN")
        return dataclasses.replace(res, model=GanPair(gan.g, gan.d))

    def cost_input(self, data: Task, batch: int, device: torch.device) -> Any:
        return torch.randn(batch, 128, device=device)

    def cost_step(self, model, data, info, batch, device):
        from visattn.models.gan import hinge_g_loss

        z = torch.randn(batch, model.g.z_dim, device=device)
        return lambda: hinge_g_loss(model(z))


register_task(GenerateTask())
