"""Reliability, round 3 (issue 21), mechanisms, models, weights and predict: an unmaterialised
(meta) module is refused, integer-stored weights and malformed alias metadata are refused naming
the file, training on after reparameterize() leaves the merged slide kernel alone, model sizes are bounded before
allocation, the work bound reflects time on this machine and long attention calls stay
interruptible, and bad input (dtype, zero-size maps, numpy ints, config.json fields, file names)
gets a message naming what was expected and what was given."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import _tiny_seg_model
import visattn
from _seg_fixtures import make_seg_folder
from visattn.cli import main
from visattn.layers import base
from visattn.models.io import load_weights, save_weights
from visattn.train.segment import SegTrainConfig, train_segment

ROOT = Path(__file__).resolve().parents[1]


# -- unmaterialised modules ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", [("external", {}), ("mhsa", {"num_heads": 2})])
def test_a_meta_device_mechanism_refuses_a_cpu_input(name, kw):
    with torch.device("meta"):
        m = visattn.create_attention(name, 8, **kw)
    with pytest.raises(ValueError) as e:
        m(torch.randn(1, 8, 4, 4))  # external used to return uninitialised memory
    assert str(e.value).endswith(
        "parameters are on the meta device (never materialised: call .to_empty(device=...) and then "
        "reset_parameters()), the input on cpu"
    )
    m.to_empty(device="cpu").reset_parameters()
    assert m(torch.randn(1, 8, 4, 4)).isfinite().all()


# -- weights files ----------------------------------------------------------------------------------------


def test_weights_stored_as_integers_are_refused_naming_the_tensor(tmp_path):
    m = torch.nn.Linear(3, 2)
    path = tmp_path / "w.safetensors"
    save_weights(m, path)
    t = load_file(str(path))
    save_file({"weight": (t["weight"] * 100).to(torch.int32), "bias": t["bias"]}, str(path))
    with pytest.raises(ValueError) as e:
        load_weights(torch.nn.Linear(3, 2), path)  # used to cast 0.57 * 100 -> 57 silently
    assert str(e.value) == (
        f"{path}: 1 tensor(s) of Linear are stored as another kind of number than the model holds (a cast "
        "would change their values): weight: file torch.int32, model torch.float32"
    )
    save_file({k: v.half() for k, v in t.items()}, str(path))  # float16 -> float32: a cast within a kind
    load_weights(torch.nn.Linear(3, 2), path)


@pytest.mark.parametrize(
    "aliases,msg",
    [
        ("{not json", "metadata 'visattn.aliases' is not valid JSON"),
        ('["weight"]', "metadata 'visattn.aliases' must be a JSON object of tensor name -> stored name, got"),
        ('{"weight": 3}', "metadata 'visattn.aliases' must be a JSON object of tensor name -> stored name, got"),
    ],
)
def test_malformed_alias_metadata_is_named(tmp_path, aliases, msg):
    path = tmp_path / "w.safetensors"
    t = {k: v.contiguous() for k, v in torch.nn.Linear(3, 2).state_dict().items()}
    save_file(t, str(path), metadata={"format": "pt", "visattn.aliases": aliases})
    with pytest.raises(ValueError) as e:  # were JSONDecodeError / AttributeError tracebacks
        load_weights(torch.nn.Linear(3, 2), path)
    assert str(e.value).startswith(f"{path}: {msg}")


# -- a merged slide layer keeps its merged kernel when trained on -------------------------------------------------


@pytest.mark.slow  # a few slide training steps: seconds on a loaded 2-core machine
def test_training_on_after_reparameterize_leaves_the_merged_kernel_alone():
    torch.manual_seed(0)
    merged = visattn.create_attention("slide", 8, num_heads=1, kernel_size=3, deformed=True)
    un = copy.deepcopy(merged)
    merged.reparameterize()
    kernel = merged.deform.weight.detach().clone()
    assert not merged.deform.weight.requires_grad
    un.deform.weight.requires_grad_(False)  # the un-merged module with its learned shifts frozen
    x = torch.randn(2, 8, 5, 5)
    for m in (un, merged):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.05)
        for _ in range(2):
            opt.zero_grad()
            m.train()(x).square().mean().backward()
            opt.step()
    assert torch.equal(merged.deform.weight, kernel)  # weight decay shrank it: the output drifted 1.3% in 5 steps
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(x), un.eval()(x), rtol=1e-5, atol=1e-6)
    merged.reset_parameters()  # un-merged again: the learned shifts train
    assert merged.deform.weight.requires_grad and not merged.reparameterized


# -- model sizes bounded before allocation ----------------------------------------------------------------------


def test_model_options_that_would_allocate_terabytes_are_refused_with_the_estimate(tmp_path, capsys):
    from visattn.models.info import check_model_size

    with pytest.raises(ValueError) as e:
        check_model_size("fpn_resnet_tiny", 3, fpn_channels=10**7)  # create_model tried 3.6e15 bytes
    assert str(e.value) == (
        "fpn_resnet_tiny: building it with {'fpn_channels': 10000000} (3.6e+15 parameters) needs an estimated "
        "13096.8 TiB of parameters, above the bound of 16.0 GiB; run it inside `with visattn.work_limit(...)` "
        "with a larger bound or None to proceed"
    )
    check_model_size("fpn_resnet_tiny", 3, fpn_channels=64)
    argv = ["train", "--model", "resnet_tiny", "--model-kwargs", '{"widths": [64, 128, 256, 10000000]}']
    assert main([*argv, "--epochs", "1", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visattn train: error: resnet_tiny: building it with {'widths': [64, 128, 256, 10000000]} (")
    assert "Traceback" not in err and len(err.splitlines()) == 1


# -- the work bound reflects time on this machine; long calls stay interruptible ----------------------------------


def test_the_work_bound_is_time_on_this_machines_cpu(monkeypatch):
    rate = base.cpu_flop_rate()
    assert 1e8 < rate < 1e14 and base.cpu_flop_rate() == rate  # measured once per thread count
    attn = visattn.create_attention("mhsa", 4, num_heads=1)
    flops = attn.analytic_flops(1024, 1024, 1)
    assert flops < base.DEFAULT_MAX_FLOPS  # 1.76e13: used to be accepted, then ran for tens of minutes
    monkeypatch.setattr(base, "cpu_flop_rate", lambda: 5e10)  # a 50 GFLOP/s CPU: about 6 minutes
    x = torch.zeros(1, 4, 1, 1).expand(1, 4, 1024, 1024)
    with pytest.raises(ValueError) as e:
        attn(x)
    assert str(e.value) == (
        f"MultiHeadSelfAttention: a (1, 4, 1024, 1024) input needs an estimated {flops:.3g} FLOPs, at least "
        f"{flops / 5e10 / 60:.1f} minutes on this machine's CPU ({torch.get_num_threads()} thread(s), 50 GFLOP/s "
        "in a float32 matrix product), above the bound of 60 s; run it inside `with visattn.work_limit(...)` "
        "with a larger bound or None to proceed"
    )
    with visattn.work_limit(max_seconds=None), pytest.raises(ValueError, match="above the bound of 1.6e\\+13"):
        with visattn.work_limit(max_flops=1.6e13):
            attn(x)
    with pytest.raises(ValueError, match="work_limit: max_seconds must be a positive number or None, got 0"):
        with visattn.work_limit(max_seconds=0):
            pass


@pytest.mark.parametrize(
    "name,kw,rows",
    [
        ("mhsa", {"num_heads": 2}, [100] * 5 + [76]),  # 576 keys: 100 rows per chunk
        ("sra", {"num_heads": 2, "sr_ratio": 2}, [400, 176]),  # 144 keys: 400 rows per chunk
    ],
)
def test_long_attention_calls_run_in_chunks_of_query_rows_with_the_same_result(monkeypatch, name, kw, rows):
    attn = visattn.create_attention(name, 8, **kw).eval()
    x = torch.randn(2, 8, 24, 24)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(q, *a, **k):
        calls.append(q.shape[2])
        return sdpa(q, *a, **k)

    with torch.no_grad():
        whole = attn(x)
        monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
        # the work of 100 query rows against 576 keys: 2 x 576 keys x (4 + 4) channels x 2 heads x 2 images
        monkeypatch.setattr(visattn.layers._ops, "CHUNK_FLOPS", 2 * 576 * 8 * 2 * 2 * 100)
        chunked = attn(x)
    assert calls == rows
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_a_long_attention_call_answers_ctrl_c_within_a_chunk(tmp_path):
    code = (
        "import time, torch, visattn\n"
        "torch.set_num_threads(1)\n"
        "attn = visattn.create_attention('mhsa', 16, num_heads=1)\n"
        "x = torch.randn(1, 16, 300, 300)\n"  # n = 90,000: 4 n^2 C = 5.2e11 FLOPs, about 25 s in one SDPA call
        "print('start', flush=True)\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        "    with torch.no_grad(), visattn.work_limit(max_seconds=None):\n"
        "        attn(x)\n"
        "    print('finished', time.perf_counter() - t0, flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', time.perf_counter() - t0, flush=True)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1"),
    )
    assert p.stdout.readline().strip() == "start"
    time.sleep(1.5)
    sent = time.perf_counter()
    p.send_signal(signal.SIGINT)
    out = p.stdout.readline().split()
    waited = time.perf_counter() - sent
    p.wait(timeout=60)
    assert out[0] == "interrupted", out
    assert waited < 5.0, waited  # was 24 s: one SDPA call on the whole map ignored Ctrl-C to its end


# -- bad input: messages that say what and which ----------------------------------------------------------------


def test_images_of_another_dtype_or_without_pixels_are_named():
    m = visattn.create_model("resnet_tiny", num_classes=3).eval()
    with pytest.raises(TypeError) as e:
        m(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    assert str(e.value) == (
        "ResNet expects floating-point images (B, 3, H, W), got dtype torch.uint8; convert uint8 images with "
        "x.float() / 255 (and normalise them as in training)"
    )
    with pytest.raises(TypeError) as e:
        m(torch.zeros(1, 3, 16, 16, dtype=torch.float16))
    assert str(e.value) == (
        "ResNet holds torch.float32 parameters but got torch.float16 images; convert the images with "
        "x.to(torch.float32), or the model with model.to(torch.float16)"
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts inside: allowed
        assert m(torch.zeros(1, 3, 16, 16, dtype=torch.bfloat16)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"^ResNet expects images \(B, 3, H, W\) with H, W >= 1, got \(1, 3, 0, 16\)$"):
        m(torch.zeros(1, 3, 0, 16))
    seg = visattn.create_model("fpn_resnet_tiny", num_classes=3).eval()
    with pytest.raises(TypeError, match="SemanticFPN expects floating-point images"):
        seg(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_numpy_ints_work_where_ints_are_expected():
    torch.manual_seed(0)
    a = visattn.create_attention("mhsa", np.int64(8), num_heads=np.int64(2))
    torch.manual_seed(0)
    b = visattn.create_attention("mhsa", 8, num_heads=2)
    assert type(a.dim) is int and type(a.num_heads) is int
    x = torch.randn(1, 8, 4, 4)
    assert torch.equal(a(x), b(x))
    m = visattn.create_model("resnet_tiny", num_classes=np.int64(3), attn_kwargs=None)
    assert m.num_classes == 3 and type(m.num_classes) is int
    from visattn.train import TrainConfig

    cfg = TrainConfig(epochs=np.int64(2), batch_size=np.int32(4), image_size=np.int64(16), seed=np.uint32(3))
    cfg.validate()
    assert (cfg.epochs, cfg.batch_size, cfg.image_size, cfg.seed) == (2, 4, 16, 3)
    assert json.dumps(cfg.as_dict())  # plain ints: JSON-able for config.json and checkpoints


# -- predict ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    cfg = SegTrainConfig(
        model=_tiny_seg_model.ensure_registered(),
        data=make_seg_folder(root / "d", n=10),
        epochs=1,
        batch_size=8,
        image_size=12,
        output=str(root / "run"),
        progress=False,
        verbose=False,
    )
    train_segment(cfg)
    yield root
    _tiny_seg_model.unregister()


def _predict(run, image, out, capsys):
    rc = main(["predict", "--model", _tiny_seg_model.NAME, "--weights", str(run), "--image", image, "--out", str(out)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "field,value,msg",
    [
        (
            ("config", "model_kwargs"),
            [1, 2],
            "field 'config.model_kwargs' must be a JSON object or null, got list [1, 2]",
        ),
        (
            ("config", "attn_kwargs"),
            "heads=2",
            "field 'config.attn_kwargs' must be a JSON object or null, got str 'heads=2'",
        ),
        (("classes",), "abc", "field 'classes' must be a list of class names (strings), got str 'abc'"),
        (("mean",), [0.5, "x", 0.5], "field 'mean' must be a list of 3 finite numbers, got list [0.5, 'x', 0.5]"),
        (("image_size",), 12.5, "field 'image_size' must be an int >= 1 or null, got float 12.5"),
        (("config", "model_kwargs"), {"width": 10**7}, None),
    ],
)
def test_predict_names_a_config_json_field_of_the_wrong_type(tmp_path, seg_run, capsys, field, value, msg):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(seg_run / "run", run)
    info = json.loads((run / "config.json").read_text())
    target = info
    for k in field[:-1]:
        target = target[k]
    target[field[-1]] = value
    (run / "config.json").write_text(json.dumps(info))
    img = next((seg_run / "d" / "images").iterdir())
    rc, err = _predict(run, str(img), tmp_path / "p.png", capsys)
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    if msg is None:  # an option of the model that would allocate terabytes: the bound of create_model
        assert "_tiny_seg_test_net: building it with {'width': 10000000} (9e+14 parameters)" in err, err
    else:
        assert err == f"visattn predict: error: {str(run / 'config.json')!r}: {msg}\n"


def test_predict_with_a_non_utf8_file_name_and_an_output_name_near_the_limit(tmp_path, seg_run, capsys):
    img = next((seg_run / "d" / "images").iterdir())
    odd = os.fsencode(tmp_path) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        f.write(img.read_bytes())
    rc, err = _predict(seg_run / "run", os.fsdecode(odd), tmp_path / "p.png", capsys)
    assert rc == 0 and err == "", err  # the figure title used to raise UnicodeEncodeError
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / ("x" * (255 - 4) + ".png")  # 255 bytes: the longest name; the temporary name is longer
    rc, err = _predict(seg_run / "run", str(img), out, capsys)
    assert rc == 0 and err == "", err  # was "File name too long" for the temporary file
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []
