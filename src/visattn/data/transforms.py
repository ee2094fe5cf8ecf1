"""Augmentation, normalisation and batching in plain torch (no torchvision).

Randomness is drawn per *example* for a whole epoch from a generator seeded with
``(seed, epoch)`` (:func:`epoch_augment_params`), never from the global RNG. A batch's
augmentation therefore depends only on which examples it holds: resuming mid-epoch,
or splitting a global batch across processes, gives exactly the same images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data.distributed import DistributedSampler

from visattn.data.datasets import ExampleSet

__all__ = ["AugmentParams", "epoch_augment_params", "random_crop_flip", "normalize", "EpochBatches", "eval_indices"]


@dataclass
class AugmentParams:
    """Per-example augmentation for one epoch.

    Attributes:
        offsets: (N, 2) int64 crop offsets (dy, dx) into the zero-padded image, in 0..2*pad.
        flips: (N,) bool horizontal flips.
        pad: padding on each side.
    """

    offsets: torch.Tensor
    flips: torch.Tensor
    pad: int


def epoch_augment_params(n: int, epoch: int, seed: int, pad: int, flip: bool) -> AugmentParams:
    """Draw crop offsets and flips for ``n`` examples from a generator seeded by (seed, epoch)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 7919 + 17)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return AugmentParams(offsets, flips, pad)


def random_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, one offset/flip per example.

    x: (B, C, H, W); offsets: (B, 2) in 0..2*pad; flips: (B,) bool -> (B, C, H, W).
    """
    if pad > 0:
        b, c, h, w = x.shape
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
        rows = offsets[:, 0:1] + torch.arange(h)  # (B, H)
        cols = offsets[:, 1:2] + torch.arange(w)  # (B, W)
        bi = torch.arange(b)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2).contiguous()
    if flips.any():
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    return x


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel; x: (B, C, H, W)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class EpochBatches:
    """The training batches of one epoch for one process.

    The order comes from :class:`torch.utils.data.distributed.DistributedSampler`
    (seeded with ``seed + epoch``; ``num_replicas=1`` in a single process), so a
    single process with batch ``B * N`` sees the union of what N processes with batch
    ``B`` see, step by step. ``start`` skips batches already consumed (resume).
    ``merge_single_last=True`` (models with BatchNorm, which cannot train on one value per
    channel) joins a last batch of one example to the batch before it.
    """

    def __init__(
        self,
        data: ExampleSet,
        batch_size: int,
        epoch: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        augment: str = "none",
        pad: int = 0,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        drop_last: bool = False,
        merge_single_last: bool = False,
    ):
        self.data, self.batch_size = data, batch_size
        sampler: DistributedSampler[int] = DistributedSampler(
            range(len(data)),  # type: ignore[arg-type]  # annotated as Dataset; it only needs len()
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        self.indices = torch.tensor(list(iter(sampler)), dtype=torch.int64)
        n = len(self.indices)
        self.num_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
        self.merged_last = merge_single_last and not drop_last and n > 1 and n % batch_size == 1
        if self.merged_last:
            self.num_batches -= 1
        self.mean, self.std = mean, std
        self.aug = None
        if augment != "none":
            self.aug = epoch_augment_params(len(data), epoch, seed, pad, flip="flip" in augment)

    def __len__(self) -> int:
        return self.num_batches

    def batch_indices(self, i: int) -> torch.Tensor:
        """Example indices of batch ``i`` (the last one holds one more when ``merged_last``)."""
        end = len(self.indices) if self.merged_last and i == self.num_batches - 1 else (i + 1) * self.batch_size
        return self.indices[i * self.batch_size : end]

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i``: normalised images (B, 3, H, W) float32 and labels (B,)."""
        idx = self.batch_indices(i)
        x, y = self.data.batch(idx)
        if self.aug is not None:
            x = random_crop_flip(x, self.aug.offsets[idx], self.aug.flips[idx], self.aug.pad)
        return normalize(x, self.mean, self.std), y

    def iter_from(self, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for i in range(start, self.num_batches):
            x, y = self.get(i)
            yield i, x, y


def eval_indices(n: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Test examples this process evaluates: ``rank::world_size`` (no padding, no duplicates)."""
    return torch.arange(rank, n, world_size)
