"""Published checkpoints -> visattn state dicts: two tables, data plus pure functions.

* :data:`FORMATS`: the key layouts visattn reads. Each :class:`Format` is a key signature (how it
  is detected), a pure function ``state_dict -> state_dict`` into visattn's keys, and a function
  that names the visattn model (and options) the keys describe. What a converter drops on purpose
  is listed with it (buffers visattn computes, biases folded into others, fixed tables).
* :data:`SOURCES`: the published files. Each :class:`WeightSource` names where the file lives,
  its format, the visattn model and options it loads into, the expected parameter count, the
  preprocessing it was trained with, its licence and how the load was verified (the figure
  measured by ``tests/weights``: the converted visattn model against the source model, built
  with random weights that move every tensor, in float32).

``visattn info``, ``visattn convert --list`` and ``docs/weights.md`` are generated from these
tables; :mod:`visattn.models.pretrained` reads files and loads them. Facts behind each converter:
the authors' published code and timm / torchvision (read, never copied), see docs/weights.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "Format",
    "Target",
    "Preprocess",
    "WeightSource",
    "FORMATS",
    "SOURCES",
    "detect_format",
    "find_source",
    "sources_for",
    "split_detector",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

StateDict = dict[str, torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How the weights' images were prepared: normalisation, input side, centre-crop fraction
    (resize to ``input_size / crop_pct``, crop ``input_size``) and the resize interpolation."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"

    def as_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": [3, self.input_size, self.input_size],
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True)
class Target:
    """The visattn model a state dict describes.

    Attributes:
        model: registered model name.
        kwargs: builder options the weights need (e.g. ``norm_eps``, ``class_token``).
        backbone_kwargs: the options that matter when the weights initialise a backbone (a
            backbone runs without a class token, as the authors' dense-prediction code does).
        note: why, when the model is only a close match (e.g. no registered classifier).
    """

    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.model}({opts})" if opts else self.model


@dataclass(frozen=True)
class Format:
    """A key layout: detection, conversion into visattn keys, the model the keys describe.

    Attributes:
        name: short name (``source_format=`` / ``--source-format``).
        title: who writes files in this layout.
        signature: regular expressions that must each match some key (``re.search``).
        exclude: expressions no key may match.
        convert: the pure function ``state_dict -> state_dict`` (visattn keys).
        infer: ``state_dict (source keys) -> Target``.
        dropped: what the converter drops on purpose, for the docs.
        preprocess: the preprocessing to assume for a file the source table does not name.
        required: config fields the weights were trained with (checked against a built model:
            a different value loads but computes another function; a warning says so).
        verified: the figure ``tests/weights`` measures for this converter and the test.
    """

    name: str
    title: str
    signature: tuple[str, ...]
    convert: Callable[[StateDict], StateDict]
    infer: Callable[[StateDict], Target]
    exclude: tuple[str, ...] = ()
    dropped: str = ""
    preprocess: Preprocess = Preprocess()
    required: Callable[[StateDict], dict[str, Any]] = lambda sd: {}
    verified: str = ""

    def matches(self, keys) -> bool:
        keys = list(keys)
        return all(any(re.search(p, k) for k in keys) for p in self.signature) and not any(
            re.search(p, k) for p in self.exclude for k in keys
        )


@dataclass(frozen=True)
class WeightSource:
    """One published file (see the module docstring).

    Attributes:
        name: the table's name for it (also a ``pretrained=`` value).
        location: ``hf-hub:ORG/REPO[:FILE]`` or an ``http(s)://`` URL.
        format: a :data:`FORMATS` name.
        model: the visattn model it loads into; ``part="backbone"``: the model whose backbone
            it initialises.
        model_kwargs: builder options it needs.
        part: "model" (the whole model, head included) or "backbone".
        num_classes: classifier outputs of the file (0 for a backbone-only file).
        params: parameters the file fills in the visattn model: the whole model at ``num_classes``
            and ``model_kwargs``, or its backbone (``part="backbone"``).
        preprocess: the preprocessing it was trained with.
        license: the licence the publisher states.
        sha256: the file's sha256, or a prefix of it (>= 8 hex digits, torch hub's file-name
            convention); checked after a download.
        verified: the figure ``tests/weights`` measures for this format (visattn vs the source
            model on random weights, float32) and the test that measures it.
        backbone_of: further models whose backbone the file initialises (``backbone_pretrained=``).
        notes: anything a user must know.
    """

    name: str
    location: str
    format: str
    model: str
    params: int
    license: str
    verified: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    part: str = "model"
    num_classes: int = 1000
    preprocess: Preprocess = Preprocess()
    sha256: str | None = None
    backbone_of: tuple[str, ...] = ()
    notes: str = ""


# ---------------------------------------------------------------------------
# Helpers (pure)
# ---------------------------------------------------------------------------


def _rename(sd: Mapping[str, torch.Tensor], rules: list[tuple[str, Any]]) -> StateDict:
    """Apply the first matching ``(pattern, replacement)`` rule to every key (``re.sub`` on the
    whole key; ``None`` drops it). A key no rule matches is kept as is."""
    out: StateDict = {}
    for k, v in sd.items():
        for pat, rep in rules:
            if re.search(pat, k):
                if rep is not None:
                    out[re.sub(pat, rep, k)] = v
                break
        else:
            out[k] = v
    return out


def _fill_bn_counters(sd: StateDict) -> StateDict:
    """Add ``num_batches_tracked`` (0) beside every BatchNorm's running mean that lacks one
    (torchvision's FrozenBatchNorm2d and some exporters do not store it)."""
    for k in [k for k in sd if k.endswith(".running_mean")]:
        counter = k[: -len("running_mean")] + "num_batches_tracked"
        sd.setdefault(counter, torch.zeros((), dtype=torch.long))
    return sd


def _blocks(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    """Per stage, the number of blocks: ``pattern`` has two groups (stage, block) matched on keys."""
    found: dict[int, set[int]] = {}
    for k in sd:
        m = re.match(pattern, k)
        if m:
            found.setdefault(int(m[1]), set()).add(int(m[2]))
    return [len(found[i]) for i in sorted(found)]


def _square(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r * r == n else None


# ---------------------------------------------------------------------------
# timm / torchvision ResNet (and the gluon "s" deep-stem ResNets)
# ---------------------------------------------------------------------------


def _resnet_rules(deep: bool) -> list[tuple[str, Any]]:
    stem = (
        [(r"^conv1\.(\d+)\.", r"stem.\1."), (r"^bn1\.", "stem.7.")]
        if deep
        else [
            (r"^conv1\.", "stem.0."),
            (r"^bn1\.", "stem.1."),
        ]
    )
    return [
        *stem,
        (r"^layer(\d+)\.(\d+)\.downsample\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut."),
        (r"^layer(\d+)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}."),
        (r"^fc\.", "head."),
    ]


def convert_resnet(sd: StateDict) -> StateDict:
    """timm / torchvision ResNet keys (``conv1``, ``bn1``, ``layerN.J``, ``downsample``, ``fc``;
    deep stem ``conv1.{0,1,3,4,6}``) -> visattn ``stem`` / ``stages`` / ``shortcut`` / ``head``."""
    deep = "conv1.0.weight" in sd
    return _fill_bn_counters(_rename(sd, _resnet_rules(deep)))


_RESNET_DEPTHS: dict[tuple[int, ...], int] = {(2, 2, 2, 2): 26, (2, 3, 5, 2): 38, (3, 4, 6, 3): 50, (3, 4, 23, 3): 101}


def infer_resnet(sd: StateDict) -> Target:
    depths = tuple(_blocks(sd, r"^layer(\d+)\.(\d+)\."))
    depth = _RESNET_DEPTHS.get(depths)
    if depth is None:
        return Target("resnet50", note=f"no visattn ResNet has stage depths {depths}")
    kwargs: dict[str, Any] = {}
    if "conv1.0.weight" in sd:  # deep stem (gluon v1s): EANet's backbone
        kwargs = {"deep_stem": True, "stem_width": int(sd["conv1.6.weight"].shape[0])}
    name = f"resnet{depth}"
    if depth == 101:
        return Target(
            "resnet50",
            {**kwargs, "depths": depths},
            note="ResNet-101 is registered only as EANet's backbone (eanet_r101); as a classifier it is "
            "resnet50 with depths (3, 4, 23, 3)",
        )
    return Target(name, kwargs)


def convert_torchvision_detector(sd: StateDict) -> StateDict:
    """torchvision detectors' ``backbone.body.*`` (a ResNet body) -> visattn ResNet keys (no head);
    the FPN, RPN and RoI heads are left out (see :func:`split_detector`)."""
    body = {k[len("backbone.body.") :]: v for k, v in sd.items() if k.startswith("backbone.body.")}
    return convert_resnet(body)


def infer_torchvision_detector(sd: StateDict) -> Target:
    body = {k[len("backbone.body.") :]: v for k, v in sd.items() if k.startswith("backbone.body.")}
    t = infer_resnet(body)
    return Target(t.model, t.kwargs, note="the detector's ResNet body only (FPN, RPN and RoI heads are torchvision's)")


def split_detector(sd: Mapping[str, torch.Tensor], body_prefix: str) -> StateDict:
    """A torchvision detector's state dict with its ResNet body converted to visattn keys under
    ``body_prefix`` (e.g. ``"backbone.body.model."`` for a visattn ``features_only`` body); every
    other key (FPN, RPN, RoI heads) is kept as torchvision names it."""
    out: StateDict = {k: v for k, v in sd.items() if not k.startswith("backbone.body.")}
    for k, v in convert_torchvision_detector(dict(sd)).items():
        if not k.startswith("head."):
            out[body_prefix + k] = v
    return out


# ---------------------------------------------------------------------------
# Swin: timm's layout and Microsoft's original; Slide-Swin (the authors' layout)
# ---------------------------------------------------------------------------

_SWIN_BLOCK = [
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.(relative_position_index)$", None),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn_mask$", None),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.", r"stages.\1.blocks.\2.mixer."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^patch_embed\.", "stages.0.embed."),
]


def convert_timm_swin(sd: StateDict) -> StateDict:
    """timm's Swin: ``layers.i.downsample`` merges patches at the *start* of stage i (i >= 1);
    ``head.fc``; the relative-position index and attention masks (buffers) are dropped."""
    rules = [(r"^layers\.(\d+)\.downsample\.", r"stages.\1.embed."), *_SWIN_BLOCK, (r"^head\.fc\.", "head.")]
    return _rename(sd, rules)


def convert_swin_original(sd: StateDict) -> StateDict:
    """Microsoft's Swin (and the Slide-Transformer code base): ``layers.i.downsample`` merges at the
    *end* of stage i, so it becomes stage i + 1's embedding; ``head``; buffers dropped."""
    rules = [
        (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m[1]) + 1}.embed."),
        *_SWIN_BLOCK,
    ]
    return _rename(sd, rules)


_SWIN_T_LAYOUT = {"depths": (2, 2, 6, 2), "embed_dims": (96, 192, 384, 768), "num_heads": (3, 6, 12, 24)}


def _swin_layout(sd: StateDict) -> dict[str, Any]:
    """depths, embed_dims and num_heads of a Swin-layout state dict (heads from each stage's
    first relative table: (L, heads) in Swin, (1, heads, 1, k*k, 1, 1) in a slide stage)."""
    depths = tuple(_blocks(sd, r"^layers\.(\d+)\.blocks\.(\d+)\."))
    c = int(sd["patch_embed.proj.weight"].shape[0])
    heads = []
    for i in range(len(depths)):
        t = sd[f"layers.{i}.blocks.0.attn.relative_position_bias_table"]
        heads.append(int(t.shape[-1] if t.dim() == 2 else t.shape[1]))
    return {"depths": depths, "embed_dims": tuple(c * 2**i for i in range(len(depths))), "num_heads": tuple(heads)}


def _swin_target(sd: StateDict) -> Target:
    lay = _swin_layout(sd)
    kw: dict[str, Any] = {k: v for k, v in lay.items() if v != _SWIN_T_LAYOUT[k]}
    side = _square(int(sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0])) or 13
    w = (side + 1) // 2
    if w != 7:
        shifts = [{"shift_size": 0}, {"shift_size": w // 2}]
        kw["mixer_kwargs"] = ({"window_size": w, "per_block": shifts},) * len(lay["depths"])
    return Target("swin_t", kw)


def infer_swin(sd: StateDict) -> Target:
    return _swin_target(sd)


def convert_slide_swin(sd: StateDict) -> StateDict:
    """The Slide-Transformer authors' Slide-Swin (Swin code base, patch merging at the end of a stage).

    In the slide stages: the qkv rows go from the authors' per-head ``[q_h | k_h | v_h]`` order to
    visattn's ``[q | k | v]``; the fixed one-hot shift conv (``dep_conv``, frozen weight, learned
    bias) and the learned one (``dep_conv1``) become one learned conv beside visattn's fixed one-hot
    kernels: ``deform.weight = dep_conv1.weight + (dep_conv.weight - one_hot)``,
    ``deform.bias = dep_conv.bias + dep_conv1.bias``; the offset bias (1, h, 1, k*k, 1, 1) ->
    (h, k*k)."""
    from visattn.layers.slide import one_hot_shift_kernels

    out = convert_swin_original({k: v for k, v in sd.items() if not re.search(r"\.attn\.dep_conv1?\.", k)})
    for k in sd:
        m = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.dep_conv\.weight$", k)
        if not m:
            continue
        src, dst = f"layers.{m[1]}.blocks.{m[2]}.attn.", f"stages.{m[1]}.blocks.{m[2]}.mixer."
        table = sd[src + "relative_position_bias_table"]  # (1, h, 1, k*k, 1, 1)
        heads, kk = int(table.shape[1]), int(table.shape[3])
        w0, w1 = sd[src + "dep_conv.weight"], sd[src + "dep_conv1.weight"]
        fixed = one_hot_shift_kernels(w0.shape[0] // kk, _square(kk) or 3, dtype=w0.dtype, device=w0.device)
        out[dst + "deform.weight"] = w1 + (w0 - fixed)
        out[dst + "deform.bias"] = sd[src + "dep_conv.bias"] + sd[src + "dep_conv1.bias"]
        out[dst + "offset_bias"] = table.reshape(heads, kk)
        out[dst + "shift_merged"] = torch.zeros((), dtype=torch.bool)
        del out[dst + "relative_position_bias_table"]
        c3 = sd[src + "qkv.weight"].shape[0]
        perm = torch.arange(c3).view(heads, 3, c3 // (3 * heads)).permute(1, 0, 2).reshape(-1)
        for p in ("weight", "bias"):
            if src + f"qkv.{p}" in sd:
                out[dst + f"qkv.{p}"] = sd[src + f"qkv.{p}"][perm]
    return out


def infer_slide_swin(sd: StateDict) -> Target:
    lay = _swin_layout(sd)
    return Target("slide_swin_t", {k: v for k, v in lay.items() if v != _SWIN_T_LAYOUT[k]})


# ---------------------------------------------------------------------------
# PVT v1 (whai362/PVT)
# ---------------------------------------------------------------------------


def convert_pvt(sd: StateDict) -> StateDict:
    """PVT v1: ``patch_embedN`` / ``blockN`` / ``pos_embedN`` -> ``stages.N-1``; position tables
    (1, N, C) -> (1, C, h, w); the last stage's table starts with the class token's entry, which is
    folded into ``cls_token`` (both are learned vectors added once)."""
    rules = [
        (r"^patch_embed(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.embed."),
        (r"^block(\d+)\.(\d+)\.attn\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.mixer."),
        (r"^block(\d+)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
        (r"^pos_embed(\d+)$", None),
        (r"^cls_token$", None),
    ]
    out = _rename(sd, rules)
    cls_pos = None
    for k, v in sd.items():
        m = re.match(r"^pos_embed(\d+)$", k)
        if not m:
            continue
        n = int(v.shape[1])
        side = _square(n)
        if side is None and _square(n - 1) is not None:  # the class token's entry first
            cls_pos, v, side = v[:, :1], v[:, 1:], _square(n - 1)
        if side is None:
            raise ValueError(f"{k} has {n} positions, not a square grid (with or without a class token)")
        out[f"stages.{int(m[1]) - 1}.pos_embed"] = v[0].T.reshape(1, v.shape[2], side, side).contiguous()
    if "cls_token" in sd:
        out["cls_token"] = sd["cls_token"] + (cls_pos if cls_pos is not None else 0)
    return out


def infer_pvt(sd: StateDict) -> Target:
    dims = tuple(
        int(sd[f"patch_embed{i}.proj.weight"].shape[0]) for i in range(1, 5) if f"patch_embed{i}.proj.weight" in sd
    )
    depths = tuple(_blocks(sd, r"^block(\d+)\.(\d+)\."))
    kw: dict[str, Any] = {"norm_eps": 1e-6}
    if "cls_token" in sd:
        kw["class_token"] = True
    note = ""
    if dims != (64, 128, 320, 512) or depths != (2, 2, 2, 2):
        kw.update(embed_dims=dims, depths=depths)
        note = "PVT-S/M/L are pvt_t with these embed_dims / depths"
    return Target("pvt_t", kw, backbone_kwargs={"norm_eps": 1e-6}, note=note)


# ---------------------------------------------------------------------------
# EAMLP (the EANet authors' T2T-ViT with external attention, timm-0.3 checkpoints)
# ---------------------------------------------------------------------------


def _sinusoid(n: int, dim: int) -> torch.Tensor:
    from visattn.models.eamlp import sinusoid_positions

    return sinusoid_positions(n, dim, offset=0, dtype=torch.float64)


def convert_eamlp(sd: StateDict) -> StateDict:
    """The authors' EAMLP (T2T-ViT code): q_linear -> q; linear_0 / linear_1 (Linear layers) ->
    the memories M_k = W_0 and M_v = W_1^T (two independent memories: the construction-time tie
    does not survive the authors' ``.cuda()``); M_k's bias cancels in the softmax over positions
    (dropped); M_v's bias b_1 is folded into the following projection's bias
    (``proj.bias += proj.W tile(b_1)``); ``trans_dims`` / ``proj`` become 1x1 convs; the fixed
    sinusoid ``pos_embed`` is checked and dropped (visattn computes it); ``cls_token`` is kept
    (``class_token=True``)."""
    out: StateDict = {}
    for k, v in sd.items():
        m = re.match(r"^tokens_to_token\.attention(\d)\.(.*)$", k)
        if m:
            pre, rest = f"stem.block{m[1]}.", m[2]
            if rest.startswith("attn.q_linear."):
                out[pre + "q." + rest.split(".")[-1]] = v
            elif rest == "attn.linear_0.weight":
                out[pre + "ea.memory_key"] = v
            elif rest == "attn.linear_1.weight":
                out[pre + "ea.memory_value"] = v.T.contiguous()
            elif rest == "attn.linear_1.bias":
                continue  # folded below
            elif rest.startswith("attn.proj."):
                out[pre + "proj." + rest.split(".")[-1]] = v
            else:
                out[pre + rest] = v
            continue
        m = re.match(r"^blocks\.(\d+)\.attn\.(.*)$", k)
        if m:
            pre, rest = f"blocks.{m[1]}.mixer.", m[2]
            if rest.startswith("trans_dims."):
                out[pre + "in_proj." + rest.split(".")[-1]] = v[..., None, None] if v.dim() == 2 else v
            elif rest == "linear_0.weight":
                out[pre + "memory_key"] = v
            elif rest == "linear_1.weight":
                out[pre + "memory_value"] = v.T.contiguous()
            elif rest in ("linear_0.bias", "linear_1.bias"):
                continue  # M_k's cancels; M_v's is folded below
            elif rest.startswith("proj."):
                out[pre + "proj." + rest.split(".")[-1]] = v[..., None, None] if v.dim() == 2 else v
            else:
                out[pre + rest] = v
            continue
        if k == "tokens_to_token.project.weight" or k == "tokens_to_token.project.bias":
            out["stem.project." + k.split(".")[-1]] = v
        elif k == "pos_embed":
            ref = _sinusoid(v.shape[1], v.shape[2])
            if not torch.allclose(v[0].double(), ref, atol=1e-5):
                raise ValueError(
                    "pos_embed is not the fixed sinusoid the authors' code builds (visattn computes that table and "
                    "cannot hold a learned one)"
                )
        else:
            out[k] = v
    # M_v's bias b_1 (per head channel, shared by the heads) folded into the next projection's bias.
    for k, b in sd.items():
        m = re.match(r"^tokens_to_token\.attention(\d)\.attn\.linear_1\.bias$", k)
        if m:
            pre = f"stem.block{m[1]}.proj."
            out[pre + "bias"] = out[pre + "bias"] + out[pre + "weight"] @ b
        m = re.match(r"^blocks\.(\d+)\.attn\.linear_1\.bias$", k)
        if m:
            pre = f"blocks.{m[1]}.mixer.proj."
            w = out[pre + "weight"][:, :, 0, 0]  # (C, heads * d)
            out[pre + "bias"] = out[pre + "bias"] + w @ b.repeat(w.shape[1] // b.shape[0])
    return out


def infer_eamlp(sd: StateDict) -> Target:
    depth = len({int(m[1]) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))})
    c = int(sd["tokens_to_token.project.weight"].shape[0])
    known = {(256, 7): "eamlp_7", (384, 14): "eamlp_14", (448, 19): "eamlp_19"}
    kw: dict[str, Any] = {"class_token": "cls_token" in sd}
    if "pos_embed" in sd:
        side = _square(int(sd["pos_embed"].shape[1]) - 1)
        if side is not None and side * 16 != 224:
            kw["img_size"] = side * 16
    name = known.get((c, depth))
    if name is None:
        return Target("eamlp_7", {**kw, "embed_dim": c, "depth": depth}, note="not a registered EAMLP size")
    return Target(name, kw)


# ---------------------------------------------------------------------------
# EANet (the authors' PASCAL VOC segmentation model, model_torch.py)
# ---------------------------------------------------------------------------


def convert_eanet(sd: StateDict) -> StateDict:
    """The authors' EANet: ``extractor`` (deep-stem dilated ResNet) -> ``backbone.model``; the head
    ``fc0`` / ``linu`` / ``fc1`` / ``fc2`` -> ``decode_head``; the Conv1d memories -> M_k = W_0[:, :, 0]
    and M_v = W_1[:, :, 0]^T (two memories, as trained)."""
    rules: list[tuple[str, Any]] = [
        (r"^extractor\.0\.(\d+)\.", r"backbone.model.stem.\1."),
        (r"^extractor\.1\.", "backbone.model.stem.7."),
        (
            r"^extractor\.(\d+)\.(\d+)\.downsample\.",
            lambda m: f"backbone.model.stages.{int(m[1]) - 4}.{m[2]}.shortcut.",
        ),
        (r"^extractor\.(\d+)\.(\d+)\.", lambda m: f"backbone.model.stages.{int(m[1]) - 4}.{m[2]}."),
        (r"^fc0\.conv\.", "decode_head.fc0.0."),
        (r"^fc0\.bn\.", "decode_head.fc0.1."),
        (r"^linu\.conv1\.", "decode_head.ea.conv_in."),
        (r"^linu\.conv2\.0\.", "decode_head.ea.conv_out."),
        (r"^linu\.conv2\.1\.", "decode_head.ea.norm."),
        (r"^linu\.linear_[01]\.weight$", None),
        (r"^fc1\.0\.conv\.", "decode_head.fc1.0."),
        (r"^fc1\.0\.bn\.", "decode_head.fc1.1."),
        (r"^fc2\.", "decode_head.classifier."),
    ]
    out = _rename(sd, rules)
    out["decode_head.ea.attention.memory_key"] = sd["linu.linear_0.weight"][:, :, 0]
    out["decode_head.ea.attention.memory_value"] = sd["linu.linear_1.weight"][:, :, 0].T.contiguous()
    return _fill_bn_counters(out)


def infer_eanet(sd: StateDict) -> Target:
    depths = tuple(_blocks(sd, r"^extractor\.([4-7])\.(\d+)\."))
    depth = _RESNET_DEPTHS.get(depths, 101)
    return Target(f"eanet_r{depth}", {"multi_grid": (1, 2, 4)})


def _eanet_required(sd: StateDict) -> dict[str, Any]:
    return {"multi_grid": (1, 2, 4)}


# ---------------------------------------------------------------------------
# timm's lambda ResNets (ByobNet)
# ---------------------------------------------------------------------------


def convert_timm_lambda(sd: StateDict) -> StateDict:
    """timm's ByobNet keys -> visattn ResNet: tiered stem ``stem.convN.{conv,bn}``, blocks
    ``conv1_1x1`` / ``conv2_kxk`` / ``conv3_1x1`` / ``shortcut``, self-attention blocks
    ``self_attn`` + ``post_attn``; the lambda convolution (k, 1, r, r, 1) -> ``pos_kernel``
    (k, 1, r, r) and its bias -> ``pos_bias``; the relative table (2H-1, 2W-1, k) -> the global
    ``pos_kernel`` (k, 1, 2H-1, 2W-1). A lambda block that opens a stage after the first is strided:
    its mechanism sits in ``conv2.0`` (followed by the pool)."""

    def slot(m: re.Match) -> str:
        i, j = int(m[1]), int(m[2])
        return f"stages.{i}.{j}.conv2{'.0' if (j == 0 and i > 0) else ''}."

    rules: list[tuple[str, Any]] = [
        (r"^stem\.conv1\.conv\.", "stem.0."),
        (r"^stem\.conv1\.bn\.", "stem.1."),
        (r"^stem\.conv2\.conv\.", "stem.3."),
        (r"^stem\.conv2\.bn\.", "stem.4."),
        (r"^stem\.conv3\.conv\.", "stem.6."),
        (r"^stem\.conv3\.bn\.", "stem.7."),
        (r"^stages\.(\d+)\.(\d+)\.shortcut\.conv\.", r"stages.\1.\2.shortcut.0."),
        (r"^stages\.(\d+)\.(\d+)\.shortcut\.bn\.", r"stages.\1.\2.shortcut.1."),
        (r"^stages\.(\d+)\.(\d+)\.conv1_1x1\.conv\.", r"stages.\1.\2.conv1."),
        (r"^stages\.(\d+)\.(\d+)\.conv1_1x1\.bn\.", r"stages.\1.\2.bn1."),
        (r"^stages\.(\d+)\.(\d+)\.conv2_kxk\.conv\.", r"stages.\1.\2.conv2."),
        (r"^stages\.(\d+)\.(\d+)\.conv2_kxk\.bn\.", r"stages.\1.\2.bn2."),
        (r"^stages\.(\d+)\.(\d+)\.post_attn\.", r"stages.\1.\2.bn2."),
        (r"^stages\.(\d+)\.(\d+)\.conv3_1x1\.conv\.", r"stages.\1.\2.conv3."),
        (r"^stages\.(\d+)\.(\d+)\.conv3_1x1\.bn\.", r"stages.\1.\2.bn3."),
        (r"^stages\.(\d+)\.(\d+)\.self_attn\.conv_lambda\.weight$", lambda m: slot(m) + "pos_kernel"),
        (r"^stages\.(\d+)\.(\d+)\.self_attn\.conv_lambda\.bias$", lambda m: slot(m) + "pos_bias"),
        (r"^stages\.(\d+)\.(\d+)\.self_attn\.pos_emb$", lambda m: slot(m) + "pos_kernel"),
        (r"^stages\.(\d+)\.(\d+)\.self_attn\.", slot),
        (r"^head\.fc\.", "head."),
    ]
    out = _rename(sd, rules)
    for k, v in sd.items():
        if k.endswith("self_attn.conv_lambda.weight"):
            out[_rename({k: v}, rules).popitem()[0]] = v[..., 0]
        elif k.endswith("self_attn.pos_emb"):
            out[_rename({k: v}, rules).popitem()[0]] = v.permute(2, 0, 1)[:, None].contiguous()
    return out


def infer_timm_lambda(sd: StateDict) -> Target:
    depths = tuple(_blocks(sd, r"^stages\.(\d+)\.(\d+)\."))
    if depths == (3, 4, 6, 3):
        return Target("lambda_resnet50ts")
    if any(k.endswith("self_attn.pos_emb") for k in sd):
        return Target("lambda_resnet26rpt_256")
    return Target("lambda_resnet26t")


# ---------------------------------------------------------------------------
# visattn's own files
# ---------------------------------------------------------------------------


def _identity(sd: StateDict) -> StateDict:
    return dict(sd)


def _infer_visattn(sd: StateDict) -> Target:
    return Target("", note="a visattn file names its model in its metadata (visattn convert writes it)")


# ---------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------

_TIMM_BICUBIC = Preprocess(interpolation="bicubic")

# How each converter is verified (tests/weights: the source model with random weights that move every
# tensor against visattn after conversion, float32; the figures measured there).
_V_RESNET = "bit-exact (tests/weights/test_timm_torchvision.py::test_resnet_matches_timm)"
_V_RESNET_S = (
    "bit-exact at output stride 8 (tests/weights/test_timm_torchvision.py::test_deep_stem_resnet_is_the_eanet_backbone)"
)
_V_SWIN = "bit-exact (tests/weights/test_timm_torchvision.py::test_swin_matches_timm)"
_V_SWIN_MS = "bit-exact (tests/weights/test_timm_torchvision.py::test_swin_original_layout)"
_V_LAMBDA = "relative error 3e-6 to 6e-7 in float32, 1e-14 in float64 (tests/weights/test_timm_torchvision.py::test_lambda_resnet_matches_timm)"
_V_TV = "bit-exact (tests/weights/test_timm_torchvision.py::test_torchvision_resnet50)"
_V_DET = "relative error 7e-7 on the body's maps (FrozenBatchNorm2d rounds differently; tests/weights/test_timm_torchvision.py::test_torchvision_maskrcnn_body)"
_V_PVT = "relative error 6e-7 (classifier, 224 and 128 px), 7e-7 (backbone maps) (tests/weights/test_authors.py::test_pvt_classifier_and_backbone)"
_V_EAMLP = "relative error 5e-7 (tests/weights/test_authors.py::test_eamlp_authors)"
_V_EANET = "relative error 1e-7 (tests/weights/test_authors.py::test_eanet_authors)"
_V_SLIDE = (
    "relative error 1e-6 against the authors' forward at reduced widths, 224 px; > 1e-2 without the qkv row "
    "permutation (tests/weights/test_authors.py::test_slide_swin_authors); no weights published yet"
)
_V_VISATTN = "round trip (tests/weights/test_sources.py::test_convert_command_round_trip)"

#: Every layout visattn reads, in detection order (the first whose signature matches wins).
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "slide-swin",
            "Slide-Transformer authors (LeapLabTHU/Slide-Transformer, Swin code base)",
            (r"^layers\.0\.blocks\.0\.attn\.dep_conv\.weight$",),
            convert_slide_swin,
            infer_slide_swin,
            verified=_V_SLIDE,
            dropped="relative_position_index buffers; the fixed shift kernel (visattn holds it as a buffer)",
            preprocess=Preprocess(crop_pct=0.875, interpolation="bicubic"),
        ),
        Format(
            "swin-original",
            "Microsoft's Swin Transformer (SwinTransformer/storage releases)",
            (r"^layers\.0\.downsample\.reduction\.weight$", r"^layers\.0\.blocks\.0\.attn\.qkv\.weight$"),
            convert_swin_original,
            infer_swin,
            verified=_V_SWIN_MS,
            dropped="relative_position_index, attn_mask (buffers visattn computes)",
            preprocess=Preprocess(crop_pct=0.9, interpolation="bicubic"),
        ),
        Format(
            "timm-swin",
            "timm's Swin Transformer (timm/swin_*)",
            (r"^layers\.1\.downsample\.reduction\.weight$", r"^layers\.0\.blocks\.0\.attn\.qkv\.weight$"),
            convert_timm_swin,
            infer_swin,
            verified=_V_SWIN,
            exclude=(r"^layers\.0\.downsample\.",),
            dropped="relative_position_index, attn_mask (buffers visattn computes)",
            preprocess=Preprocess(crop_pct=0.9, interpolation="bicubic"),
        ),
        Format(
            "pvt-v1",
            "PVT v1 authors (whai362/PVT classification)",
            (r"^patch_embed1\.proj\.weight$", r"^block1\.0\.attn\.q\.weight$", r"^pos_embed1$"),
            convert_pvt,
            infer_pvt,
            verified=_V_PVT,
            dropped="none (the class token's position entry is folded into cls_token)",
            preprocess=Preprocess(crop_pct=0.875, interpolation="bicubic"),
            required=lambda sd: {"norm_eps": 1e-6},
        ),
        Format(
            "eamlp",
            "EANet authors' EAMLP (MenghaoGuo/EANet EAMLP/, timm-0.3 checkpoints; state_dict_ema preferred)",
            (r"^tokens_to_token\.attention1\.attn\.q_linear\.weight$",),
            convert_eamlp,
            infer_eamlp,
            verified=_V_EAMLP,
            dropped="M_k biases (cancel in the softmax over positions); the fixed sinusoid pos_embed (checked)",
            preprocess=Preprocess(crop_pct=0.9, interpolation="bicubic"),
        ),
        Format(
            "eanet",
            "EANet authors' segmentation model (MenghaoGuo/EANet model_torch.py, {'net': ...})",
            (r"^extractor\.0\.0\.weight$", r"^linu\.linear_0\.weight$"),
            convert_eanet,
            infer_eanet,
            verified=_V_EANET,
            preprocess=Preprocess(input_size=513, crop_pct=1.0),
            required=_eanet_required,
        ),
        Format(
            "timm-lambda",
            "timm's lambda ResNets (ByobNet: timm/lambda_resnet*)",
            (r"^stem\.conv1\.conv\.weight$", r"^stages\.\d+\.\d+\.self_attn\.qkv\.weight$"),
            convert_timm_lambda,
            infer_timm_lambda,
            verified=_V_LAMBDA,
            preprocess=Preprocess(input_size=256, crop_pct=0.94, interpolation="bicubic"),
        ),
        Format(
            "torchvision-detection",
            "torchvision detectors with a ResNet-FPN backbone (backbone.body.*): the ResNet body",
            (r"^backbone\.body\.layer1\.0\.conv1\.weight$",),
            convert_torchvision_detector,
            infer_torchvision_detector,
            verified=_V_DET,
            dropped="the FPN, RPN and RoI heads (torchvision's own modules; see split_detector)",
            preprocess=Preprocess(input_size=800, crop_pct=1.0),
        ),
        Format(
            "timm-resnet",
            "timm / torchvision ResNet (conv1, bn1, layerN, fc; gluon 's' deep stem)",
            (r"^layer1\.0\.conv1\.weight$", r"^conv1\.(\d\.)?weight$"),
            convert_resnet,
            infer_resnet,
            verified=_V_RESNET + "; torchvision: " + _V_TV,
        ),
        Format(
            "visattn",
            "visattn (visattn convert, save_weights, training runs)",
            (r"^(stem|stages|blocks|backbone|decode_head|patch_embed)\.",),
            _identity,
            _infer_visattn,
            verified=_V_VISATTN,
        ),
    )
}


def detect_format(keys, metadata: Mapping[str, str] | None = None) -> Format:
    """The format of a state dict from its keys (and a safetensors file's metadata): the first
    :data:`FORMATS` entry whose signature matches. Raises ValueError naming some keys otherwise."""
    meta = metadata or {}
    if "visattn.aliases" in meta or meta.get("format", "").startswith("visattn"):
        return FORMATS["visattn"]
    keys = list(keys)
    for f in FORMATS.values():
        if f.matches(keys):
            return f
    shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    raise ValueError(
        f"unknown checkpoint layout (keys {shown}); visattn reads {', '.join(FORMATS)} "
        "(docs/weights.md); name one with source_format= if the detection is wrong"
    )


# -- the sources -------------------------------------------------------------------------------


#: timm's resnet50 tags: (tag, input side, crop_pct, interpolation, licence).
_RESNET50_TAGS = (
    ("a1_in1k", 224, 0.95, "bicubic", "apache-2.0"),
    ("a1h_in1k", 176, 0.9, "bicubic", "apache-2.0"),
    ("a2_in1k", 224, 0.95, "bicubic", "apache-2.0"),
    ("a3_in1k", 160, 0.95, "bicubic", "apache-2.0"),
    ("am_in1k", 224, 0.875, "bicubic", "apache-2.0"),
    ("b1k_in1k", 224, 0.95, "bicubic", "apache-2.0"),
    ("b2k_in1k", 224, 0.95, "bicubic", "apache-2.0"),
    ("bt_in1k", 224, 0.875, "bicubic", "apache-2.0"),
    ("c1_in1k", 224, 0.95, "bicubic", "apache-2.0"),
    ("c2_in1k", 224, 0.95, "bicubic", "apache-2.0"),
    ("d_in1k", 224, 0.95, "bicubic", "apache-2.0"),
    ("fb_ssl_yfcc100m_ft_in1k", 224, 0.875, "bilinear", "cc-by-nc-4.0"),
    ("fb_swsl_ig1b_ft_in1k", 224, 0.875, "bilinear", "cc-by-nc-4.0"),
    ("gluon_in1k", 224, 0.875, "bicubic", "apache-2.0"),
    ("ra_in1k", 224, 0.875, "bicubic", "apache-2.0"),
    ("ram_in1k", 224, 0.875, "bicubic", "apache-2.0"),
    ("tv2_in1k", 176, 0.875, "bilinear", "bsd-3-clause"),
    ("tv_in1k", 224, 0.875, "bilinear", "bsd-3-clause"),
)

_SWIN_SIZES = {
    "tiny": ({}, 28_288_354),
    "small": ({"depths": (2, 2, 18, 2)}, 49_606_258),
    "base": ({"depths": (2, 2, 18, 2), "embed_dims": (128, 256, 512, 1024), "num_heads": (4, 8, 16, 32)}, 87_768_224),
}
#: Parameters with the 21,841-class ImageNet-22k head instead of 1000 classes: + (21841 - 1000) x (C + 1).
_IN22K = 21841


def _swin_sources() -> list[WeightSource]:
    out = []
    swin_pre = Preprocess(crop_pct=0.9, interpolation="bicubic")
    ms = "https://github.com/SwinTransformer/storage/releases/download"
    for size, (kw, params) in _SWIN_SIZES.items():
        c = 768 if size != "base" else 1024
        arch = f"swin_{size}_patch4_window7_224"
        for tag, classes in (("ms_in1k", 1000), ("ms_in22k", _IN22K), ("ms_in22k_ft_in1k", 1000)):
            out.append(
                WeightSource(
                    f"timm/{arch}.{tag}",
                    f"hf-hub:timm/{arch}.{tag}",
                    "timm-swin",
                    "swin_t",
                    params + (classes - 1000) * (c + 1),
                    "mit",
                    _V_SWIN,
                    model_kwargs=dict(kw),
                    num_classes=classes,
                    preprocess=swin_pre,
                )
            )
        out.append(
            WeightSource(
                f"swin/{arch}",
                f"{ms}/v1.0.0/{arch}.pth",
                "swin-original",
                "swin_t",
                params,
                "mit",
                _V_SWIN_MS,
                model_kwargs=dict(kw),
                preprocess=swin_pre,
                notes="Microsoft's original file ({'model': ...}, patch merging at the end of a stage)",
            )
        )
    return out


def _build_sources() -> dict[str, WeightSource]:
    timm_rn = [
        WeightSource(
            f"timm/resnet50.{tag}",
            f"hf-hub:timm/resnet50.{tag}",
            "timm-resnet",
            "resnet50",
            25_557_032,
            lic,
            _V_RESNET,
            preprocess=Preprocess(input_size=side, crop_pct=crop, interpolation=interp),
            notes="non-commercial licence" if lic.startswith("cc-by-nc") else "",
        )
        for tag, side, crop, interp, lic in _RESNET50_TAGS
    ]
    rows = [
        *timm_rn,
        WeightSource(
            "timm/resnet26.bt_in1k",
            "hf-hub:timm/resnet26.bt_in1k",
            "timm-resnet",
            "resnet26",
            15_995_176,
            "apache-2.0",
            _V_RESNET,
            preprocess=_TIMM_BICUBIC,
        ),
        WeightSource(
            "timm/resnet50s.gluon_in1k",
            "hf-hub:timm/resnet50s.gluon_in1k",
            "timm-resnet",
            "eanet_r50",
            23_631_808,
            "apache-2.0",
            _V_RESNET_S,
            part="backbone",
            preprocess=_TIMM_BICUBIC,
            notes="the deep-stem ResNet-50 the EANet paper starts from; initialises eanet_r50's backbone",
        ),
        WeightSource(
            "timm/resnet101s.gluon_in1k",
            "hf-hub:timm/resnet101s.gluon_in1k",
            "timm-resnet",
            "eanet_r101",
            42_623_936,
            "apache-2.0",
            _V_RESNET_S,
            part="backbone",
            preprocess=_TIMM_BICUBIC,
            notes="the deep-stem ResNet-101 the EANet paper starts from; initialises eanet_r101's backbone",
        ),
        *_swin_sources(),
        WeightSource(
            "timm/lambda_resnet26t.c1_in1k",
            "hf-hub:timm/lambda_resnet26t.c1_in1k",
            "timm-lambda",
            "lambda_resnet26t",
            10_958_272,
            "apache-2.0",
            _V_LAMBDA,
            preprocess=Preprocess(input_size=256, crop_pct=0.94, interpolation="bicubic"),
        ),
        WeightSource(
            "timm/lambda_resnet50ts.a1h_in1k",
            "hf-hub:timm/lambda_resnet50ts.a1h_in1k",
            "timm-lambda",
            "lambda_resnet50ts",
            21_536_832,
            "apache-2.0",
            _V_LAMBDA,
            preprocess=Preprocess(input_size=256, crop_pct=0.95, interpolation="bicubic"),
        ),
        WeightSource(
            "timm/lambda_resnet26rpt_256.c1_in1k",
            "hf-hub:timm/lambda_resnet26rpt_256.c1_in1k",
            "timm-lambda",
            "lambda_resnet26rpt_256",
            10_988_688,
            "apache-2.0",
            _V_LAMBDA,
            preprocess=Preprocess(input_size=256, crop_pct=0.94, interpolation="bicubic"),
            notes="fixed input size 256 (its relative tables cover 16 x 16 and 8 x 8 maps)",
        ),
        WeightSource(
            "torchvision/resnet50.IMAGENET1K_V1",
            "https://download.pytorch.org/models/resnet50-0676ba61.pth",
            "timm-resnet",
            "resnet50",
            25_557_032,
            "bsd-3-clause",
            _V_TV,
            sha256="0676ba61",
            preprocess=Preprocess(crop_pct=224 / 256),
        ),
        WeightSource(
            "torchvision/resnet50.IMAGENET1K_V2",
            "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
            "timm-resnet",
            "resnet50",
            25_557_032,
            "bsd-3-clause",
            _V_TV,
            sha256="11ad3fa6",
            preprocess=Preprocess(crop_pct=224 / 232),
        ),
        WeightSource(
            "torchvision/maskrcnn_resnet50_fpn.COCO_V1",
            "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
            "torchvision-detection",
            "resnet50",
            23_508_032,
            "bsd-3-clause",
            _V_DET,
            part="backbone",
            num_classes=0,
            sha256="bf2d0c1e",
            preprocess=Preprocess(input_size=800, crop_pct=1.0),
            notes="the COCO Mask R-CNN's ResNet-50 body (FrozenBatchNorm statistics) for a detector's or "
            "segmenter's backbone; visattn.models.convert.split_detector keeps the FPN and heads",
        ),
        WeightSource(
            "pvt/pvt_tiny",
            "https://github.com/whai362/PVT/releases/download/v2/pvt_tiny.pth",
            "pvt-v1",
            "pvt_t",
            13_228_776,
            "apache-2.0",
            _V_PVT,
            model_kwargs={"norm_eps": 1e-6, "class_token": True},
            preprocess=Preprocess(crop_pct=0.875, interpolation="bicubic"),
            backbone_of=("fpn_pvt_t",),
            notes="the classifier needs class_token=True and norm_eps=1e-6 (create_model sets both); as "
            "fpn_pvt_t's backbone (the PVT paper's ADE20K start) the token is dropped, as in the authors' "
            "segmentation code",
        ),
        WeightSource(
            "eamlp/EAMLP_7_384",
            "https://github.com/MenghaoGuo/EANet/raw/c4bb93b82e11d75d3738517d1d2089f4726ff9e4/EAMLP/EAMLP_7_384/model_best.pth.tar",
            "eamlp",
            "eamlp_7",
            6_095_182,
            "not stated (the code is Clear BSD, from T2T-ViT)",
            _V_EAMLP,
            model_kwargs={"class_token": True, "img_size": 384},
            preprocess=Preprocess(input_size=384, crop_pct=0.9, interpolation="bicubic"),
            notes="71.7% top-1 at 384 px (the authors' README) from the EMA weights (state_dict_ema, read by "
            "default); committed in the authors' repository",
        ),
        WeightSource(
            "eanet/voc_r101",
            "https://cloud.tsinghua.edu.cn/f/1e7253ae0748470482e4/?dl=1",
            "eanet",
            "eanet_r101",
            53_839_061,
            "not stated",
            _V_EANET,
            model_kwargs={"multi_grid": (1, 2, 4)},
            num_classes=21,
            preprocess=Preprocess(input_size=513, crop_pct=1.0),
            notes="PASCAL VOC (the EANet README's link; a Tsinghua cloud share whose liveness is not checked "
            "here); needs multi_grid=(1, 2, 4) (create_model sets it)",
        ),
    ]
    return {s.name: s for s in rows}


#: Every published file visattn knows, by name (see :class:`WeightSource`).
SOURCES: dict[str, WeightSource] = _build_sources()


def find_source(source: str) -> WeightSource | None:
    """The table entry named ``source`` or living at ``source`` (its location), else None."""
    if source in SOURCES:
        return SOURCES[source]
    for s in SOURCES.values():
        if s.location == source:
            return s
    return None


def sources_for(model: str) -> list[WeightSource]:
    """The table's entries that load into (or initialise the backbone of) ``model``."""
    return [s for s in SOURCES.values() if s.model == model or model in s.backbone_of]
