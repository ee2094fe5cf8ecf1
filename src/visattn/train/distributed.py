"""Process-group plumbing for ``torchrun``: one code path for 1 or N processes.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; when
``WORLD_SIZE > 1`` :func:`setup` joins the process group (gloo on CPU, nccl on CUDA,
one GPU per local rank). Without those variables everything runs in one process and
the reductions below are identities.

Bounded waits: the process group is created with a timeout (``visattn train
--dist-timeout``, default 600 s instead of torch's 30 min), and every rank records the
last optimizer step it reached in the process group's key-value store
(:func:`heartbeat`). When a collective fails or times out, :func:`peer_errors` turns
torch's error into a :class:`visattn.errors.PeerLost` that names the rank(s) that
stopped reporting and the step each reached.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "setup", "cleanup", "all_reduce_sum", "barrier", "heartbeat", "peer_errors"]


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False
    timeout: float | None = None  # seconds; None: torch's default

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def setup(device: str = "auto", timeout: float | None = 600.0) -> DistContext:
    """Join the process group if launched by torchrun with WORLD_SIZE > 1; pick the device.

    ``timeout`` (seconds) bounds every collective: a peer that stops answering makes the
    others fail after that long instead of torch's default 30 minutes.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    here = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        td = None if timeout is None else datetime.timedelta(seconds=float(timeout))  # None: torch's default
        try:
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=td)
        except RuntimeError as e:  # DistStoreError, DistNetworkError...: the others never came (in time)
            from visattn.errors import PeerLost

            limit = f"{timeout:g} s (--dist-timeout)" if timeout is not None else "torch's default timeout"
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise PeerLost(
                f"rank {os.environ.get('RANK', '?')}: the {world} processes did not all join the process group "
                f"at {where} within {limit}: {' '.join(str(e).split())[:300]}"
            ) from None
        here = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, here, timeout)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` joined it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over all processes (in place); identity in one process."""
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


_HEARTBEAT = "visattn/step/"


def _store():
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:
        return None


def heartbeat(ctx: DistContext, step: int) -> None:
    """Record in the process group's store that this rank is working on optimizer step ``step``."""
    if ctx.distributed:
        store = _store()
        if store is not None:
            store.set(f"{_HEARTBEAT}{ctx.rank}", str(int(step)))


def _last_steps(ctx: DistContext) -> dict[int, int | None]:
    store, out = _store(), {}
    for r in range(ctx.world_size):
        key = f"{_HEARTBEAT}{r}"
        try:
            out[r] = int(store.get(key)) if store is not None and store.check([key]) else None
        except Exception:
            out[r] = None
    return out


def _describe_lost(ctx: DistContext) -> str:
    steps = _last_steps(ctx)
    known = [v for v in steps.values() if v is not None]
    if not known:
        return "could not tell which process stopped (no step records in the store)"
    top = max(known)
    behind = [r for r, v in steps.items() if r != ctx.rank and (v is None or v < top)]
    if not behind:
        return (
            f"every process reported step {top}; the one that stopped is among ranks "
            f"{[r for r in steps if r != ctx.rank]}"
        )
    return (
        "; ".join(f"rank {r} stopped answering at step {steps[r] if steps[r] is not None else 'none'}" for r in behind)
        + f" (this rank is at step {steps.get(ctx.rank)})"
    )


_PEER_WORDS = (
    "timed out",
    "timeout",
    "connection closed",
    "connection reset",
    "pair closure",
    "broken pipe",
    "nccl",
    "gloo",
)


@contextlib.contextmanager
def peer_errors(ctx: DistContext):
    """Turn a failed or timed-out collective into :class:`visattn.errors.PeerLost` naming the silent rank(s)."""
    try:
        yield
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        if not ctx.distributed or not (isinstance(e, dist.DistError) or any(w in msg.lower() for w in _PEER_WORDS)):
            raise
        from visattn.errors import PeerLost

        limit = f"{ctx.timeout:g} s (--dist-timeout)" if ctx.timeout else "torch's default timeout"
        raise PeerLost(
            f"rank {ctx.rank}: a collective with the other processes failed within {limit}: "
            f"{_describe_lost(ctx)}. torch: {msg[:300]}"
        ) from e
