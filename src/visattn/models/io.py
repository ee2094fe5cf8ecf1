"""Model weights as safetensors files.

:func:`save_weights` writes a module's ``state_dict`` with the ``safetensors`` package (the
``visattn[cli]`` extra), atomically (:func:`visattn._io.atomic_path`: a temporary file in the
same folder, then ``os.replace``, so a crash never leaves a half-written file under the final
name). It is the one weights writer: training runs and checkpoints write through it too. Tied
parameters (one tensor reachable under several names, e.g. ``tie_memories=True``) are stored
once and the other names recorded as aliases in the file's metadata; tensors that merely
overlap in memory are stored as copies. :func:`load_weights` checks names and shapes before
copying anything and says exactly what is missing, unexpected or of the wrong shape, and refuses
a tensor whose kind differs from the model's (floating-point weights stored as integers are not
cast silently) and malformed ``visattn.aliases`` metadata, naming the file.

Writing errors of the ``safetensors`` library (disk full, read-only file system) are raised as
``OSError`` with their errno and the file's name (:func:`safetensors_os_errors`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from visattn._io import atomic_path

__all__ = ["save_weights", "load_weights", "LoadResult", "safetensors_os_errors"]

_ALIASES = "visattn.aliases"


class LoadResult(NamedTuple):
    """Keys the model has that the file lacks, and keys the file has that the model lacks."""

    missing: list[str]
    unexpected: list[str]


def _safetensors():
    try:
        import safetensors  # noqa: F401
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching in the tests
        raise ImportError(
            "saving and loading weights needs the 'safetensors' package; install the extra with "
            "`pip install 'visattn[cli]'` (or `pip install safetensors`)"
        ) from e
    return save_file, load_file, safe_open


@contextlib.contextmanager
def safetensors_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an I/O failure inside ``safetensors`` (its ``SafetensorError`` "... (os error 28)")
    into the ``OSError`` it is, with that errno and ``path``; other errors pass unchanged."""
    try:
        yield
    except Exception as e:
        m = re.search(r"\(os error (\d+)\)", str(e)) if type(e).__name__ == "SafetensorError" else None
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), os.fspath(path)) from e


def _check_module(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")


def _check_path(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def save_weights(
    model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None, *, fsync: bool = False
) -> None:
    """Write ``model.state_dict()`` to ``path`` as a safetensors file (atomically).

    Args:
        model: the module.
        path: destination file (its folder must exist).
        metadata: extra string -> string metadata stored in the file header.
        fsync: flush the file and its folder to disk (checkpoints).
    """
    save_file, _, _ = _safetensors()
    _check_module(model)
    path = _check_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder!r} for the weights file does not exist")

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    same: dict[tuple, str] = {}  # identical view -> first name
    storages: set[tuple] = set()
    for name, t in model.state_dict().items():
        t = t.detach()
        view = (t.device, t.dtype, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if t.numel() > 0 and view in same:  # a tied parameter: store once
            aliases[name] = same[view]
            continue
        storage = (t.device, t.untyped_storage().data_ptr())
        if t.numel() > 0:
            same[view] = name
            # A tensor overlapping one already stored (a view of a shared buffer) is stored as a copy.
            t = t.clone() if storage in storages else t
            storages.add(storage)
        tensors[name] = t.contiguous().cpu()

    meta = {"format": "pt", _ALIASES: json.dumps(aliases, sort_keys=True)}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        meta[k] = v
    with atomic_path(path, fsync=fsync) as tmp, safetensors_os_errors(tmp):
        save_file(tensors, str(tmp), metadata=meta)


def _kind(dtype: torch.dtype) -> str:
    """floating, complex, bool or integer: a load may cast within a kind (float16 -> float32), not across."""
    if dtype.is_floating_point:
        return "floating"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def _aliases(meta: dict[str, str], path: str) -> dict[str, str]:
    """The file's ``visattn.aliases`` metadata: a JSON object of tensor name -> stored name."""
    text = meta.get(_ALIASES, "{}")
    try:
        aliases = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: metadata {_ALIASES!r} is not valid JSON ({e}): {text[:100]!r}") from None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ValueError(
            f"{path}: metadata {_ALIASES!r} must be a JSON object of tensor name -> stored name, got {text[:100]!r}"
        )
    return aliases


def load_weights(model: nn.Module, path, strict: bool = True) -> LoadResult:
    """Load a safetensors file written by :func:`save_weights` (or any flat safetensors state dict).

    Shapes are always checked (``ValueError`` naming every mismatched key before anything is
    copied); with ``strict=True`` missing or unexpected keys raise ``ValueError`` too, else they
    are returned. Tensors are copied into the model's own parameters and buffers (their device
    and dtype are kept), so ties inside the model stay tied.

    Returns:
        :class:`LoadResult` (missing, unexpected) key lists.
    """
    _, load_file, safe_open = _safetensors()
    _check_module(model)
    path = _check_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        loaded = load_file(path)
    except Exception as e:  # safetensors raises its own error types for a foreign or damaged file
        raise ValueError(f"cannot read {path!r} as a safetensors weights file: {e}") from e
    from visattn.models.blocks import remap_legacy_keys  # keys of older block layouts (issue 11)

    loaded = remap_legacy_keys(model, loaded)
    expected = model.state_dict()
    aliases = _aliases(meta, path)
    # ``safetensors.torch.save_model`` (used by visattn.train checkpoints) records each dropped
    # duplicate name as a top-level metadata entry {dropped: kept}.
    aliases.update({k: v for k, v in meta.items() if k in expected and k not in loaded and v in loaded})
    for alias, src in aliases.items():
        if src in loaded:
            loaded[alias] = loaded[src]
    # A second name of one stored tensor that the model does not have, while it has the other, is
    # not unexpected (e.g. M_v of a tied external-attention layer written before the tie was structural).
    for alias, src in aliases.items():
        for extra, kept in ((alias, src), (src, alias)):
            if extra in loaded and extra not in expected and kept in loaded and kept in expected:
                del loaded[extra]

    # keys a module loads without (a file written before they existed), e.g. SlideAttention's shift_merged
    optional = {
        f"{name}.{k}" if name else k
        for name, mod in model.named_modules()
        for k in getattr(mod, "_optional_state_keys", ())
    }
    missing = sorted(set(expected) - set(loaded) - optional)
    unexpected = sorted(set(loaded) - set(expected))
    wrong = [
        f"{k}: file {tuple(loaded[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in loaded and loaded[k].shape != expected[k].shape
    ]
    name = type(model).__name__
    if wrong:
        raise ValueError(f"{path}: shape mismatch for {len(wrong)} tensor(s) of {name}: " + "; ".join(wrong))
    kinds = [
        f"{k}: file {loaded[k].dtype}, model {expected[k].dtype}"
        for k in expected
        if k in loaded and _kind(loaded[k].dtype) != _kind(expected[k].dtype)
    ]
    if kinds:
        raise ValueError(
            f"{path}: {len(kinds)} tensor(s) of {name} are stored as another kind of number than the model "
            f"holds (a cast would change their values): " + "; ".join(kinds[:10]) + (" ..." if len(kinds) > 10 else "")
        )
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing from the file ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected in the file ({len(unexpected)}): {', '.join(unexpected)}")
        raise ValueError(
            f"{path} does not match {name}: " + "; ".join(parts) + " (pass strict=False to load the keys that match)"
        )
    model.load_state_dict({k: v for k, v in loaded.items() if k in expected}, strict=False)
    return LoadResult(missing, unexpected)
