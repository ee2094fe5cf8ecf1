"""Where weights come from: a local file, an ``http(s)://`` URL, or the Hugging Face Hub.

:func:`fetch` turns a source into a local file:

* a path: the file itself (``~`` expanded);
* ``http://`` / ``https://``: downloaded once into the cache (:func:`cache_dir`) under a folder
  named by a hash of the URL, with a progress bar on stderr (tqdm, when installed), written
  atomically (:func:`visattn._io.atomic_path`: a download that fails or is interrupted leaves
  nothing under the final name, and its temporary file is removed), and checked against a sha256
  (or a prefix of one, torch hub's file-name convention) when one is known; a later call finds it
  in the cache and downloads nothing;
* ``hf-hub:ORG/REPO[:FILE]``: ``huggingface_hub.hf_hub_download`` (the ``hub`` extra), which keeps
  its own cache and checks its own hashes; without ``FILE``, ``model.safetensors`` and then
  ``pytorch_model.bin``; ``HF_ENDPOINT`` names a mirror (read at each call).

Every failure is one ``ValueError`` / ``OSError`` line that names the source: a missing file, an
unreachable URL, an HTTP error, a short download, a sha256 mismatch, a repository or file the hub
does not have.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from visattn._io import atomic_path
from visattn.errors import VisattnError

__all__ = ["fetch", "cache_dir", "download_url", "download_hub", "file_sha256", "HubUnavailable", "is_remote"]

#: Bytes per read while downloading.
_CHUNK = 1 << 20


class HubUnavailable(VisattnError, ImportError):
    """An ``hf-hub:`` source without the ``huggingface_hub`` package."""


def cache_dir() -> Path:
    """The download cache: ``$VISATTN_CACHE``, else ``$XDG_CACHE_HOME/visattn``, else
    ``~/.cache/visattn`` (URLs under ``weights/``; hub files under ``hf/`` only when
    ``VISATTN_CACHE`` is set, else in huggingface_hub's own cache, shared with timm)."""
    env = os.environ.get("VISATTN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "visattn"


def is_remote(source: str) -> bool:
    """Whether ``source`` names a URL or a hub file (rather than a local path)."""
    return source.startswith(("http://", "https://", "hf-hub:"))


def fetch(source: str, *, sha256: str | None = None, progress: bool = True) -> Path:
    """The local file for ``source`` (see the module docstring), downloading it if needed."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"a weights source must be a path, a URL or hf-hub:ORG/REPO, got {type(source).__name__}")
    source = os.fspath(source)
    if source.startswith("hf-hub:"):
        return download_hub(source[len("hf-hub:") :])
    if source.startswith(("http://", "https://")):
        return download_url(source, sha256=sha256, progress=progress)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"no weights file {source!r} (expected a .safetensors / .pth / .pth.tar / .bin file, an http(s):// "
            "URL, hf-hub:ORG/REPO[:FILE], or a name from `visattn convert --list`)"
        )
    if not path.is_file():
        raise IsADirectoryError(f"{source!r} is a folder, not a weights file")
    if sha256:
        _check_sha256(path, file_sha256(path), sha256, source)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(path: Path, digest: str, expected: str, what: str) -> None:
    if not digest.startswith(expected.lower()):
        raise ValueError(f"sha256 of {what} is {digest[:16]}..., expected {expected[:16]}...: not the published file")


def _url_path(url: str) -> Path:
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    return cache_dir() / "weights" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _bar(total: int | None, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the cli extra
        return None
    return tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr, disable=not enabled
    )


def download_url(url: str, *, sha256: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` into the cache (once) and return the cached file (see the module docstring)."""
    dest = _url_path(url)
    if dest.is_file():
        if sha256:
            _check_sha256(dest, file_sha256(dest), sha256, f"the cached {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "visattn"}), timeout=timeout)
    except urllib.error.HTTPError as e:
        raise OSError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise OSError(f"cannot download {url}: {reason}") from None
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    h, n = hashlib.sha256(), 0
    bar = _bar(total, f"downloading {dest.name}", progress)
    try:
        with resp, atomic_path(dest) as tmp, open(tmp, "wb") as f:
            try:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as e:
                raise OSError(
                    f"download of {url} failed after {n} bytes ({type(e).__name__}: {e}); nothing was kept"
                ) from None
            if total is not None and n != total:
                raise OSError(f"download of {url} ended after {n} of {total} bytes; nothing was kept")
            if sha256:
                _check_sha256(dest, h.hexdigest(), sha256, f"the download of {url}")
    finally:
        if bar is not None:
            bar.close()
    return dest


def download_hub(spec: str) -> Path:
    """``ORG/REPO[:FILE]`` from the Hugging Face Hub (its cache; see the module docstring)."""
    repo, _, filename = spec.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"expected hf-hub:ORG/REPO[:FILE], got hf-hub:{spec}")
    try:
        from huggingface_hub import errors, hf_hub_download
    except ImportError as e:
        raise HubUnavailable(
            f"hf-hub:{spec} needs the huggingface_hub package: pip install 'visattn[hub]' (or download the file "
            "and pass its path)"
        ) from e
    hf_cache = str(cache_dir() / "hf") if os.environ.get("VISATTN_CACHE") else None
    names = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
    for i, name in enumerate(names):
        try:
            # HF_ENDPOINT (a mirror) is read at each call, not only when huggingface_hub is imported
            return Path(hf_hub_download(repo, name, cache_dir=hf_cache, endpoint=os.environ.get("HF_ENDPOINT") or None))
        except errors.RepositoryNotFoundError:
            raise ValueError(
                f"hf-hub:{repo}: no such repository on the Hugging Face Hub (or it is private or gated)"
            ) from None
        except errors.RevisionNotFoundError:
            raise ValueError(f"hf-hub:{repo}: the repository has no main revision") from None
        except errors.LocalEntryNotFoundError as e:
            raise OSError(f"hf-hub:{repo}: the Hub cannot be reached and {name} is not in the cache ({e})") from None
        except errors.EntryNotFoundError:
            if i + 1 < len(names):
                continue
            tried = " or ".join(names)
            raise ValueError(f"hf-hub:{repo} has no file {tried}; name one with hf-hub:{repo}:FILE") from None
        except errors.HfHubHTTPError as e:
            raise OSError(f"hf-hub:{repo}: {' '.join(str(e).split())}") from None
    raise AssertionError("unreachable")  # pragma: no cover
