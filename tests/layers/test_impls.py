"""Every implementation of every registered mechanism equals that mechanism's reference.

Reads registry data only (``AttentionInfo.impls``, ``dtypes``, ``test_kwargs``,
``test_variants``) and the contract (``impl=``, ``supported_impls()``, ``select_impl``), so a
mechanism or an implementation added later is swept with no extra code.

For every configuration (``test_kwargs`` and each ``test_variants`` entry merged over it) and
random shapes (hypothesis: batch 1-2, H, W 1-9, channels from a few choices), every
implementation the module supports, in every dtype the mechanism declares, in train and in
eval mode, with gradients off (the inference path) and on (input and parameter gradients
compared too), is compared with the float64 reference on the same weights, on the
``pytest --device`` device (TF32 off). Tolerances are relative L2 errors per dtype (``TOL``:
float64 rounding, float32 rounding, bfloat16's 8-bit mantissa); a gradient is measured
against the larger of its own norm and a tenth of the largest reference gradient's norm,
since gradients that vanish in exact arithmetic (a key bias under a softmax over
positions) keep only rounding noise.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import visattn

NAMES = visattn.list_attention()
#: relative L2 error allowed against the float64 reference, per dtype (outputs and gradients)
TOL = {"float64": 1e-9, "float32": 2e-4, "float16": 1e-2, "bfloat16": 6e-2}


def configs(name: str) -> list[dict]:
    info = visattn.attention_info(name)
    return [dict(info.test_kwargs)] + [{**info.test_kwargs, **v} for v in info.test_variants]


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-2) -> float:
    """||a - b|| / max(||b||, floor): relative, and relative to ``floor`` for tensors whose exact
    value is near zero (e.g. the gradient of a key bias, which cancels in a softmax over positions)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(floor)).item()


@pytest.mark.parametrize("name", NAMES)
def test_every_impl_is_reachable_from_the_test_configurations(name):
    # The sweep below runs supported_impls() of each configuration: together they must cover
    # every registered implementation, and each must include the reference.
    info = visattn.attention_info(name)
    assert info.impls[0] == "reference" and "auto" not in info.impls
    seen = set()
    for kw in configs(name):
        supported = visattn.create_attention(name, 8, **kw).supported_impls()
        assert "reference" in supported and set(supported) <= set(info.impls)
        seen |= set(supported)
    assert seen == set(info.impls)


def _run(m, x, grad_out, grad: bool):
    """Output and (with grad) the input and parameter gradients of <y, grad_out>."""
    if not grad:
        with torch.no_grad():
            return m(x), {}
    x = x.detach().requires_grad_(True)
    y = m(x)
    (y.double() * grad_out).sum().backward()
    grads = {"input": x.grad}
    grads.update({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    return y.detach(), grads


#: (mechanism, configuration index): every configuration is swept, not left to the draws (which
#: derandomize seeds from this file's source, so an edit could silently stop reaching one).
CASES = [(name, i) for name in NAMES for i in range(len(configs(name)))]


@pytest.mark.parametrize(("name", "config"), CASES, ids=[f"{n}-{i}" for n, i in CASES])
@settings(
    max_examples=3, deadline=None, derandomize=True, phases=(Phase.explicit, Phase.generate)
)  # no shrinking: a failure prints its draws
@given(data=st.data())
def test_impls_match_the_reference(name, config, data, device):
    # On CUDA, TF32 convolutions/matmuls would round float32 to 10 mantissa bits: off for this test.
    with _no_tf32():
        _sweep(name, configs(name)[config], data, device)


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _sweep(name, kw, data, device):
    info = visattn.attention_info(name)
    dim = data.draw(st.sampled_from([4, 8]), label="dim")
    dim_out = data.draw(st.sampled_from([None, 4, 12]), label="dim_out")
    batch = data.draw(st.integers(1, 2), label="batch")
    height = data.draw(st.integers(1, 9), label="H")
    width = data.draw(st.integers(1, 9), label="W")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    base = visattn.create_attention(name, dim, dim_out, dtype=torch.float64, device=device, **kw)
    x = torch.randn(batch, dim, height, width, dtype=torch.float64, device=device)
    with torch.no_grad():
        grad_out = torch.randn_like(base(x))
    assert base.select_impl(x) in base.supported_impls()  # auto never picks a path this module lacks
    for training in (False, True):
        for grad in (False, True):
            ref_m = copy.deepcopy(base).train(training)
            ref_m.impl = "reference"
            ref, ref_grads = _run(ref_m, x, grad_out, grad)
            grad_scale = max([0.1 * g.norm().item() for g in ref_grads.values()] + [1e-2])
            for impl in ("auto", *base.supported_impls()):
                for dtype_name in info.dtypes:
                    dtype = getattr(torch, dtype_name)
                    m = copy.deepcopy(base).to(dtype).train(training)
                    m.impl = impl
                    y, grads = _run(m, x.to(dtype), grad_out, grad)
                    where = f"{name} impl={impl} ({m.select_impl(x)}) {dtype_name} train={training} grad={grad}"
                    assert y.dtype == dtype, where
                    assert rel_err(y, ref) <= TOL[dtype_name], f"{where}: output error {rel_err(y, ref):.3g}"
                    assert grads.keys() == ref_grads.keys(), where
                    for key, g in grads.items():
                        err = rel_err(g, ref_grads[key], floor=grad_scale)
                        assert err <= TOL[dtype_name], f"{where}: gradient of {key} error {err:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_impl_is_validated(name):
    info = visattn.attention_info(name)
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'reference'.*got 'nope'"):
        visattn.create_attention(name, 8, impl="nope", **info.test_kwargs)
    m = visattn.create_attention(name, 8, impl="reference", **info.test_kwargs)
    x = torch.randn(1, 8, 3, 4)
    assert m.impl == "reference" and m.select_impl(x) == "reference"
    m.impl = "auto"
    assert m.select_impl(x) in m.supported_impls()
