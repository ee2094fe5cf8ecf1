"""One registry for mechanisms and one for models.

Mechanisms register with :func:`register_attention` and are created by name with
:func:`create_attention`; their capabilities are data (:class:`AttentionInfo`) that
tests, the benchmark and the CLI read. Models register with :func:`register_model`
and are created with :func:`create_model`.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "AttentionInfo",
    "register_attention",
    "create_attention",
    "list_attention",
    "attention_info",
    "register_model",
    "create_model",
    "list_models",
    "model_entry",
    "ModelEntry",
]

COST_CLASSES = ("linear", "quadratic", "local")
#: The floating dtypes a mechanism may declare in ``AttentionInfo.dtypes``.
FLOAT_DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclass(frozen=True)
class AttentionInfo:
    """Capabilities of one mechanism, as data.

    Attributes:
        name: registry name.
        title: human-readable name.
        paper: citation (title and arXiv id).
        cost: cost class in the number of positions n: "linear", "quadratic" or "local"
            (local = linear in n with a window-size factor).
        receptive_field: "global" or "local".
        window_arg: for local mechanisms, the constructor argument that sets the window
            side (e.g. "kernel_size"); the module's ``receptive_field`` attribute holds
            the actual size.
        positional: what positional information the mechanism carries.
        any_resolution: accepts any H, W >= 1.
        max_resolution_arg: constructor argument that bounds the resolution, if any.
        export: export paths the mechanism supports ("onnx", "torchscript", "compile").
        dtypes: floating dtypes it supports (names of torch dtypes). A forward call on any
            other dtype is refused with a ``TypeError`` naming these.
        impls: the named implementations the constructor's ``impl=`` accepts besides "auto";
            the first is always "reference" (the paper's math, written for reading). Every
            other entry is a fast path that must agree with the reference (tests sweep them).
        window_centred: for local mechanisms, whether the window is centred on the query
            (True: a (2r+1)-wide window around each position; False: fixed tiles such as
            Swin's windows); None for global mechanisms.
        test_kwargs: small constructor arguments the conformance suite uses.
        test_variants: further small constructor arguments (each merged over ``test_kwargs``)
            that the implementation sweep also runs: configurations that reach the
            implementations ``test_kwargs`` cannot (``supported_impls`` of a module).
        bench_kwargs: arguments the benchmark uses at C=64 (the default comparison).
        bench_variants: extra named benchmark cases: label -> constructor kwargs.
        sets: runs on an unordered set of tokens (B, C, N) with no grid and is
            permutation-equivariant there (:func:`visattn.create_set_attention`, docs/points.md).
        set_kwargs: constructor arguments the set form needs (e.g. ``{"sr_ratio": 1}``: no spatial
            reduction); ``create_set_attention`` sets them and refuses other values.
    """

    name: str
    title: str
    paper: str
    cost: str
    receptive_field: str
    positional: str
    window_arg: str | None = None
    any_resolution: bool = True
    max_resolution_arg: str | None = None
    export: tuple[str, ...] = ("onnx", "compile")
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")
    impls: tuple[str, ...] = ("reference",)
    window_centred: bool | None = None
    test_kwargs: dict[str, Any] = field(default_factory=dict)
    test_variants: tuple[dict[str, Any], ...] = ()
    bench_kwargs: dict[str, Any] = field(default_factory=dict)
    bench_variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    sets: bool = False
    set_kwargs: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_ATTENTION: dict[str, tuple[type, AttentionInfo]] = {}


def register_attention(name: str, **info_fields) -> Callable[[type], type]:
    """Class decorator: register a :class:`~visattn.layers.base.SpatialAttention` under ``name``."""

    def deco(cls: type) -> type:
        if name in _ATTENTION:
            raise ValueError(f"attention mechanism {name!r} is already registered")
        info = AttentionInfo(name=name, **info_fields)
        if info.cost not in COST_CLASSES:
            raise ValueError(f"cost must be one of {COST_CLASSES}, got {info.cost!r}")
        if not info.impls or info.impls[0] != "reference" or "auto" in info.impls:
            raise ValueError(f"impls must start with 'reference' and not name 'auto', got {info.impls!r}")
        setattr(cls, "registry_name", name)  # noqa: B010 (cls is any class: mypy sees `type`)
        setattr(cls, "impls", tuple(info.impls))  # noqa: B010
        unknown = [d for d in info.dtypes if d not in FLOAT_DTYPES]
        if not info.dtypes or unknown:
            raise ValueError(f"dtypes must be a non-empty subset of {FLOAT_DTYPES}, got {info.dtypes!r}")
        setattr(cls, "supported_dtypes", frozenset(getattr(torch, d) for d in info.dtypes))  # noqa: B010
        _ATTENTION[name] = (cls, info)
        return cls

    return deco


def _unknown(kind: str, name, known) -> ValueError:
    close = difflib.get_close_matches(str(name), list(known), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}; expected one of {sorted(known)}{hint}")


def _ensure_loaded() -> None:
    # Importing the packages runs the register_* decorators.
    from visattn import layers, models  # noqa: F401


def list_attention() -> list[str]:
    """Names of every registered mechanism, sorted."""
    _ensure_loaded()
    return sorted(_ATTENTION)


def attention_info(name: str) -> AttentionInfo:
    """Capabilities of mechanism ``name`` (see :class:`AttentionInfo`)."""
    _ensure_loaded()
    if name not in _ATTENTION:
        raise _unknown("attention mechanism", name, _ATTENTION)
    return _ATTENTION[name][1]


def attention_class(name: str) -> type:
    """The class registered under ``name``."""
    _ensure_loaded()
    if name not in _ATTENTION:
        raise _unknown("attention mechanism", name, _ATTENTION)
    return _ATTENTION[name][0]


def _plain_ints(v: Any) -> Any:
    """numpy integers (any integral number that is not an int or a bool) as Python ints, inside
    plain dicts, lists and tuples too, so a constructor argument ``np.int64(64)`` works like ``64``."""
    if isinstance(v, numbers.Integral) and not isinstance(v, (int, bool)):
        return int(v)
    if type(v) is dict:
        return {k: _plain_ints(x) for k, x in v.items()}
    if type(v) in (list, tuple):
        return type(v)(_plain_ints(x) for x in v)
    return v


def create_attention(name: str, dim: int, dim_out: int | None = None, **kwargs) -> nn.Module:
    """Create mechanism ``name`` mapping (B, dim, H, W) -> (B, dim_out or dim, H, W).

    A constructor argument that was renamed (the class's ``renamed_args``) raises a
    ``TypeError`` that names the new argument.
    """
    if not isinstance(name, str):
        raise TypeError(f"attention name must be a str, got {type(name).__name__}")
    dim, dim_out, kwargs = _plain_ints(dim), _plain_ints(dim_out), _plain_ints(kwargs)
    cls = attention_class(name)
    renamed = getattr(cls, "renamed_args", {})
    for old in kwargs:
        if old in renamed:
            raise TypeError(
                f"attention {name!r}: argument {old!r} was renamed to {renamed[old]!r}; "
                f"pass {renamed[old]}=... instead (see docs/contract.md)"
            )
    return cls(dim, dim_out, **kwargs)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and what it is measured against.

    Attributes:
        name: registry name.
        builder: callable(num_classes=..., attention=..., attn_kwargs=..., **kw) -> nn.Module.
        family: backbone family ("resnet", "transformer", "hierarchical", ...).
        default_input: (C, H, W) the model is defined at.
        test_input: small (C, H, W) the conformance suite uses.
        test_kwargs: small constructor arguments the conformance suite uses (e.g. fewer blocks).
        published: published figures, e.g. {"params_m": 15.0, "macs_g": 4.6, "top1": 78.4}
            (segmentation models: "miou" and the data set in ``paper``).
        paper: citation.
        task: "classify" (logits (B, num_classes)), "segment" (logits (B, num_classes, H, W)) or
            "generate" (a GAN generator, z (B, z_dim) -> images, whose ``default_input`` is
            (z_dim, 1, 1), or its discriminator, images -> logits (B,)), "detect" (a torchvision
            detector: a list of images -> losses in training, boxes/labels/scores/masks in eval), "points" (a point cloud
            (B, 3, N) -> logits (B, num_classes); ``default_input`` is (3, N, 1)) or "partseg"
            (a point cloud and its shape category -> per-point part logits (B, parts, N)).
    """

    name: str
    builder: Callable[..., nn.Module]
    family: str
    default_input: tuple[int, int, int]
    test_input: tuple[int, int, int]
    test_kwargs: dict[str, Any] = field(default_factory=dict)
    published: dict[str, float] = field(default_factory=dict)
    paper: str = ""
    task: str = "classify"


TASKS = ("classify", "segment", "generate", "detect", "points", "partseg")
_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    family: str,
    default_input: tuple[int, int, int] = (3, 224, 224),
    test_input: tuple[int, int, int] = (3, 32, 32),
    test_kwargs: dict[str, Any] | None = None,
    published: dict[str, float] | None = None,
    paper: str = "",
    task: str = "classify",
) -> Callable[[Callable], Callable]:
    """Function decorator: register a model builder under ``name``."""

    def deco(fn: Callable) -> Callable:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        _MODELS[name] = ModelEntry(
            name=name,
            builder=fn,
            family=family,
            default_input=(int(default_input[0]), int(default_input[1]), int(default_input[2])),
            test_input=(int(test_input[0]), int(test_input[1]), int(test_input[2])),
            test_kwargs=dict(test_kwargs or {}),
            published=dict(published or {}),
            paper=paper,
            task=task,
        )
        return fn

    return deco


def list_models(task: str | None = None) -> list[str]:
    """Names of every registered model (or of those for ``task``: "classify" / "segment" / "generate" / "detect"), sorted."""
    _ensure_loaded()
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}")
    return sorted(n for n, e in _MODELS.items() if task is None or e.task == task)


def model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` registered under ``name``."""
    _ensure_loaded()
    if name not in _MODELS:
        raise _unknown("model", name, _MODELS)
    return _MODELS[name]


def create_model(
    name: str,
    num_classes: int | None = None,
    attention: str | None = None,
    attn_kwargs: dict[str, Any] | None = None,
    **kwargs,
) -> nn.Module:
    """Create model ``name``.

    Args:
        num_classes: classifier outputs (0 for a feature extractor with no head); None keeps the
            model's own default, the class count its published figures refer to (1000 for
            ImageNet models, 10 for the CIFAR-10 ones).
        attention: registered mechanism name that replaces the model's spatial mixer
            (None keeps the model's own).
        attn_kwargs: extra constructor arguments for that mechanism.
        features_only: return a :class:`~visattn.models.features.FeatureExtractor` whose forward
            gives the feature maps of the levels ``out_indices`` (timm's convention; classifier
            and unused levels removed). Not for segmentation models.
        out_indices: feature levels for ``features_only`` (None: all; see ``model.feature_info``).
        pretrained: published or converted weights to load (a path, an http(s) URL,
            ``hf-hub:ORG/REPO[:FILE]`` or a name from ``visattn convert --list``); the model is built
            with the options the weights need and, unless ``num_classes`` is given, their class count
            (docs/weights.md, :mod:`visattn.models.pretrained`).
        backbone_pretrained: a backbone's weights for a segmentation model's backbone.
        source_format: the layout of ``pretrained`` when its detection from the keys is wrong.
        **kwargs: model-specific options.
    """
    num_classes, attn_kwargs, kwargs = _plain_ints(num_classes), _plain_ints(attn_kwargs), _plain_ints(kwargs)
    pretrained = kwargs.pop("pretrained", None)
    backbone_pretrained = kwargs.pop("backbone_pretrained", None)
    source_format = kwargs.pop("source_format", None)
    if pretrained is not None or backbone_pretrained is not None:
        from visattn.models.pretrained import create_pretrained

        return create_pretrained(
            name,
            pretrained,
            backbone_pretrained,
            num_classes=num_classes,
            attention=attention,
            attn_kwargs=attn_kwargs,
            source_format=source_format,
            **kwargs,
        )
    if source_format is not None:
        raise ValueError("source_format is only used with pretrained=")
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    entry = model_entry(name)
    if out_indices is not None and not features_only:
        raise ValueError("out_indices is only used with features_only=True")
    if features_only and entry.task != "classify":
        raise ValueError(f"features_only needs a backbone; {name!r} is a {entry.task} model")
    if attention is not None:
        attention_class(attention)  # validate the name early with a helpful message
    if attn_kwargs is not None and not isinstance(attn_kwargs, dict):
        raise TypeError(f"attn_kwargs must be a dict, got {type(attn_kwargs).__name__}")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(
                f"num_classes must be an int >= 0 (0: no classifier) or None, "
                f"got {type(num_classes).__name__} {num_classes!r}"
            )
        if num_classes < 0:
            raise ValueError(
                f"num_classes must be >= 0 (0: a feature extractor with no classifier) or None "
                f"(the model's own default), got {num_classes}"
            )
        kwargs["num_classes"] = num_classes
    model = entry.builder(attention=attention, attn_kwargs=attn_kwargs, **kwargs)
    if features_only:
        from visattn.models.features import FeatureExtractor

        setattr(model, "name", name)  # noqa: B010
        return FeatureExtractor(model, out_indices)
    return model
