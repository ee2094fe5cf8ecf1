"""Where weights come from and how they are read: URLs against a local HTTP server on 127.0.0.1
(progress, cache hit, sha256, interrupted downloads), hf-hub: against the same server as
HF_ENDPOINT, the pickle allow-list, damaged files, layout detection, the errors' wording, and the
``visattn convert`` / ``info`` commands (one line, exit 2 for bad input)."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from _wutil import local_server, one_line_error
from safetensors import safe_open
from safetensors.torch import save_file

import visattn
import visattn.models.pretrained as P
from visattn.cli import main
from visattn.models.convert import SOURCES, detect_format, find_source
from visattn.models.hub import download_url, fetch


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return tmp_path / "cache"


def _timm_resnet_state(depths=(2, 2, 2, 2), classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in timm's ResNet layout (the keys and shapes timm writes), random values."""
    torch.manual_seed(seed)
    net = visattn.create_model("resnet26", num_classes=classes, depths=depths)
    from visattn.models.convert import convert_resnet

    # the inverse of the converter's renames, written out: stem.0/1 -> conv1/bn1, stages.i.j -> layer{i+1}.j
    out = {}
    for k, v in net.state_dict().items():
        k = k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.").replace("head.", "fc.")
        if k.startswith("stages."):
            _, i, rest = k.split(".", 2)
            k = f"layer{int(i) + 1}.{rest}".replace(".shortcut.", ".downsample.")
        out[k] = v
    assert set(convert_resnet(out)) == set(net.state_dict())
    return out


def _files(tmp_path) -> tuple[Path, bytes, dict]:
    sd = _timm_resnet_state()
    path = tmp_path / "r26.safetensors"
    save_file(sd, str(path))
    return path, path.read_bytes(), sd


def _files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_url_download_progress_cache_hit_and_sha256(tmp_path, _cache, capfd):
    _, data, sd = _files(tmp_path)
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    with local_server({"/w/resnet26-abc.safetensors": data}) as (base, hits):
        url = base + "/w/resnet26-abc.safetensors"
        path = fetch(url, sha256=digest[:8])  # a prefix, as torch hub's file names carry
        assert path.read_bytes() == data and path.is_relative_to(_cache)
        err = capfd.readouterr().err
        assert "downloading resnet26-abc.safetensors" in err and "100%" in err  # the progress bar
        again = fetch(url)
        assert again == path and hits == ["/w/resnet26-abc.safetensors"]  # a cache hit: no second request
        # a URL source loads like a file
        model = visattn.create_model("resnet26", pretrained=url, depths=(2, 2, 2, 2))
        assert model.pretrained_cfg["source"] == url and len(hits) == 1
        # a wrong sha256 is refused, and nothing is kept under the final name
        bad = base + "/w/resnet26-abc.safetensors?copy"
        with pytest.raises(ValueError, match=r"sha256 of the download of .* is [0-9a-f]{16}\.\.\., expected deadbeef"):
            download_url(bad, sha256="deadbeef")
        assert not (Path(str(path.parent.parent)) / "x").exists()
        kept = [p for p in _files_in(_cache) if p != path]
        assert kept == [], kept
        # the cached file is checked too when a sha256 is known
        with pytest.raises(ValueError, match="sha256 of the cached"):
            download_url(url, sha256="00000000")


def test_interrupted_download_leaves_nothing(tmp_path, _cache):
    _, data, _ = _files(tmp_path)
    with local_server({"/w.safetensors": data}) as (base, _hits):
        with pytest.raises(OSError, match=r"(ended after|failed after) \d+ (of \d+ )?bytes.*nothing was kept"):
            download_url(base + "/short/w.safetensors", progress=False)
    assert _files_in(_cache) == []


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_url_and_http_errors_are_one_line(tmp_path, capsys, _cache):
    url = f"http://127.0.0.1:{_closed_port()}/w.pth"
    assert main(["convert", url, str(tmp_path / "o.safetensors"), "--no-progress"]) == 2
    assert one_line_error(capsys, "convert").startswith(f"cannot download {url}: ")
    with local_server({}) as (base, _):
        assert main(["convert", base + "/missing.pth", str(tmp_path / "o.safetensors")]) == 2
        assert one_line_error(capsys, "convert") == f"cannot download {base}/missing.pth: HTTP 404 Not Found"
    assert _files_in(_cache) == [] and not (tmp_path / "o.safetensors").exists()


def test_hf_hub_source_through_a_mirror(tmp_path, monkeypatch, capsys, _cache):
    _, data, sd = _files(tmp_path)
    files = {"/org/r26/resolve/main/model.safetensors": data}
    with local_server(files) as (base, hits):
        monkeypatch.setenv("HF_ENDPOINT", base)
        model = visattn.create_model("resnet26", pretrained="hf-hub:org/r26", depths=(2, 2, 2, 2))
        assert torch.equal(model.head.weight, sd["fc.weight"])
        assert any(p.name == "model.safetensors" for p in _files_in(_cache / "hf"))
        with pytest.raises(ValueError, match=r"^hf-hub:nobody/nothing: no such repository on the Hugging Face Hub"):
            fetch("hf-hub:nobody/nothing")
        assert main(["convert", "hf-hub:nobody/nothing", str(tmp_path / "o.safetensors")]) == 2
        assert one_line_error(capsys, "convert").startswith("hf-hub:nobody/nothing: no such repository")
        with pytest.raises(ValueError, match="expected hf-hub:ORG/REPO"):
            fetch("hf-hub:just-a-name")
    assert not any("nobody" in str(p) for p in _files_in(_cache))


class NotAllowed:
    """A class a checkpoint must not make visattn instantiate."""

    def __init__(self, x=1):
        self.x = x


def test_pickles_are_read_with_an_allow_list(tmp_path):
    sd = _timm_resnet_state()
    ok = tmp_path / "train.pth.tar"
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1), "metric": np.float64(76.1), "epoch": 3}, ok)
    got, meta, wrapper = P.read_state_dict(ok)
    assert wrapper == "state_dict" and meta == {} and set(got) == set(sd)
    bad = tmp_path / "config.pth"
    torch.save({"model": sd, "config": NotAllowed()}, bad)
    with pytest.raises(ValueError) as e:
        P.read_state_dict(bad)
    msg = str(e.value)
    assert "refused to unpickle" in msg and "NotAllowed" in msg and "safetensors.torch.save_file" in msg
    assert "\n" not in msg
    # module. prefixes (DataParallel) are stripped; a file with no state dict says what it has
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "dp.pth")
    assert set(P.read_state_dict(tmp_path / "dp.pth")[0]) == set(sd)
    torch.save({"epoch": 3, "acc": 0.5}, tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match=r"no state dict found \(top-level keys \['acc', 'epoch'\]\)"):
        P.read_state_dict(tmp_path / "nothing.pth")


def test_damaged_files_are_one_line_errors(tmp_path, capsys):
    sd = _timm_resnet_state()
    pth, st = tmp_path / "w.pth", tmp_path / "w.safetensors"
    torch.save(sd, pth)
    save_file(sd, str(st))
    for path in (pth, st):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=r"cannot read .* \(truncated"):
            P.read_state_dict(path)
        assert main(["convert", str(path), str(tmp_path / "o.safetensors")]) == 2
        assert "truncated" in one_line_error(capsys, "convert")
    assert not (tmp_path / "o.safetensors").exists()
    assert main(["convert", str(tmp_path / "absent.pth"), str(tmp_path / "o.safetensors")]) == 2
    assert one_line_error(capsys, "convert").startswith(f"no weights file {str(tmp_path / 'absent.pth')!r}")


def test_another_architecture_names_keys_shapes_and_what_it_looks_like(tmp_path):
    path = tmp_path / "r26.safetensors"
    save_file(_timm_resnet_state(), str(path))
    with pytest.raises(ValueError) as e:
        visattn.create_model("resnet50", pretrained=str(path))
    msg = str(e.value)
    assert msg.startswith(
        f"{path}: timm / torchvision ResNet (conv1, bn1, layerN, fc; gluon 's' deep stem) weights of resnet26 do not fit ResNet:"
    )
    assert "missing from the file (" in msg and "stages.0.2.bn1.bias" in msg and "more))" in msg
    with pytest.raises(ValueError, match=r"stages\.0\.0\.conv1\.weight: file \(64, 64, 1, 1\), model \(32, 64, 1, 1\)"):
        visattn.create_model("resnet26", pretrained=str(path), widths=(32, 64, 128, 256))
    with pytest.raises(ValueError, match=r"unknown checkpoint layout \(keys a\.weight\)"):
        detect_format({"a.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="backbone_pretrained= is for segmentation and detection models"):
        visattn.create_model("resnet26", backbone_pretrained=str(path))
    with pytest.raises(ValueError, match="unknown source_format 'nope'"):
        visattn.create_model("resnet26", pretrained=str(path), source_format="nope")


def test_convert_command_round_trip(tmp_path, capsys):
    src = tmp_path / "r26.safetensors"
    sd = _timm_resnet_state()
    save_file(sd, str(src))
    out = tmp_path / "r26-visattn.safetensors"
    assert main(["convert", str(src), str(out), "--model-kwargs", '{"num_classes": 10}']) == 2  # not a model option
    capsys.readouterr()
    assert main(["convert", str(src), str(out)]) == 0
    text = capsys.readouterr().out
    assert "(timm-resnet)" in text and "model: resnet26(), 10 classes" in text and "(assumed from the layout)" in text
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["visattn.model"] == "resnet26"
    cfg = json.loads(meta["visattn.pretrained_cfg"])
    assert cfg["format"] == "timm-resnet" and cfg["mean"] == [0.485, 0.456, 0.406] and cfg["model"] == "resnet26"
    # the converted file rebuilds the same model (its class count), and reports its own preprocessing
    a = visattn.create_model("resnet26", pretrained=str(src)).eval()
    b = visattn.create_model("resnet26", pretrained=str(out)).eval()
    assert b.num_classes == 10 and b.pretrained_cfg["format"] == "timm-resnet"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert main(["convert", str(src), str(tmp_path / "no-such-dir" / "o.safetensors")]) == 2
    assert "does not exist" in one_line_error(capsys, "convert")
    assert main(["convert", str(src)]) == 2
    assert one_line_error(capsys, "convert") == "give SOURCE and OUT (visattn convert SOURCE OUT), or --list"


def test_lists_from_the_one_table(capsys):
    assert main(["convert", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SOURCES)
    assert main(["convert", "--list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data["sources"]] == list(SOURCES)
    assert main(["info", "resnet26"]) == 0
    assert "pretrained='timm/resnet26.bt_in1k': 1000 classes, apache-2.0" in capsys.readouterr().out
    from visattn.commands.convert_cmd import source_rows

    assert [r["name"] for r in source_rows("fpn_pvt_t")] == ["pvt/pvt_tiny"]
    assert [r["name"] for r in source_rows("lambda_resnet26t")] == ["timm/lambda_resnet26t.c1_in1k"]


def test_table_names_fetch_their_location_with_their_sha256(tmp_path, monkeypatch):
    # A table name resolves to the entry's location and hash, and its layout and preprocessing come
    # from the table (the file here is a real one written by the test; only the download is replaced).
    sd = _timm_resnet_state(depths=(3, 4, 6, 3), classes=1000)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(sd, path)
    calls = []

    def fake_fetch(location, sha256=None, progress=True):
        calls.append((location, sha256))
        return path

    monkeypatch.setattr(P, "fetch", fake_fetch)
    entry = SOURCES["torchvision/resnet50.IMAGENET1K_V1"]
    assert find_source(entry.location) is entry
    model = visattn.create_model("resnet50", pretrained="torchvision/resnet50.IMAGENET1K_V1")
    assert calls == [(entry.location, "0676ba61")]
    cfg = model.pretrained_cfg
    assert cfg["name"] == entry.name and cfg["crop_pct"] == 0.875 and cfg["license"] == "bsd-3-clause"
    assert not cfg["assumed"] and cfg["input_size"] == [3, 224, 224]


def test_every_source_names_a_known_format_and_model():
    for s in SOURCES.values():
        assert s.format in visattn.models.convert.FORMATS
        assert s.model in visattn.list_models(), s.name
        assert s.part in ("model", "backbone") and s.verified and s.license
        assert s.location.startswith(("hf-hub:", "https://")), s.name
        assert s.sha256 is None or (len(s.sha256) >= 8 and int(s.sha256, 16) >= 0)
