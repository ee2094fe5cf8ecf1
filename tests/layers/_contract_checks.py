"""Direct checks of the mechanism contract (issue 11) shared by the mechanism test files.

* every named implementation equals ``impl="reference"`` (float64, output and the input and
  parameter gradients, grad on and off, train and eval);
* a meta-device build + ``to_empty`` + ``reset_parameters()`` equals a normal build +
  ``reset_parameters()`` under the same seed (state dicts and every buffer exactly equal);
* the ``dtype=`` / ``device=`` factory arguments reach every parameter and buffer;
* an old-format state dict (renamed keys) loads exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def with_impl(m: nn.Module, impl: str, x: torch.Tensor) -> torch.Tensor:
    """m(x) through ``impl``, leaving ``m.impl`` as it was."""
    old = m.impl
    m.impl = impl
    try:
        return m(x)
    finally:
        m.impl = old


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


def assert_impls_match_reference(
    m: nn.Module, x: torch.Tensor, *, impls=None, tol: float = 1e-10, train: bool = True, grad: bool = True
) -> None:
    """Every implementation of float64 module ``m`` (and "auto") against "reference" on ``x``:
    outputs, and with ``grad`` the gradients of the input and of every parameter."""
    m.train(train)
    params = [p for p in m.parameters() if p.requires_grad]
    impls = [*m.impls[1:], "auto"] if impls is None else impls
    if grad:
        xg = x.detach().clone().requires_grad_(True)
        y_ref = with_impl(m, "reference", xg)
        g = torch.randn_like(y_ref)
        ref = torch.autograd.grad(y_ref, [xg, *params], g)
        for impl in impls:
            y = with_impl(m, impl, xg)
            assert y.grad_fn is not None, impl
            got = torch.autograd.grad(y, [xg, *params], g)
            assert _max_err(y, y_ref) < tol, (impl, "output", _max_err(y, y_ref))
            names = ["input"] + [n for n, p in m.named_parameters() if p.requires_grad]
            for name, a, b in zip(names, got, ref):
                assert _max_err(a, b) < tol, (impl, name, _max_err(a, b))
    else:
        with torch.no_grad():
            y_ref = with_impl(m, "reference", x)
            for impl in impls:
                y = with_impl(m, impl, x)
                assert y.grad_fn is None
                assert _max_err(y, y_ref) < tol, (impl, "output", _max_err(y, y_ref))


def assert_low_precision_matches_reference(m64: nn.Module, m: nn.Module, x: torch.Tensor, tol: float) -> None:
    """Module ``m`` (built in a lower precision, with its impl) loads float64 ``m64``'s weights and,
    grad off and on, gives its dtype and stays within relative L2 error ``tol`` of ``m64``'s
    reference on float64 ``x``."""
    ref = with_impl(m64, "reference", x)
    m.load_state_dict(m64.state_dict())
    dtype = next(m.parameters()).dtype
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            y = m(x.to(dtype))
        assert y.dtype == dtype
        err = ((y.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()
        assert err < tol, (grad, err)


def assert_meta_build_equals_normal_build(factory: Callable[..., nn.Module], x: torch.Tensor, seed: int = 7) -> None:
    """``factory(device=..., dtype=...)`` built on "meta", moved with ``to_empty`` and reset under a
    seed equals a CPU build reset under the same seed: state dicts exactly equal, non-persistent
    buffers too; a forward works."""
    meta = factory(device="meta")
    assert all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
    meta = meta.to_empty(device="cpu")
    torch.manual_seed(seed)
    meta.reset_parameters()
    normal = factory()
    torch.manual_seed(seed)
    normal.reset_parameters()
    sd_meta, sd_normal = meta.state_dict(), normal.state_dict()
    assert list(sd_meta) == list(sd_normal)
    for k in sd_normal:
        assert torch.equal(sd_meta[k], sd_normal[k]), k
    buf_meta, buf_normal = dict(meta.named_buffers()), dict(normal.named_buffers())
    assert list(buf_meta) == list(buf_normal)
    for k in buf_normal:
        assert torch.equal(buf_meta[k], buf_normal[k]), k
    for a, b in zip(meta.__dict__.items(), normal.__dict__.items()):  # plain attributes (flags) agree
        if not isinstance(a[1], (dict, torch.Tensor)) and not callable(a[1]):
            assert a == b, a
    with torch.no_grad():
        assert torch.equal(meta.eval()(x), normal.eval()(x))


def assert_factory_dtype(factory: Callable[..., nn.Module], x: torch.Tensor) -> None:
    """``dtype=torch.float64`` gives float64 floating parameters and buffers and a float64 output."""
    m = factory(dtype=torch.float64)
    tensors = dict(m.named_parameters())
    tensors.update(m.named_buffers())
    floating = {k: t for k, t in tensors.items() if t.is_floating_point()}
    assert floating, "no floating parameters"
    assert {k: t.dtype for k, t in floating.items()} == dict.fromkeys(floating, torch.float64)
    with torch.no_grad():
        assert m.eval()(x.double()).dtype == torch.float64


def assert_old_state_dict_loads(m: nn.Module, renamed: dict[str, str], fresh: nn.Module) -> None:
    """A state dict of ``m`` written with the old key names (``renamed``: old -> new attribute
    names) loads into ``fresh`` strictly and gives exactly ``m``'s state dict."""
    new_sd = m.state_dict()
    old_sd = {}
    for key, val in new_sd.items():
        for old, new in renamed.items():
            if key == new or key.startswith(new + "."):
                key = old + key[len(new) :]
                break
        old_sd[key] = val
    assert set(old_sd) != set(new_sd), "nothing renamed: the test would not test anything"
    result = fresh.load_state_dict(old_sd)
    assert not result.missing_keys and not result.unexpected_keys
    got = fresh.state_dict()
    assert list(got) == list(new_sd)
    for k in new_sd:
        assert torch.equal(got[k], new_sd[k]), k


def gradient_support(m: nn.Module, x: torch.Tensor, y: int, x_: int) -> torch.Tensor:
    """(H, W) bool: the input pixels output pixel (y, x_) depends on (non-zero input gradient)."""
    xg = x.detach().clone().requires_grad_(True)
    m(xg)[0, :, y, x_].sum().backward()
    assert xg.grad is not None
    return xg.grad[0].abs().sum(0) != 0


def is_centred(support: torch.Tensor, y: int, x_: int) -> bool:
    """True when the support is symmetric about (y, x_) (point reflection)."""
    h, w = support.shape
    for yy, xx in support.nonzero().tolist():
        ry, rx = 2 * y - yy, 2 * x_ - xx
        if not (0 <= ry < h and 0 <= rx < w and support[ry, rx]):
            return False
    return True
