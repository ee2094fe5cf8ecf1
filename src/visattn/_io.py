"""Atomic file writes: the one helper every file the package writes goes through.

A file is written under a temporary name in the destination folder (``.NAME.tmp-PID`` plus an
optional suffix, e.g. ``.png`` so matplotlib picks the format), then renamed over ``NAME`` with
``os.replace``; on any error the temporary file is removed and the error re-raised, so a crash
never leaves a half-written file under the final name. ``fsync=True`` also flushes the file and
its folder to disk before and after the rename (checkpoints, run metadata). The temporary names
are the ones :func:`visattn.train.checkpoint.remove_stale_tmp` recognises after a killed run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_folder", "fsync_dir", "fsync_file"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
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


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's contents to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no such folder (yet), or no pathconf
        return 255


def tmp_name(path: Path, suffix: str = "") -> Path:
    """The temporary name an atomic write of ``path`` uses in this process: ``.NAME.tmp-PID`` plus
    ``suffix``; for a name near the file-name limit, ``NAME`` is cut short (``.NAM~.tmp-PID``) so
    the temporary name fits where the final one does."""
    tail = f".tmp-{os.getpid()}{suffix}"
    name, limit = f".{path.name}{tail}", _name_max(path.parent)
    if len(os.fsencode(name)) > limit:
        keep = path.name
        while keep and len(os.fsencode(f".{keep}~{tail}")) > limit:
            keep = keep[:-1]
        name = f".{keep}~{tail}"
    return path.with_name(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it in the ``with`` body; on success it replaces ``path``.

    On an error in the body or in the rename the temporary file is removed and the error
    re-raised (an ``OSError`` without a file name, e.g. ENOSPC from ``write()``, names ``path``).
    ``suffix`` ends the temporary name (``".png"`` for writers that infer the format from it).
    ``fsync=True`` flushes the file before the rename and the folder after it.
    """
    path = Path(path)
    tmp = tmp_name(path, suffix)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # e.g. ENOSPC: say which file
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; flushed to disk unless ``fsync=False``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk with ``fsync=True``)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder ``.NAME.tmp-PID`` beside ``path``; fill it in the ``with`` body.

    On success every file in it and the folder are flushed to disk, the folder is renamed to
    ``path`` (which must not exist: ``os.rename`` never replaces a folder silently) and the
    parent is flushed. On an error the temporary folder is removed and the error re-raised.
    """
    path = Path(path)
    tmp = tmp_name(path)
    try:
        tmp.mkdir()
        yield tmp
        for f in sorted(tmp.iterdir()):
            if f.is_file():
                fsync_file(f)
        fsync_dir(tmp)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
