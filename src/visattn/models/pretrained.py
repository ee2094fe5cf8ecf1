"""Real weights: read a published checkpoint, convert it and load it into a visattn model.

The entry points (docs/weights.md):

* ``visattn.create_model(name, pretrained=SOURCE)``: builds the model with the options the weights
  need (the source table's, or what the keys say: ``norm_eps``, ``class_token``, ``multi_grid``...;
  the caller's options win) and the weights' class count unless ``num_classes`` is given, then
  loads them. ``backbone_pretrained=SOURCE`` initialises a segmentation model's backbone (and
  ``pretrained=`` with a backbone's weights on a segmentation model does the same, saying so);
  with ``features_only=True`` the weights fill the pruned backbone.
* :func:`load_pretrained` ``(model, SOURCE)``: the same load into a model already built.
* :func:`load_backbone_pretrained` ``(module, SOURCE)``: a backbone's weights into the visattn
  backbone inside ``module``: a ``features_only`` model, or any module holding one as
  ``.backbone`` / ``.body`` / ``.model`` (a segmentation model, a torchvision detector).
* :func:`convert_checkpoint` (``visattn convert SOURCE OUT``): a visattn safetensors file, with
  the model, its options and the preprocessing in its metadata, verified by loading it strictly.

SOURCE is a path, an ``http(s)://`` URL, ``hf-hub:ORG/REPO[:FILE]`` (:mod:`visattn.models.hub`),
or a name from the source table (:data:`visattn.models.convert.SOURCES`). The layout is detected
from the keys (:func:`visattn.models.convert.detect_format`) or named with ``source_format=``.

Pickled files (``.pth``, ``.pth.tar``, ``.bin``) are read with ``torch.load(weights_only=True)``
and an explicit allow-list of harmless classes (:data:`ALLOWED_GLOBALS`: ``argparse.Namespace``,
numpy scalars and dtypes); a file that needs anything else is refused with the classes it names
and how to convert it elsewhere. Nothing is ever unpickled beyond that.

Loads are strict: every tensor of the model must come from the file and every tensor of the file
must be used, with these exceptions, each reported (logger ``visattn.pretrained``, and the
returned :class:`LoadReport`): a classifier of another size (or none) keeps its fresh
initialisation (fine-tuning); position tables of another size are resized as their authors do
(Swin's relative-position tables bicubically, PVT's position embeddings bilinearly); a backbone
load leaves out what the backbone does not have (the head, the final norm, pruned stages, a class
token). A model built with other options than the weights were trained with (e.g. ``norm_eps``,
``multi_grid``) loads with a warning that its outputs differ from the authors'.

The weights' preprocessing travels with them: ``model.pretrained_cfg`` (mean, std, input size,
crop, interpolation, source, format, licence) is set by every load; ``visattn train --pretrained``
normalises with it and writes it into the run's ``config.json``; ``visattn viz`` and
``visattn predict`` read it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.models.convert import FORMATS, Format, Target, WeightSource, detect_format, find_source
from visattn.models.hub import fetch

__all__ = [
    "ALLOWED_GLOBALS",
    "Checkpoint",
    "LoadReport",
    "open_checkpoint",
    "read_state_dict",
    "load_pretrained",
    "load_backbone_pretrained",
    "find_backbone",
    "create_pretrained",
    "convert_checkpoint",
    "read_pretrained_cfg",
]

logger = logging.getLogger("visattn.pretrained")

#: safetensors metadata keys of a converted file.
META_MODEL, META_KWARGS, META_CFG = "visattn.model", "visattn.model_kwargs", "visattn.pretrained_cfg"
#: Wrapper keys of training checkpoints, in the order they are preferred (EMA weights first: the
#: timm-0.3 evaluation of EAMLP-7 reads ``state_dict_ema``).
WRAPPERS = ("state_dict_ema", "model_ema", "model", "state_dict", "net", "module")


def _numpy_globals() -> list:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a core dependency
        return []
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [core.multiarray.scalar, np.dtype, *dtypes]


#: The classes a pickled checkpoint may name besides tensors and plain containers: a training
#: run's ``argparse.Namespace`` (timm's train script) and numpy scalars (metrics).
ALLOWED_GLOBALS: list = [argparse.Namespace, *_numpy_globals()]


# ---------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "torch"


def _torch_load(path: Path) -> Any:
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe is not None:
            with safe(ALLOWED_GLOBALS):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)  # pragma: no cover - torch < 2.5
    except Exception as e:
        msg = " ".join(str(e).split())
        if "Weights only load failed" in msg or "Unsupported global" in msg or "weights_only" in msg:
            names: list[str] = []
            try:
                names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except Exception:
                pass
            allowed = {f"{c.__module__}.{c.__qualname__}" for c in ALLOWED_GLOBALS}
            names = [n for n in names if n not in allowed]
            what = ", ".join(names) if names else "classes outside visattn's allow-list"
            raise ValueError(
                f"{path}: refused to unpickle {what}: only tensors, containers and {sorted(allowed)[:3]}... are read. "
                "If you trust the file, extract its tensors elsewhere: torch.load(path, weights_only=False) then "
                "safetensors.torch.save_file(state_dict, 'weights.safetensors'), and load that file"
            ) from None
        raise ValueError(
            f"cannot read {path} as a PyTorch checkpoint (truncated or not a checkpoint?): {msg}"
        ) from None


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a checkpoint object, and the wrapper key it came from ("" for none)."""
    where = ""
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj, where = inner, key
                break
        else:
            keys = sorted(obj)[:8]
            raise ValueError(
                f"{path}: no state dict found (top-level keys {keys}); expected tensors, or one of {list(WRAPPERS)} "
                "holding them"
            )
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):  # DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd, where


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """``(state dict, safetensors metadata, wrapper)`` of a weights file (see the module docstring)."""
    path = Path(path)
    if _sniff(path) == "safetensors":
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors comes with the cli extra
            raise ImportError("reading .safetensors files needs the safetensors package (visattn[cli])") from e
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(str(path)), meta, ""
        except Exception as e:  # safetensors raises its own types for a damaged file
            raise ValueError(f"cannot read {path} as a safetensors file (truncated?): {e}") from None
    sd, where = _unwrap(_torch_load(path), path)
    return sd, {}, where


# ---------------------------------------------------------------------------
# A checkpoint, converted
# ---------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A weights file read and converted to visattn keys (see :func:`open_checkpoint`)."""

    source: str
    path: Path
    format: Format
    state_dict: dict[str, torch.Tensor]
    target: Target
    entry: WeightSource | None
    pretrained_cfg: dict[str, Any]
    raw: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    wrapper: str = ""

    def num_classes(self) -> int | None:
        """Classifier outputs of the weights (None when they have no classifier)."""
        for key in ("head.weight", "decode_head.classifier.weight"):
            if key in self.state_dict:
                return int(self.state_dict[key].shape[0])
        return None

    def is_segmentation(self) -> bool:
        return any(k.startswith("decode_head.") for k in self.state_dict)

    def options_for(self, name: str, backbone: bool = False) -> dict[str, Any]:
        """Builder options the weights need in model ``name`` (the caller's options override them):
        the table entry's, else what the keys say, when they describe ``name``; a backbone
        (``backbone=True``) runs without a class token, as the authors' dense-prediction code does."""
        if self.entry is not None and self.entry.model == name and self.entry.part == "model":
            kw = _copy(self.entry.model_kwargs)
        elif self.target.model == name:
            kw = _copy(self.target.kwargs)
        else:
            return {}
        if backbone:
            kw.pop("class_token", None)
        return kw

    def describe(self) -> str:
        what = self.target.describe() or "a visattn model"
        return f"{self.format.title} weights of {what}"


def _copy(d: dict) -> dict:
    return json.loads(json.dumps(d)) if d else {}


def _as_source(source) -> str:
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(
            f"a weights source must be a path, an http(s) URL, hf-hub:ORG/REPO[:FILE] or a source name, "
            f"got {type(source).__name__}"
        )
    return source


def open_checkpoint(source, *, source_format: str | None = None, progress: bool = True) -> Checkpoint:
    """Fetch, read, detect and convert ``source`` (see the module docstring)."""
    if isinstance(source, Checkpoint):
        return source
    source = _as_source(source)
    entry = None if Path(source).expanduser().is_file() else find_source(source)
    location = entry.location if entry is not None else source
    path = fetch(location, sha256=entry.sha256 if entry else None, progress=progress)
    raw, meta, wrapper = read_state_dict(path)
    if source_format is not None:
        if source_format not in FORMATS:
            raise ValueError(f"unknown source_format {source_format!r}; expected one of {list(FORMATS)}")
        fmt = FORMATS[source_format]
    elif entry is not None:
        fmt = FORMATS[entry.format]
    else:
        fmt = detect_format(raw, meta)
    try:
        sd = fmt.convert(raw)
    except (KeyError, IndexError, RuntimeError) as e:
        raise ValueError(f"{source}: not {fmt.title} weights as expected ({type(e).__name__}: {e})") from None
    if fmt.name == "visattn":
        target = Target(meta.get(META_MODEL, ""), json.loads(meta.get(META_KWARGS, "{}") or "{}"))
    else:
        try:
            target = fmt.infer(raw)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{source}: not {fmt.title} weights as expected ({type(e).__name__}: {e})") from None
    if META_CFG in meta:
        cfg = json.loads(meta[META_CFG])
    else:
        pre = entry.preprocess if entry is not None else fmt.preprocess
        cfg = {
            "source": source,
            "name": entry.name if entry is not None else "",
            "format": fmt.name,
            **pre.as_dict(),
            "license": entry.license if entry is not None else "unknown",
            "assumed": entry is None,  # preprocessing of the format, not stated by the publisher
        }
    ck = Checkpoint(source, path, fmt, sd, target, entry, cfg, raw, wrapper)
    cfg.setdefault("num_classes", ck.num_classes() or 0)
    return ck


def read_pretrained_cfg(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``pretrained_cfg`` a visattn safetensors file carries (``visattn convert``), else None."""
    path = Path(path)
    if not path.is_file() or _sniff(path) != "safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    return json.loads(meta[META_CFG]) if META_CFG in meta else None


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a load did: tensors copied, classifier keys left at their initialisation, position
    tables resized, file tensors the model does not use, and the messages logged."""

    loaded: int = 0
    reinitialized: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def note(self, msg: str) -> None:
        self.messages.append(msg)
        logger.warning(msg)


def find_backbone(module: nn.Module) -> tuple[nn.Module, str]:
    """The visattn backbone (a VisionModel) inside ``module`` and its dotted name: ``module``
    itself, a ``features_only`` model's ``.model``, or one reached through ``.backbone``,
    ``.body`` or ``.model`` (segmentation models, torchvision detectors)."""
    from visattn.models.base import VisionModel

    todo: list[tuple[nn.Module, str]] = [(module, "")]
    for _ in range(6):
        nxt = []
        for m, name in todo:
            if isinstance(m, VisionModel):
                return m, name
            for attr in ("model", "backbone", "body"):
                child = getattr(m, attr, None)
                if isinstance(child, nn.Module):
                    nxt.append((child, f"{name}.{attr}" if name else attr))
        todo = nxt
    raise TypeError(
        f"{type(module).__name__} holds no visattn backbone (a VisionModel as itself, .model, .backbone or .body)"
    )


def _classifier_prefix(module: nn.Module) -> str | None:
    get = getattr(module, "get_classifier", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    for name, m in module.named_modules():
        if m is head and name:
            return name + "."
    return None


def _resize_table(key: str, t: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A position table of another size resized as its authors do, or None for any other tensor."""
    if key.endswith("relative_position_bias_table") and t.dim() == 2 and len(shape) == 2 and t.shape[1] == shape[1]:
        s1, s2 = math.isqrt(t.shape[0]), math.isqrt(shape[0])
        if s1 * s1 == t.shape[0] and s2 * s2 == shape[0]:  # Swin: bicubic over the (2M-1) x (2M-1) offsets
            grid = t.T.reshape(1, t.shape[1], s1, s1).float()
            out = F.interpolate(grid, size=(s2, s2), mode="bicubic", align_corners=False)
            return out.reshape(t.shape[1], s2 * s2).T.to(t.dtype).contiguous()
    if key.endswith("pos_embed") and t.dim() == 4 and len(shape) == 4 and t.shape[:2] == shape[:2]:
        out = F.interpolate(t.float(), size=tuple(shape[2:]), mode="bilinear", align_corners=False)  # PVT
        return out.to(t.dtype)
    return None


def _mismatch_message(source: str, what: str, model_name: str, missing, unexpected, wrong) -> str:
    def first(items, n=4):
        items = list(items)
        return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")

    parts = []
    if wrong:
        parts.append(f"{len(wrong)} of another shape ({first(wrong, 3)})")
    if missing:
        parts.append(f"{len(missing)} missing from the file ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model ({first(unexpected)})")
    return f"{source}: {what} do not fit {model_name}: " + "; ".join(parts)


def _load_state(
    module: nn.Module,
    sd: dict[str, torch.Tensor],
    *,
    source: str,
    what: str,
    backbone: bool,
    strict: bool,
    report: LoadReport,
) -> None:
    """Check ``sd`` against ``module`` (see the module docstring) and copy it in."""
    from visattn.models.blocks import remap_legacy_keys

    sd = remap_legacy_keys(module, dict(sd))
    expected = module.state_dict()
    name = getattr(module, "name", None) or type(module).__name__
    head = _classifier_prefix(module)
    fresh: set[str] = set()  # the model's classifier keys left at their initialisation
    if head is not None:
        file_head = sorted(k for k in sd if k.startswith(head))
        model_head = sorted(k for k in expected if k.startswith(head))
        same = file_head == model_head and all(sd[k].shape == expected[k].shape for k in file_head)
        if file_head and not same:
            n_file = int(sd[file_head[0]].shape[0]) if file_head else 0
            n_model = getattr(module, "num_classes", None)
            for k in file_head:
                del sd[k]
            if model_head:
                fresh.update(model_head)
                report.reinitialized += model_head
                report.note(
                    f"{head.rstrip('.')}: the weights have {n_file} classes, the model {n_model}: the classifier keeps "
                    "its fresh initialisation (fine-tuning)"
                )
            else:
                report.unused += file_head
                report.note(
                    f"{head.rstrip('.')}: the weights' {n_file}-class classifier is not used (the model has none)"
                )
    for k in list(sd):
        if k in expected and sd[k].shape != expected[k].shape:
            resized = _resize_table(k, sd[k], expected[k].shape)
            if resized is not None:
                report.resized.append(k)
                report.note(f"{k}: resized {tuple(sd[k].shape)} -> {tuple(expected[k].shape)} for this input size")
                sd[k] = resized
    optional = {
        f"{n}.{k}" if n else k for n, m in module.named_modules() for k in getattr(m, "_optional_state_keys", ())
    }
    missing = sorted(set(expected) - set(sd) - optional - fresh)
    unexpected = sorted(set(sd) - set(expected))
    wrong = [
        f"{k}: file {tuple(sd[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    wrong += [
        f"{k}: file {sd[k].dtype}, model {expected[k].dtype}"
        for k in expected
        if k in sd and expected[k].is_floating_point() and not sd[k].is_floating_point()
    ]
    if backbone:
        if unexpected:
            report.unused += unexpected
            report.note(
                f"not used by the backbone ({len(unexpected)} tensors): "
                + ", ".join(unexpected[:4])
                + (" ..." if len(unexpected) > 4 else "")
            )
        unexpected = []
    if wrong or (strict and (missing or unexpected)):
        raise ValueError(_mismatch_message(source, what, name, missing, unexpected, wrong))
    if missing or unexpected:
        report.note(f"non-strict load: {len(missing)} tensors not in the file, {len(unexpected)} not in the model")
    module.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False)
    report.loaded += sum(1 for k in sd if k in expected)


def _check_options(ck: Checkpoint, module: nn.Module, report: LoadReport) -> None:
    try:
        vm, _ = find_backbone(module)
    except TypeError:
        return
    cfg = getattr(vm, "cfg", None)
    for opt, value in ck.format.required(ck.raw).items():
        have = getattr(cfg, opt, None)
        if (
            cfg is not None
            and hasattr(cfg, opt)
            and have != value
            and not (isinstance(have, tuple) and list(have) == list(value))
        ):
            report.note(
                f"the weights were trained with {opt}={value!r}, the model has {opt}={have!r}: it loads, but its outputs "
                f"differ from the authors' (create_model(..., pretrained=...) sets {opt})"
            )


def load_pretrained(
    model: nn.Module,
    source,
    *,
    source_format: str | None = None,
    strict: bool = True,
    progress: bool = True,
) -> LoadReport:
    """Load published (or converted) weights into ``model`` (see the module docstring).

    A ``features_only`` model is loaded as a backbone (:func:`load_backbone_pretrained`); a
    segmentation model given a backbone's weights is told to use that function. Sets
    ``model.pretrained_cfg``. Returns a :class:`LoadReport`; raises ValueError naming the first
    mismatching keys and shapes and the model the file looks like.
    """
    from visattn.models.features import FeatureExtractor

    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    ck = open_checkpoint(source, source_format=source_format, progress=progress)
    if isinstance(model, FeatureExtractor):
        return load_backbone_pretrained(model, ck, progress=progress)
    if hasattr(model, "decode_head") and not ck.is_segmentation():
        raise ValueError(
            f"{ck.source}: {ck.describe()} are a classifier's / backbone's weights, not {type(model).__name__}'s: "
            "load them with load_backbone_pretrained(model, ...) or create_model(..., backbone_pretrained=...)"
        )
    report = LoadReport()
    _load_state(
        model, ck.state_dict, source=ck.source, what=ck.describe(), backbone=False, strict=strict, report=report
    )
    _check_options(ck, model, report)
    setattr(model, "pretrained_cfg", dict(ck.pretrained_cfg))  # noqa: B010 (nn.Module's typed __setattr__)
    return report


def load_backbone_pretrained(
    module: nn.Module, source, *, source_format: str | None = None, progress: bool = True
) -> LoadReport:
    """Load a classifier's / backbone's weights into the visattn backbone inside ``module``.

    ``module``: a ``features_only`` model, or anything holding one as ``.backbone`` / ``.body`` /
    ``.model`` (``find_backbone``): a segmentation model, a torchvision detector whose body is a
    visattn ``features_only`` model. Every tensor of the backbone must come from the file; what
    the backbone does not have (classifier, final norm, pruned stages, class token) is left out and
    reported. Sets ``module.pretrained_cfg``. For a torchvision detector's file (``backbone.body.*``)
    only its ResNet body is read.
    """
    ck = open_checkpoint(source, source_format=source_format, progress=progress)
    vm, where = find_backbone(module)
    sd = ck.state_dict
    if ck.is_segmentation():  # a whole segmentation model's file: its backbone part
        sd = {k[len("backbone.model.") :]: v for k, v in sd.items() if k.startswith("backbone.model.")}
    report = LoadReport()
    _load_state(vm, sd, source=ck.source, what=ck.describe(), backbone=True, strict=True, report=report)
    _check_options(ck, vm, report)
    for m in {id(module): module, id(vm): vm}.values():
        setattr(m, "pretrained_cfg", dict(ck.pretrained_cfg))  # noqa: B010 (nn.Module's typed __setattr__)
    logger.info("loaded %d backbone tensors into %s", report.loaded, where or type(module).__name__)
    return report


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def create_pretrained(
    name: str,
    pretrained=None,
    backbone_pretrained=None,
    *,
    num_classes: int | None = None,
    attention: str | None = None,
    attn_kwargs: dict | None = None,
    features_only: bool = False,
    out_indices=None,
    source_format: str | None = None,
    progress: bool = True,
    **kwargs,
) -> nn.Module:
    """``create_model(name, pretrained=..., backbone_pretrained=...)`` (see the module docstring)."""
    from visattn.registry import create_model, model_entry

    entry = model_entry(name)
    segment = entry.task != "classify"
    ck = open_checkpoint(pretrained, source_format=source_format, progress=progress) if pretrained is not None else None
    bk = open_checkpoint(backbone_pretrained, progress=progress) if backbone_pretrained is not None else None
    if segment and ck is not None and not ck.is_segmentation():
        if bk is not None:
            raise ValueError(
                f"{ck.source} holds a backbone's weights and backbone_pretrained is given too; give one of them"
            )
        logger.warning(
            "%s: a backbone's weights: they initialise %s's backbone (backbone_pretrained=)", ck.source, name
        )
        ck, bk = None, ck
    if bk is not None and not segment and not features_only:
        raise ValueError(
            f"backbone_pretrained= is for segmentation and detection models and features_only backbones; {name!r} is a classifier: "
            "use pretrained="
        )
    options: dict[str, Any] = {}
    if ck is not None:
        options = ck.options_for(name, backbone=features_only)
        if num_classes is None and not features_only:  # the weights' class count
            num_classes = ck.num_classes()
    if bk is not None:
        back = bk.target.backbone_kwargs if bk.target.model else {}
        if segment and back:
            options = _merge(options, {"backbone_kwargs": back} if entry.family in ("semantic_fpn", "detect") else back)
        elif features_only:
            options = _merge(options, bk.options_for(name, backbone=True))
    model = create_model(
        name,
        num_classes=num_classes,
        attention=attention,
        attn_kwargs=attn_kwargs,
        features_only=features_only,
        out_indices=out_indices,
        **_merge(options, kwargs),
    )
    if ck is not None:
        load_pretrained(model, ck, progress=progress)
    if bk is not None:
        load_backbone_pretrained(model, bk, progress=progress)
    # the options the weights set, so that a run folder or a converted file rebuilds the same model
    cfg = getattr(model, "pretrained_cfg")  # noqa: B009
    cfg["model_kwargs"] = options
    _own_input_size(cfg, name)
    return model


def _own_input_size(cfg: dict[str, Any], name: str) -> None:
    """A visattn file's assumed preprocessing takes the model's own input size (not ImageNet's 224)."""
    from visattn.registry import model_entry

    if cfg.get("assumed") and cfg.get("format") == "visattn":
        cfg["input_size"] = list(model_entry(name).default_input)


def convert_checkpoint(
    source,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    source_format: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert ``source`` into a visattn safetensors file ``out`` (atomically), verified by a strict
    load into the model the weights describe (``model`` / ``model_kwargs`` to choose another).

    The file's metadata holds the model name, its options and the ``pretrained_cfg``, so
    ``create_model(model, pretrained=out)`` rebuilds the same model. Returns a summary dict.
    """
    from visattn.models.io import save_weights
    from visattn.registry import create_model

    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {str(out.parent)!r} for {out.name} does not exist")
    ck = open_checkpoint(source, source_format=source_format, progress=progress)
    if model is None:
        if ck.entry is not None and ck.entry.part == "model":
            model = ck.entry.model
        else:
            model = ck.target.model
    if not model:
        raise ValueError(f"{ck.source}: cannot tell which visattn model these weights are for; name one (--model)")
    kwargs = _merge(ck.options_for(model), model_kwargs or {})
    segment = ck.is_segmentation()
    net = create_model(model, num_classes=ck.num_classes() or (None if segment else 0), **kwargs)
    report = LoadReport()
    _load_state(net, ck.state_dict, source=ck.source, what=ck.describe(), backbone=False, strict=True, report=report)
    _check_options(ck, net, report)
    cfg = {**ck.pretrained_cfg, "model": model, "model_kwargs": kwargs}
    _own_input_size(cfg, model)
    meta = {
        "format": "visattn-model",
        META_MODEL: model,
        META_KWARGS: json.dumps(kwargs, sort_keys=True),
        META_CFG: json.dumps(cfg, sort_keys=True),
    }
    save_weights(net, out, metadata=meta)
    params = sum(p.numel() for p in net.parameters())
    return {
        "source": ck.source,
        "format": ck.format.name,
        "wrapper": ck.wrapper,
        "model": model,
        "model_kwargs": kwargs,
        "num_classes": ck.num_classes() or 0,
        "params": params,
        "expected_params": ck.entry.params if ck.entry is not None and ck.entry.part == "model" else None,
        "pretrained_cfg": cfg,
        "messages": report.messages,
        "out": str(out),
    }
