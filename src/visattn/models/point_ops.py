"""Sampling and grouping on point clouds in plain torch: farthest point sampling and kNN.

Farthest point sampling on the CPU runs through ``fpsample`` (a Rust kernel from PyPI, the
``points`` extra) when it is installed: the same indices in the same order, 4-10x faster than the
vectorised torch loop (docs/points.md, "Sampling and grouping"); on other devices, or without it,
the torch loop runs. Every function takes coordinates
(B, N, 3) and is permutation-consistent: reordering the input points reorders (not changes)
what is picked, so a model built on them stays permutation-invariant. That is why farthest
point sampling starts at the point farthest from the cloud's centroid rather than at index 0
or a random one (the PCT and PointNet++ code draw a random start).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["farthest_point_sample", "knn", "index_points", "sample_and_group", "check_cloud_size"]


def check_cloud_size(n: int, need: int, what: str) -> None:
    """Raise ``ValueError`` when a cloud of ``n`` points is smaller than ``need`` (``what`` says why)."""
    if n < need:
        raise ValueError(
            f"a point cloud of {n} points is smaller than {what} ({need}); give clouds of >= {need} points"
        )


def _fpsample():
    try:
        import fpsample
    except ImportError:
        return None
    return fpsample


def farthest_point_sample(xyz: torch.Tensor, npoint: int, impl: str = "auto") -> torch.Tensor:
    """Indices (B, npoint) int64 of iterative farthest point sampling.

    The first pick is the point farthest from the centroid; each next one is the point whose
    squared distance to the picked set is largest. ``impl``: "torch" (vectorised over the batch,
    ``npoint`` sequential steps), "fpsample" (the library's CPU kernel, cloud by cloud) or "auto"
    (fpsample for CPU tensors when it is installed and nothing is being traced, else torch).
    """
    b, n, _ = xyz.shape
    check_cloud_size(n, npoint, "the farthest-point sample count")
    if impl not in ("auto", "torch", "fpsample"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'fpsample', got {impl!r}")
    lib = _fpsample() if impl != "torch" else None
    if impl == "fpsample" and lib is None:
        raise ValueError("impl='fpsample' needs the fpsample package (pip install 'visattn[points]')")
    pts = xyz.detach().float()
    centroid = pts.mean(1, keepdim=True)
    far = ((pts - centroid) ** 2).sum(-1).argmax(1)
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if lib is not None and xyz.device.type == "cpu" and not tracing:
        arr = pts.contiguous().numpy()
        picked = [lib.fps_sampling(arr[i], npoint, start_idx=int(far[i])).astype("int64") for i in range(b)]
        return torch.from_numpy(np.stack(picked))
    idx = torch.empty(b, npoint, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), device=xyz.device)
    rows = torch.arange(b, device=xyz.device)
    for i in range(npoint):
        idx[:, i] = far
        d = ((pts - pts[rows, far].unsqueeze(1)) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        far = dist.argmax(1)
    return idx


def knn(query: torch.Tensor, xyz: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, S, k) of the k nearest points of ``xyz`` (B, N, 3) to each ``query`` (B, S, 3),
    nearest first (``cdist`` + ``topk``)."""
    check_cloud_size(xyz.shape[1], k, "the neighbour count k")
    d = torch.cdist(query.detach().float(), xyz.detach().float())
    return d.topk(k, dim=-1, largest=False, sorted=True).indices


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather rows: points (B, N, C), idx (B, ...) -> (B, ..., C)."""
    b = points.shape[0]
    flat = idx.reshape(b, -1)
    out = points.gather(1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


def sample_and_group(npoint: int, k: int, xyz: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PCT's neighbour grouping: ``npoint`` centres by FPS, their k nearest neighbours.

    xyz (B, N, 3), feats (B, N, D) -> (centres (B, npoint, 3), grouped (B, npoint, k, 2D)),
    each neighbour's feature minus its centre's concatenated with the centre's feature.
    """
    fps = farthest_point_sample(xyz, npoint)
    new_xyz = index_points(xyz, fps)
    centre = index_points(feats, fps)  # (B, S, D)
    nbr = index_points(feats, knn(new_xyz, xyz, k))  # (B, S, k, D)
    centre_k = centre.unsqueeze(2).expand_as(nbr)
    return new_xyz, torch.cat([nbr - centre_k, centre_k], dim=-1)
