"""Checkpoints that survive a kill and never unpickle.

Layout under a run directory ``DIR``::

    DIR/checkpoints/step-00000120/model.safetensors        model weights (safetensors)
    DIR/checkpoints/step-00000120/train_state.safetensors  optimizer tensors + RNG states,
                                                           JSON metadata for every scalar
    DIR/checkpoints/latest.json                            {"dir": "step-00000120", ...}

A checkpoint is written into a temporary folder, flushed (fsync), renamed into place
(``os.replace``), and only then does ``latest.json`` (itself written to a temporary file
and renamed) point at it. A kill at any instant leaves either the previous checkpoint
or the new one, never a half-written one. Older step folders are deleted after the
pointer moves (the newest ``keep`` stay).

Loading reads only safetensors (a JSON header plus raw tensor bytes) and JSON:
no ``pickle``, no ``torch.load``. A file that is not safetensors is refused with a
``ValueError``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file, save_model

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "atomic_write_text",
           "optimizer_to_flat", "optimizer_from_flat", "load_weights"]

FORMAT = "visattn-checkpoint-1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# ---------------------------------------------------------------------------
# Optimizer state <-> (tensors, JSON)
# ---------------------------------------------------------------------------


def optimizer_to_flat(sd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> tensors ``{"optim.<param>.<key>": t}`` and a JSON-able rest."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = t
    for key, v in rest.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = []
    for g in rest["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def _set_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


def save_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module, optimizer=None, scheduler=None,
                    scaler=None, state: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write a checkpoint of ``model`` (+ optimizer, scheduler, GradScaler, RNG, ``state``).

    ``state`` holds JSON-able progress (epoch, step, running metrics...); ``state["step"]``
    names the folder. Returns the checkpoint folder. Call from one process only.
    """
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    state = dict(state or {})
    name = f"step-{int(state.get('step', 0)):08d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    save_model(model, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    tensors = _rng_tensors()
    meta: dict[str, Any] = {"format": FORMAT, "state": state}
    if optimizer is not None:
        opt_t, opt_rest = optimizer_to_flat(optimizer.state_dict())
        tensors.update(opt_t)
        meta["optimizer"] = opt_rest
    if scheduler is not None:
        meta["scheduler"] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    if scaler is not None and scaler.is_enabled():
        meta["scaler"] = scaler.state_dict()
    save_file(tensors, str(tmp / "train_state.safetensors"), metadata={"json": json.dumps(meta)})
    for f in ("model.safetensors", "train_state.safetensors"):
        _fsync_file(tmp / f)
    _fsync_dir(tmp)

    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / "latest.json", json.dumps({"dir": name, "format": FORMAT, **{
        k: state[k] for k in ("epoch", "step", "batch_in_epoch") if k in state}}))

    olds = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name != name)
    for p in olds[: max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder ``run_dir/checkpoints/latest.json`` points at, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text())
        folder = pointer.parent / str(info["dir"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{pointer} is not a visattn checkpoint pointer: {e}") from e
    if folder.parent != pointer.parent or not folder.is_dir():
        raise ValueError(f"{pointer} points at {folder}, which is not a checkpoint folder in {pointer.parent}")
    return folder


def _open_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(
            f"{str(path)!r} is not a safetensors file ({e}); visattn checkpoints are safetensors + JSON "
            "and are never loaded with pickle/torch.load"
        ) from e
    return tensors, meta


def load_weights(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load safetensors weights from ``path`` (a file, a checkpoint folder or a run folder)."""
    path = Path(path)
    if path.is_dir():
        ck = latest_checkpoint(path)
        path = (ck if ck is not None else path) / "model.safetensors"
    _open_safetensors(path)  # validates the format with a clear error before loading
    from visattn.models.io import load_weights as _load

    _load(model, path, strict=strict)


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer=None, scheduler=None,
                    scaler=None, restore_rng: bool = True) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its ``state`` dict.

    ``path`` is a run folder (its ``latest.json`` is followed) or a checkpoint folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(path)!r} does not exist (expected a run folder "
                                "with checkpoints/latest.json or a checkpoints/step-* folder)")
    folder = latest_checkpoint(path) if (path / "checkpoints").is_dir() else path
    if folder is None:
        raise FileNotFoundError(f"no checkpoint in {str(path)!r}: {path / 'checkpoints' / 'latest.json'} is missing")
    tensors, meta_s = _open_safetensors(folder / "train_state.safetensors")
    try:
        meta = json.loads(meta_s["json"])
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}")
    except (KeyError, ValueError) as e:
        raise ValueError(f"{folder / 'train_state.safetensors'} has no valid visattn metadata: {e}") from e
    load_weights(model, folder / "model.safetensors")
    if optimizer is not None and "optimizer" in meta:
        optimizer.load_state_dict(optimizer_from_flat(tensors, meta["optimizer"]))
    if scheduler is not None and "scheduler" in meta:
        sd = scheduler.state_dict()
        sd.update(meta["scheduler"])
        scheduler.load_state_dict(sd)
    if scaler is not None and "scaler" in meta and scaler.is_enabled():
        scaler.load_state_dict(meta["scaler"])
    if restore_rng:
        _set_rng(tensors)
    state = dict(meta.get("state", {}))
    state["checkpoint"] = str(folder)
    return state
