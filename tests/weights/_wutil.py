"""Helpers of the weight-conversion tests: weights that exercise every tensor, errors, a local server.

Weights (CHECKPOINTS.md section F): freshly initialised weights plus a little noise leave many
tensors without effect on the output (a wrong mapping of them would pass). :func:`exercise_`
redraws every floating parameter at a variance-preserving scale, measures BatchNorm statistics on
a batch and jitters them by about 1% (more makes deep SiLU networks amplify the mismatch into
outputs of 1e7, where float32 rounding alone exceeds the tolerance); :func:`inert_tensors` then names the tensors whose change does not
move the output, so a test can assert that only the ones that provably cannot (biases that
cancel in a softmax over positions) are inert.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Callable, Iterator

import torch
from torch import nn


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@torch.no_grad()
def redraw_(name: str, t: torch.Tensor, gen: torch.Generator) -> None:
    """One tensor at a variance-preserving scale: matrices / kernels N(0, 1/fan_in), norm scales
    1 + 0.2 N(0, 1), biases and vectors 0.2 N(0, 1)."""
    noise = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
    if t.dim() >= 2:
        fan_in = max(1, t[0].numel())
        t.copy_(noise / fan_in**0.5)
    elif name.endswith("weight"):
        t.copy_(1.0 + 0.2 * noise)
    else:
        t.copy_(0.2 * noise)


@torch.no_grad()
def exercise_(model: nn.Module, x: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """Redraw every floating parameter (:func:`redraw_`), then BatchNorm statistics measured on
    ``x`` (a forward in train mode, cumulative average) and jittered (means by 1% of the standard
    deviation, variances by up to 2%); returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.is_floating_point():
            redraw_(name, p, gen)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if x is not None and bns:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        model(x)
        for m, mom in zip(bns, saved):
            m.momentum = mom
    for m in bns:
        if m.running_var is None:
            continue
        std = m.running_var.clamp_min(1e-6).sqrt()
        m.running_mean.add_(0.01 * std * torch.randn(std.shape, generator=gen).to(std.dtype))
        m.running_var.mul_(torch.empty(std.shape).uniform_(0.98, 1.02, generator=gen).to(std.dtype))
    return model.eval()


@torch.no_grad()
def inert_tensors(
    forward: Callable[[], torch.Tensor], tensors: dict[str, torch.Tensor], threshold: float = 1e-4
) -> list[str]:
    """Names of the tensors whose perturbation (in place, restored after) changes ``forward()``'s
    output by less than ``threshold`` relative."""
    base = forward()
    gen = torch.Generator().manual_seed(1)
    inert = []
    for name, t in tensors.items():
        if not t.is_floating_point():
            continue
        old = t.clone()
        scale = old.abs().mean().clamp_min(0.1)
        t.add_(scale * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype))
        if rel_err(forward(), base) < threshold:
            inert.append(name)
        t.copy_(old)
    return inert


def one_line_error(capsys_or_err, command: str) -> str:
    err = capsys_or_err if isinstance(capsys_or_err, str) else capsys_or_err.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    prefix = f"visattn {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) :].strip()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes of the test server: ``files`` (path -> bytes, with the headers the Hugging Face Hub
    adds, so ``HF_ENDPOINT`` may point here); ``/short/...`` announces more bytes than it sends and
    closes; anything else is 404 (with the Hub's "repository not found" error code)."""

    files: dict[str, bytes] = {}
    hits: list[str] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, head_only: bool) -> None:
        type(self).hits.append(self.path)
        path = self.path.split("?")[0]
        if path.startswith("/short/"):
            body = type(self).files[path[len("/short") :]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head_only:
                self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        body = type(self).files.get(path)
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("X-Error-Message", "Repository not found")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        # what the Hugging Face Hub adds to a file (HF_ENDPOINT may point here)
        self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(False)

    def do_HEAD(self) -> None:
        self._send(True)


@contextlib.contextmanager
def local_server(files: dict[str, bytes]) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving ``files``; yields (base URL, the paths requested)."""
    handler = type("Handler", (_Handler,), {"files": dict(files), "hits": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
