"""Conformance suite: every registered mechanism is held to the same contract.

Parametrised over ``visattn.list_attention()``, so a mechanism added later is tested with
no extra code. Each mechanism is built from its ``attention_info(name).test_kwargs``.
"""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch

import visattn
from visattn.flops import count_flops
from visattn.registry import attention_class

NAMES = visattn.list_attention()
DIM = 8
SIZES = [(1, 1), (2, 3), (5, 7), (8, 8), (3, 11)]


def make(name, dim=DIM, dim_out=None, **extra):
    kw = dict(visattn.attention_info(name).test_kwargs)
    kw.update(extra)
    return visattn.create_attention(name, dim, dim_out, **kw)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", NAMES)
def test_info_is_complete(name):
    info = visattn.attention_info(name)
    assert info.name == name
    assert info.cost in ("linear", "quadratic", "local")
    assert info.receptive_field in ("global", "local")
    if info.receptive_field == "local":
        assert info.window_arg is not None
        m = make(name)
        assert m.receptive_field == getattr(m, info.window_arg)
    assert set(info.export) <= {"onnx", "compile", "torchscript"}
    assert attention_class(name).registry_name == name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_any_resolution(name, hw, batch, device):
    m = make(name, dim_out=12).to(device)
    for mode in (True, False):
        m.train(mode)
        x = torch.randn(batch, DIM, *hw, device=device)
        y = m(x)
        assert y.shape == (batch, 12, *hw)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_capability_data(name):
    # The fields code and tests read: impls, dtypes, window_centred, any_resolution.
    info = visattn.attention_info(name)
    cls = attention_class(name)
    assert info.impls[0] == "reference" and "auto" not in info.impls and cls.impls == info.impls
    assert "float32" in info.dtypes and set(info.dtypes) <= {"float16", "bfloat16", "float32", "float64"}
    if info.receptive_field == "local":
        assert isinstance(info.window_centred, bool), "a local mechanism says whether its window is centred"
    else:
        assert info.window_centred is None
    assert info.any_resolution  # every mechanism today; test_shapes_any_resolution holds it to that


DTYPE_CASES = [(n, d) for n in NAMES for d in visattn.attention_info(n).dtypes]


@pytest.mark.parametrize(("name", "dtype_name"), DTYPE_CASES)
def test_dtypes(name, dtype_name, device):
    dtype = getattr(torch, dtype_name)
    m = make(name).eval().to(device)
    x = torch.randn(2, DIM, 5, 6, device=device)
    ref = m(x)
    m = m.to(dtype)
    y = m(x.to(dtype))
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    tol = {torch.float32: 1e-5, torch.float64: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    assert rel_err(y, ref) < tol


@pytest.mark.parametrize("name", NAMES)
def test_undeclared_dtype_is_refused(name, monkeypatch):
    # The forward reads AttentionInfo.dtypes: a dtype outside it is one TypeError naming them.
    info = visattn.attention_info(name)
    cls = attention_class(name)
    assert cls.supported_dtypes == frozenset(getattr(torch, d) for d in info.dtypes)
    m = make(name).eval()
    declared = sorted(info.dtypes)
    msg = re.escape(f"{cls.__name__} supports dtypes {declared} (AttentionInfo.dtypes), got torch.float8_e4m3fn")
    with pytest.raises(TypeError, match=msg):
        m(torch.zeros(1, DIM, 3, 3, dtype=torch.float8_e4m3fn))
    # a mechanism that declares fewer dtypes refuses the others
    monkeypatch.setattr(cls, "supported_dtypes", frozenset({torch.float32}))
    with pytest.raises(
        TypeError, match=re.escape("supports dtypes ['float32'] (AttentionInfo.dtypes), got torch.float64")
    ):
        m.double()(torch.zeros(1, DIM, 3, 3, dtype=torch.float64))


def test_register_attention_checks_dtypes():
    from visattn.registry import register_attention

    class Toy(torch.nn.Module):
        pass

    with pytest.raises(
        ValueError,
        match=r"dtypes must be a non-empty subset of \('float32', 'float64', 'bfloat16', 'float16'\), got \('float8',\)",
    ):
        register_attention(
            "toy_dtypes",
            title="t",
            paper="p",
            cost="linear",
            receptive_field="global",
            positional="none",
            dtypes=("float8",),
        )(Toy)
    assert "toy_dtypes" not in visattn.list_attention()


@pytest.mark.parametrize("name", NAMES)
def test_to_dtype_moves_every_buffer(name):
    m = make(name).to(torch.float64)
    for n, t in list(m.named_parameters()) + list(m.named_buffers()):
        if t.is_floating_point():
            assert t.dtype == torch.float64, n


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())  # non-persistent buffers too
    assert ba.keys() == bb.keys()
    for key in ba:
        assert torch.equal(ba[key], bb[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_meta_build_to_empty_reset_equals_a_cpu_build(name):
    kw = visattn.attention_info(name).test_kwargs
    m = visattn.create_attention(name, DIM, device="meta", **kw)
    assert all(t.device.type == "meta" for t in list(m.parameters()) + list(m.buffers()))
    m.to_empty(device="cpu")
    torch.manual_seed(3)
    m.reset_parameters()
    ref = visattn.create_attention(name, DIM, **kw)
    torch.manual_seed(3)
    ref.reset_parameters()
    _assert_same_state(m, ref)
    x = torch.randn(2, DIM, 5, 4)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_reset_parameters_reinitialises_like_construction(name):
    kw = visattn.attention_info(name).test_kwargs
    m = visattn.create_attention(name, DIM, **kw)
    ref = copy.deepcopy(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    torch.manual_seed(5)
    m.reset_parameters()
    torch.manual_seed(5)
    ref.reset_parameters()
    _assert_same_state(m, ref)


@pytest.mark.parametrize("name", NAMES)
def test_factory_dtype_and_device_arguments(name, device):
    kw = visattn.attention_info(name).test_kwargs
    m = visattn.create_attention(name, DIM, dtype=torch.float64, device=device, **kw)
    tensors = list(m.named_parameters()) + list(m.named_buffers())
    assert tensors, "a mechanism with no parameters or buffers"
    for n, t in tensors:
        assert t.device.type == device.type, n
        if t.is_floating_point():
            assert t.dtype == torch.float64, n
    y = m(torch.randn(2, DIM, 3, 5, dtype=torch.float64, device=device))
    assert y.dtype == torch.float64 and y.device.type == device.type


WINDOWED = [n for n in NAMES if visattn.attention_info(n).window_centred is not None]


@pytest.mark.parametrize("name", WINDOWED)
def test_window_centring_of_the_receptive_field(name):
    # Output positions moved by a delta added at the centre of an odd random map: symmetric about
    # that pixel for a centred window (window_centred=True), not for fixed tiles (False).
    info = visattn.attention_info(name)
    m = make(name).double().eval()
    r = m.receptive_field
    side = 2 * r + 3
    c = side // 2
    x0 = torch.randn(1, DIM, side, side, dtype=torch.float64)
    x1 = x0.clone()
    x1[0, :, c, c] += torch.randn(DIM, dtype=torch.float64)
    f = m
    if name == "lambda":
        # Its content lambda sums over the whole map; the window is the position lambdas'. With the
        # table R = 0 the layer is content-only (SPEC 1, identity 2): the difference is the position part.
        content_only = copy.deepcopy(m)
        with torch.no_grad():
            content_only.pos_kernel.zero_()

        def f(x):
            return m(x) - content_only(x)

    with torch.no_grad():
        diff = (f(x1) - f(x0)).abs().sum(1)[0]  # (side, side)
    support = diff > 1e-9 * diff.max()
    assert support[c, c]
    assert not support.all(), "the delta moved every output: the test measures no window"
    symmetric = torch.equal(support, support.flip(0, 1))
    assert symmetric == info.window_centred, support.int()


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_and_non_contiguous(name):
    m = make(name).eval()
    x = torch.randn(2, DIM, 6, 5)
    ref = m(x)
    y_cl = m(x.contiguous(memory_format=torch.channels_last))
    assert rel_err(y_cl, ref) < 1e-5
    x_nc = torch.randn(2, DIM, 5, 6).transpose(2, 3)  # (2, C, 6, 5), non-contiguous
    assert not x_nc.is_contiguous()
    assert rel_err(m(x_nc), m(x_nc.contiguous())) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_eval_batch_independence(name, device):
    m = make(name).eval().to(device)
    x = torch.randn(3, DIM, 4, 5, device=device)
    y = m(x)
    for i in range(3):
        assert rel_err(m(x[i : i + 1]), y[i : i + 1]) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_token_adapter(name):
    m = make(name).eval()
    x = torch.randn(2, DIM, 3, 5)
    tokens = x.flatten(2).transpose(1, 2)
    out = visattn.TokenAdapter(m)(tokens, hw=(3, 5))
    assert out.shape == (2, 15, m.dim_out)
    assert rel_err(out, m(x).flatten(2).transpose(1, 2)) < 1e-6
    with pytest.raises(ValueError, match=r"needs N=H\*W=16"):
        visattn.TokenAdapter(m)(tokens, hw=(4, 4))


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name, device):
    m = make(name).train().to(device)
    x = torch.randn(2, DIM, 5, 4, device=device, requires_grad=True)
    m(x).square().mean().backward()
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{n} got no gradient"
            assert torch.isfinite(p.grad).all(), n
            assert p.grad.abs().sum() > 0, f"{n} got an all-zero gradient"
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    m = make(name, dim=4, **_small_heads(name)).double().train()
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


def _small_heads(name):
    kw = visattn.attention_info(name).test_kwargs
    out = {}
    for key in ("num_heads",):
        if key in kw:
            out[key] = 1
    for key in ("key_dim", "value_dim"):
        if key in kw:
            out[key] = 4
    return out


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_large_inputs(name, device):
    m = make(name).eval().to(device)
    x = 100 * torch.randn(2, DIM, 6, 6, device=device)
    ref = m(x)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y.float()).all()
    assert rel_err(y.float(), ref) < 0.1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_step(name, amp_dtype, device):
    # A training forward + backward under autocast: finite, and input gradients close to float32's.
    m = make(name).train().to(device)
    x = torch.randn(2, DIM, 6, 5, device=device, requires_grad=True)
    m(x).float().square().mean().backward()
    ref = x.grad.clone()
    x.grad = None
    m.zero_grad()
    with torch.autocast(device.type, dtype=amp_dtype):
        y = m(x)
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert rel_err(x.grad, ref) < 0.15


@pytest.mark.parametrize("name", NAMES)
def test_flop_counter_matches_formula(name):
    m = make(name).eval()
    for b, h, w in [(1, 4, 4), (2, 5, 7)]:
        x = torch.randn(b, DIM, h, w)
        assert count_flops(m, x) == m.flop_breakdown(h, w, b)["counted"]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_errors(name):
    m = make(name)
    with pytest.raises(
        ValueError, match=r"expects a 4-D feature map .*got a 3-D tensor of shape \(2, 20, 8\).*TokenAdapter"
    ):
        m(torch.randn(2, 20, DIM))
    with pytest.raises(ValueError, match=r"got a 5-D tensor"):
        m(torch.randn(1, DIM, 2, 2, 2))
    with pytest.raises(ValueError, match=r"expects \(B, C=8, H, W\), got shape \(2, 3, 4, 4\) with 3 channels"):
        m(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"channels-last \(B, H, W, C\)"):
        m(torch.randn(2, 4, 4, DIM))
    with pytest.raises(TypeError, match=r"floating-point tensor, got dtype torch.int64"):
        m(torch.ones(1, DIM, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"expects a torch.Tensor"):
        m([[1.0]])


@pytest.mark.parametrize("name", NAMES)
def test_bad_config_errors(name):
    cls = attention_class(name)
    info = visattn.attention_info(name)
    kw = dict(info.test_kwargs)
    with pytest.raises(ValueError, match=r"dim must be an int >= 1, got 0"):
        cls(0, **kw)
    with pytest.raises(TypeError, match=r"dim must be an int >= 1, got float"):
        cls(8.0, **kw)
    with pytest.raises(ValueError, match=r"dim_out must be an int >= 1, got -1"):
        cls(8, -1, **kw)
    if "num_heads" in kw:
        with pytest.raises(ValueError, match=r"must be divisible by num_heads=3"):
            cls(8, **{**kw, "num_heads": 3})
        with pytest.raises(ValueError, match=r"num_heads must be an int >= 1, got 0"):
            cls(8, **{**kw, "num_heads": 0})
    if info.window_arg is not None and info.window_centred:  # a centred window has an odd side; Swin's tiles need not
        with pytest.raises(ValueError, match=rf"{info.window_arg} must be odd"):
            cls(8, **{**kw, info.window_arg: 4})


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph_equals_eager(name):
    if "compile" not in visattn.attention_info(name).export:
        pytest.skip(f"{name} does not declare torch.compile support")
    torch._dynamo.reset()  # each mechanism recompiles the shared SpatialAttention.forward: stay under the limit
    m = make(name).eval()
    x = torch.randn(2, DIM, 5, 6)
    compiled = torch.compile(copy.deepcopy(m), fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert rel_err(compiled(x), m(x)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_onnxruntime(name):
    if "onnx" not in visattn.attention_info(name).export:
        pytest.skip(f"{name} does not declare ONNX export support")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = make(name).eval()
    x = torch.randn(2, DIM, 5, 6)
    buf = io.BytesIO()
    torch.onnx.export(m, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False, opset_version=17)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(y), m(x)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_trace_matches(name):
    if "torchscript" not in visattn.attention_info(name).export:
        pytest.skip(f"{name} does not declare TorchScript support")
    m = make(name).eval()
    x = torch.randn(2, DIM, 5, 6)
    with torch.no_grad():
        traced = torch.jit.trace(m, (x,))
        assert rel_err(traced(x), m(x)) < 1e-6


def test_gpu_models_check_script_trains_segmentation_models(device):
    # benchmarks/gpu_models_check.py (run by benchmarks/gpu_check.sh) gave segmentation models
    # class-index targets of shape (B,), so every dense model failed its training step
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_models_check.py"
    spec = importlib.util.spec_from_file_location("gpu_models_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = mod.check_model("fpn_resnet_tiny", device, 32)
    assert row["ok"], row


RENAMED = [(n, old, new) for n in NAMES for old, new in attention_class(n).renamed_args.items()]


@pytest.mark.parametrize(("name", "old", "new"), RENAMED)
def test_renamed_argument_names_the_new_one(name, old, new):
    with pytest.raises(TypeError, match=rf"argument '{old}' was renamed to '{new}'; pass {new}=\.\.\. instead"):
        make(name, **{old: None})


def test_contract_capability_table_lists_every_mechanism_as_registered():
    # docs/contract.md's capability table: one row per registered mechanism, cost and receptive
    # field as the registry says (it listed 5 of the 10).
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "contract.md").read_text()
    for name in NAMES:
        info = visattn.attention_info(name)
        assert f"| `{name}` | {info.cost} | {info.receptive_field}" in text, name
