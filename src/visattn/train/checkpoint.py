"""Checkpoints that survive a kill and never unpickle.

Layout under a run directory ``DIR``::

    DIR/checkpoints/step-00000120/model.safetensors        model weights (safetensors)
    DIR/checkpoints/step-00000120/train_state.safetensors  optimizer tensors + RNG states,
                                                           JSON metadata for every scalar
    DIR/checkpoints/latest.json                            {"dir": "step-00000120", ...}

A checkpoint is written into a temporary folder, flushed (fsync), renamed into place
(:func:`visattn._io.atomic_folder`), and only then does ``latest.json`` (itself written to a temporary file
and renamed) point at it. A kill at any instant leaves either the previous checkpoint
or the new one, never a half-written one. Older step folders are deleted after the
pointer moves (the newest ``keep`` stay); only the step folders the run itself wrote are
deleted: ``latest.json`` records them (``"written"``), and any other folder in ``checkpoints/``
(a user's ``step-00000020.bak``, a step folder of another run) is left alone. An existing step
folder is never overwritten.
Temporary folders ``.step-*.tmp-PID`` left by a failed or killed save are removed by the
next save (those of this process or of a process that no longer runs), and a save that
fails removes its own. Without ``latest.json`` the newest *complete* step folder (both
files present, readable safetensors headers) is the latest checkpoint; so is a complete
step folder newer than the one ``latest.json`` names (a kill between the rename and the pointer).

:class:`RunLock` is an exclusive lock on a run folder (``DIR/.lock``, ``fcntl.flock``) that
``visattn train`` holds for the whole run, so a second run on the same folder refuses. The lock
file is opened without following a symbolic link (``O_NOFOLLOW``) and must be a regular file, so a
planted link cannot make the lock truncate another file.

Loading reads only safetensors (a JSON header plus raw tensor bytes) and JSON:
no ``pickle``, no ``torch.load``. A file that is not safetensors is refused with a
``ValueError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from visattn._io import atomic_folder, atomic_write_text, tmp_name
from visattn.models.io import safetensors_os_errors

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "atomic_write_text",
    "optimizer_to_flat",
    "optimizer_from_flat",
    "load_weights",
    "remove_stale_tmp",
    "RunLock",
]

FORMAT = "visattn-checkpoint-1"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists, another user's (or not a pid we can ask about: leave it)
    return True


_TMP_RE = re.compile(r"^\.step-\d+\.tmp-(\d+)$")
# Temporary files of the atomic writes in the checkpoint folder and in the run folder itself.
_TMP_FILE_RE = {
    "checkpoints": re.compile(r"^\.latest\.json\.tmp-(\d+)$"),
    ".": re.compile(
        r"^\.(?:model\.safetensors|config\.json|metrics\.jsonl)\.tmp-(\d+)$"
        r"|^\.curves\.png\.tmp-(\d+)\.png$"
    ),
}


def _stale(pid: int) -> bool:
    return pid == os.getpid() or not _pid_alive(pid)


def remove_stale_tmp(run_dir: str | os.PathLike) -> list[Path]:
    """Remove ``checkpoints/.step-*.tmp-PID`` folders, and the temporary files of atomic writes
    (``.model.safetensors.tmp-PID``, ``checkpoints/.latest.json.tmp-PID``, ...), of this process
    or of dead processes; returns them."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            m = _TMP_RE.match(p.name)
            if m and p.is_dir() and _stale(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    for sub, pattern in _TMP_FILE_RE.items():
        folder = run_dir / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = pattern.match(p.name)
            if m and p.is_file() and _stale(int(m.group(1) or m.group(2))):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


class RunLock:
    """Exclusive lock on a run folder: ``DIR/.lock`` held with ``fcntl.flock`` (released when
    the process ends, however it ends). The file holds the owner's pid for the message a
    second run gets. Use as a context manager or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        from visattn.errors import RunFolderLocked

        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, run unlocked
            return self
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        refuse = f"the run folder's lock {str(self.path)!r} is a {{}}, not a regular file; refusing to {{}} it " + (
            "(remove it if no run uses the folder)"
        )
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EMLINK) and self.path.is_symlink():
                raise ValueError(refuse.format("symbolic link", "follow")) from None
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
            raise ValueError(refuse.format(kind, "use"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            try:
                holder = self.path.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise RunFolderLocked(
                f"run folder {str(self.run_dir)!r} is in use by another visattn process "
                f"(pid {holder}, lock {str(self.path)!r}); wait for it to finish or choose "
                "another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer=None,
    scheduler=None,
    scaler=None,
    state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint of ``model`` (+ optimizer, scheduler, GradScaler, RNG, ``state``).

    ``state`` holds JSON-able progress (epoch, step, running metrics...); ``state["step"]``
    names the folder. Returns the checkpoint folder. Call from one process only.
    """
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(run_dir)
    state = dict(state or {})
    name = f"step-{int(state.get('step', 0)):08d}"
    final = root / name
    if final.exists():
        raise FileExistsError(
            errno.EEXIST,
            "checkpoint folder already exists (refusing to overwrite it; resume from it or choose another --output)",
            str(final),
        )
    from visattn.models.io import save_weights

    try:
        with atomic_folder(final) as tmp:  # flushed and renamed into place; removed on error
            save_weights(model, tmp / "model.safetensors", metadata={"format": FORMAT})
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
            with safetensors_os_errors(tmp / "train_state.safetensors"):
                save_file(tensors, str(tmp / "train_state.safetensors"), metadata={"json": json.dumps(meta)})
        # final did not exist (checked above; the run lock keeps it so): the rename never replaces a step
    except BaseException as e:
        if isinstance(e, OSError) and not isinstance(e, FileExistsError):
            where = e.filename or tmp_name(final)
            raise OSError(e.errno, f"cannot write checkpoint {name} ({e.strerror or e})", str(where)) from e
        raise
    olds = sorted({n for n in _written(root) if n != name}, key=lambda n: int(n[5:]))
    drop = olds[: max(0, len(olds) - (keep - 1))]
    progress = {k: state[k] for k in ("epoch", "step", "batch_in_epoch") if k in state}
    written = [n for n in olds if n not in drop] + [name]
    atomic_write_text(root / "latest.json", json.dumps({"dir": name, "format": FORMAT, **progress, "written": written}))
    for n in drop:  # only folders this run recorded (a step-* name inside checkpoints/, never a link)
        p = root / n
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
    return final


def _written(root: Path) -> list[str]:
    """The step folders the run recorded in ``latest.json`` (``"written"``; a pointer written before
    that record existed names one: its ``"dir"``). Names that are not ``step-<digits>`` are dropped."""
    try:
        info = json.loads((root / "latest.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(info, dict):
        return []
    names = info.get("written", [info.get("dir")])
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and re.fullmatch(r"step-\d+", n)]


def _complete(folder: Path) -> bool:
    """Both files present with readable safetensors headers and visattn metadata."""
    try:
        with safe_open(str(folder / "model.safetensors"), framework="pt"):
            pass
        with safe_open(str(folder / "train_state.safetensors"), framework="pt") as f:
            return json.loads((f.metadata() or {})["json"]).get("format") == FORMAT
    except (OSError, SafetensorError, KeyError, ValueError, TypeError, AttributeError):
        return False


def _newest_complete(root: Path) -> Path | None:
    steps = sorted(
        (p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)),
        key=lambda p: int(p.name[5:]),
        reverse=True,
    )
    return next((p for p in steps if _complete(p)), None)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder ``run_dir/checkpoints/latest.json`` points at, or a newer complete
    ``step-*`` folder (a save killed before it moved the pointer); without that pointer, the
    newest complete ``step-*`` folder; None when there is neither."""
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return _newest_complete(pointer.parent) if pointer.parent.is_dir() else None
    try:
        info = json.loads(pointer.read_text())
        folder = pointer.parent / str(info["dir"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{pointer} is not a visattn checkpoint pointer: {e}") from e
    if folder.parent != pointer.parent or not folder.is_dir():
        raise ValueError(f"{pointer} points at {folder}, which is not a checkpoint folder in {pointer.parent}")
    # A save killed after renaming its folder into place but before moving the pointer leaves a
    # complete, newer step folder: that one is the latest (resuming from the older one would
    # later collide with it, since step folders are never overwritten).
    newest = _newest_complete(pointer.parent)
    if newest is not None and re.fullmatch(r"step-\d+", folder.name) and int(newest.name[5:]) > int(folder.name[5:]):
        return newest
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


def _checked_optimizer_state(tensors: dict[str, torch.Tensor], rest: Any, optimizer, where: Path) -> dict:
    """``optimizer_from_flat`` plus checks that the saved state fits ``optimizer``: group count and
    sizes, finite hyper-parameters, per-parameter tensors of the parameter's shape."""
    try:
        sd = optimizer_from_flat(tensors, rest)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{where}: optimizer state is malformed ({type(e).__name__}: {e})") from None
    groups, mine = sd["param_groups"], optimizer.param_groups
    if len(groups) != len(mine):
        raise ValueError(f"{where}: optimizer has {len(mine)} parameter group(s), the checkpoint {len(groups)}")
    params = []
    for gi, (g, m) in enumerate(zip(groups, mine)):
        ids = g.get("params")
        if not isinstance(ids, list) or len(ids) != len(m["params"]):
            raise ValueError(
                f"{where}: optimizer param_groups[{gi}]['params'] must list {len(m['params'])} parameters, got {ids!r}"[
                    :300
                ]
            )
        for key in ("lr", "eps", "weight_decay"):
            v = g.get(key, m.get(key))
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v == v or abs(v) == float("inf") or v < 0:
                raise ValueError(
                    f"{where}: optimizer param_groups[{gi}] field {key!r} must be a finite number >= 0, got {v!r}"
                )
        params += list(zip(ids, m["params"]))
    shapes = {}
    for pid, p in params:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise ValueError(f"{where}: optimizer parameter ids must be ints, got {pid!r}")
        shapes[pid] = p.shape
    for pid, st in sd["state"].items():
        if pid not in shapes:
            raise ValueError(f"{where}: optimizer state for parameter {pid}, which no group lists")
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape != shapes[pid]:
                raise ValueError(
                    f"{where}: optimizer tensor 'optim.{pid}.{k}' has shape {tuple(v.shape)}, "
                    f"parameter {pid} has shape {tuple(shapes[pid])}"
                )
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise ValueError(f"{where}: optimizer tensor 'optim.{pid}.{k}' holds NaN or infinite values")
    return sd


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer=None,
    scheduler=None,
    scaler=None,
    restore_rng: bool = True,
    check_state: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its ``state`` dict.

    ``path`` is a run folder (its ``latest.json`` is followed) or a checkpoint folder.
    ``check_state`` is called with the saved ``state`` before anything is restored (e.g. to
    refuse a run made with other options before its weights meet a model of another shape).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder {str(path)!r} does not exist (expected a run folder "
            "with checkpoints/latest.json or a checkpoints/step-* folder)"
        )
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
    where = folder / "train_state.safetensors"
    if not isinstance(meta.get("state", {}), dict):
        raise ValueError(f"{where}: 'state' must be a JSON object, got {type(meta['state']).__name__}")
    if check_state is not None:
        check_state(dict(meta.get("state", {})))
    opt_sd = None
    if optimizer is not None and "optimizer" in meta:
        opt_sd = _checked_optimizer_state(tensors, meta["optimizer"], optimizer, where)
    if scheduler is not None and "scheduler" in meta:
        sch = meta["scheduler"]
        le = sch.get("last_epoch") if isinstance(sch, dict) else None
        if isinstance(le, bool) or not isinstance(le, int) or le < 0:
            raise ValueError(f"{where}: scheduler field 'last_epoch' must be an int >= 0, got {le!r}")
    if restore_rng and "rng.cpu" in tensors:
        r, ref = tensors["rng.cpu"], torch.get_rng_state()
        if r.dtype != ref.dtype or r.shape != ref.shape:
            raise ValueError(
                f"{where}: 'rng.cpu' must be a {ref.dtype} tensor of shape {tuple(ref.shape)}, "
                f"got {r.dtype} {tuple(r.shape)}"
            )
    load_weights(model, folder / "model.safetensors")
    if opt_sd is not None:
        optimizer.load_state_dict(opt_sd)
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
