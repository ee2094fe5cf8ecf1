"""The model kit: the parts every backbone family shares.

* :class:`DropPath` (stochastic depth) and :class:`Mlp` (Linear, GELU, Linear);
* :class:`Block`: the residual block ``t + mixer(norm(t))``, ``t + MLP(norm(t))`` on tokens
  (B, N, C) over an (h, w) grid, where the mixer is any registered mechanism run on the
  (B, C, h, w) grid (pre-norm; post-norm as in BERT with ``norm_first=False``);
* :class:`MixerOverride` and :func:`plan_mixers`: which mechanism, with which arguments, sits
  in every mixer slot of a backbone: per stage from the config, per block from overrides (the
  way timm's byobnet describes per-stage and per-block types), then the user's
  ``attention=`` / ``attn_kwargs=``;
* :func:`make_mixer`: creates a slot's mechanism and fills the arguments the *layout* owns
  (``num_heads`` of the stage, the resolution bound ``AttentionInfo.max_resolution_arg``);
* :func:`init_backbone_weights`: the one initialisation rule (a backbone's own Linear / Conv2d
  layers; every mechanism keeps its own ``reset_parameters``);
* :func:`config_from_kwargs`: a builder's keyword options -> a config, with the one
  unknown-option message.

What ``attention=NAME`` means, in every family: NAME replaces the mechanism of every mixer slot;
a slot that already holds NAME keeps its arguments, any other slot drops the old mechanism's
own arguments (a window size means nothing to another mechanism) but keeps what the layout
gives (the stage's head count, the resolution bound); ``attn_kwargs`` then override, in every
slot.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from visattn.layers.base import SpatialAttention, from_tokens, rename_state_keys, to_tokens
from visattn.registry import attention_class, attention_info, create_attention

M = TypeVar("M", bound=nn.Module)

__all__ = [
    "DropPath",
    "Mlp",
    "Block",
    "MixerOverride",
    "plan_mixers",
    "resolve_mixer",
    "make_mixer",
    "find_mixers",
    "init_backbone_weights",
    "config_from_kwargs",
    "config_builder",
    "remap_legacy_keys",
    "check_token_mixer",
]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability p (training only).

    Shapes: (B, ...) -> (B, ...); kept samples are scaled by 1 / (1 - p).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear(C_in, hidden), GELU, Dropout, Linear(hidden, C_out) on channels-last (..., C_in) -> (..., C_out)."""

    def __init__(self, dim: int, hidden: int, dim_out: int | None = None, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim_out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class Block(nn.Module):
    """Residual block on tokens (B, N, C) over an (h, w) grid, with any mechanism as the mixer.

    Pre-norm (``norm_first=True``)::

        t = t + drop_path(drop(proj(mixer(norm1(t)))))   # mixer on the (B, C, h, w) grid
        t = t + drop_path(drop(mlp(norm2(t))))

    post-norm: ``t = norm1(t + ...)``, ``t = norm2(t + ...)`` (BERT).

    Args:
        dim: token width C.
        mixer: a module (B, C, h, w) -> (B, C, h, w), normally a registered mechanism.
        mlp_hidden: hidden width of the :class:`Mlp`.
        drop_path: stochastic depth probability of both branches.
        drop: dropout after the mixer (and its projection), inside and after the MLP.
        mixer_proj: an extra Linear(C, C) after the mixer (BERT's attention output dense layer).
        norm_first: pre-norm (default) or post-norm.
        norm_layer: the norm, called with C (default LayerNorm, eps 1e-5).

    ``forward(t, hw)``: t (B, N, C) with N = h * w -> (B, N, C).

    State dict keys: ``norm1``, ``mixer``, ``mixer_proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``.
    Keys of the blocks this one replaced (``attn.*`` of the hierarchical block, ``mlp.0`` /
    ``mlp.3`` of the token transformer's block) load too (:func:`remap_legacy_keys`).
    """

    #: Old name -> new name of the entries of the blocks this class replaced, relative to the block.
    LEGACY_KEYS: dict[str, str] = {"attn": "mixer", "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2"}

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        mlp_hidden: int,
        *,
        drop_path: float = 0.0,
        drop: float = 0.0,
        mixer_proj: bool = False,
        norm_first: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = norm_layer(dim)
        self.mixer = mixer
        self.mixer_proj = nn.Linear(dim, dim) if mixer_proj else nn.Identity()
        self.drop1 = nn.Dropout(drop)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, mlp_hidden, drop=drop)
        self.drop2 = nn.Dropout(drop)
        self.drop_path = DropPath(drop_path)

    def _mix(self, t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.drop1(self.mixer_proj(to_tokens(self.mixer(from_tokens(t, hw)))))

    def forward(self, t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self.norm_first:
            t = t + self.drop_path(self._mix(self.norm1(t), hw))
            return t + self.drop_path(self.drop2(self.mlp(self.norm2(t))))
        t = self.norm1(t + self.drop_path(self._mix(t, hw)))
        return self.norm2(t + self.drop_path(self.drop2(self.mlp(t))))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rename_state_keys(state_dict, prefix, self.LEGACY_KEYS)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def remap_legacy_keys(model: nn.Module, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the keys of older layouts renamed to ``model``'s: older block layouts
    (see :class:`Block`), then each mechanism's renamed entries (``SpatialAttention.renamed_keys``).

    ``model.load_state_dict`` does this by itself; readers that compare keys before loading
    (``visattn.load_weights``) call it first.
    """
    out = dict(state_dict)
    for name, m in model.named_modules():  # parents first: a block's mixer keys are renamed before its mechanism's
        prefix = f"{name}." if name else ""
        if isinstance(m, Block):
            rename_state_keys(out, prefix, Block.LEGACY_KEYS)
        elif isinstance(m, SpatialAttention) and m.renamed_keys:
            m._rename_old_keys(out, prefix)
    return out


# ---------------------------------------------------------------------------
# Mixer slots
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MixerOverride:
    """Change the mechanism of a stage, or of one block of it.

    Attributes:
        stage: stage index (0-based; one-stage families: 0).
        block: block index in the stage (0-based; negative counts from the end), or None for
            every block of the stage.
        mixer: registered mechanism name; None keeps the slot's mechanism and only updates its
            arguments.
        kwargs: constructor arguments. With a new ``mixer`` they replace the slot's arguments
            (the layout's ``num_heads`` and resolution bound are still filled in); without one
            they update them.

    Stage-wide overrides apply before block ones; within each kind, in the order given. In a
    config or a builder keyword, a plain dict with these keys works too.
    """

    stage: int
    block: int | None = None
    mixer: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        def _int(v) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        if not _int(self.stage):
            raise TypeError(f"mixer override stage must be an int (0-based stage index), got {self.stage!r}")
        if self.block is not None and not _int(self.block):
            raise TypeError(
                f"mixer override block must be an int (block index in the stage) or None, got {self.block!r}"
            )
        if self.mixer is not None and not isinstance(self.mixer, str):
            raise TypeError(
                f"mixer override mixer must be a registered mechanism name (a str) or None, got {self.mixer!r}"
            )
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise TypeError(
                f"mixer override kwargs must be a dict of the mechanism's constructor arguments, got {self.kwargs!r}"
            )
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        object.__setattr__(self, "stage", int(self.stage))  # numpy ints as plain ints
        if self.block is not None:
            object.__setattr__(self, "block", int(self.block))

    @classmethod
    def coerce(cls, o: MixerOverride | Mapping[str, Any]) -> MixerOverride:
        """A :class:`MixerOverride` from itself or a dict of its fields."""
        if isinstance(o, MixerOverride):
            return o
        if isinstance(o, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(o) - names)
            if unknown or "stage" not in o:
                raise ValueError(f"a mixer override needs 'stage' and some of {sorted(names)}, got keys {sorted(o)}")
            return cls(**dict(o))
        raise TypeError(f"a mixer override must be a MixerOverride or a dict, got {type(o).__name__}")


def coerce_overrides(overrides) -> tuple[MixerOverride, ...]:
    """A config field's overrides as a tuple of :class:`MixerOverride` (a single one or dict is accepted)."""
    if overrides is None:
        return ()
    if isinstance(overrides, (MixerOverride, Mapping)):
        overrides = (overrides,)
    return tuple(MixerOverride.coerce(o) for o in overrides)


def resolve_mixer(
    default: str | None,
    default_kwargs: Mapping[str, Any] | None,
    attention: str | None,
    attn_kwargs: Mapping[str, Any] | None,
) -> tuple[str | None, dict[str, Any]]:
    """The mechanism name and kwargs a backbone slot uses.

    The model's own ``default`` mechanism keeps its ``default_kwargs``; when the user
    swaps in another ``attention``, only ``attn_kwargs`` apply. ``attn_kwargs`` always
    override.
    """
    if attention is None or attention == default:
        kw = dict(default_kwargs or {})
        kw.update(attn_kwargs or {})
        return default, kw
    return attention, dict(attn_kwargs or {})


Slot = tuple[str | None, dict[str, Any]]


def plan_mixers(
    depths: Sequence[int],
    stage_mixers: Sequence[str | None],
    stage_kwargs: Sequence[Mapping[str, Any]],
    overrides: Sequence[MixerOverride] = (),
    attention: str | None = None,
    attn_kwargs: Mapping[str, Any] | None = None,
    swappable: Sequence[bool] | None = None,
) -> list[list[Slot]]:
    """The mechanism name and arguments of every block: ``plan[i][j] = (name, kwargs)``.

    Args:
        depths: blocks per stage.
        stage_mixers: mechanism per stage (None: the family's non-mechanism layer, e.g. ResNet's
            3x3 convolution).
        stage_kwargs: arguments per stage; ``{"per_block": [kw0, kw1, ...]}`` inside gives block
            j the update ``kw[j % len]`` (Swin's alternating shift).
        overrides: :class:`MixerOverride` s (stage-wide first, then per block).
        attention, attn_kwargs: the user's swap (see the module docstring).
        swappable: per stage, whether a slot without a mechanism takes ``attention`` (ResNet's
            ``mixer_stages``); default: only slots that hold a mechanism.

    Returns:
        one list per stage of (name or None, kwargs) per block. Raises ValueError for an
        override outside the layout, or arguments for a slot without a mechanism.
    """
    n = len(depths)
    ovs = sorted(coerce_overrides(overrides), key=lambda o: o.block is not None)
    for o in ovs:
        if not (isinstance(o.stage, int) and 0 <= o.stage < n):
            raise ValueError(f"mixer override stage must be in 0..{n - 1}, got {o.stage!r}")
        d = depths[o.stage]
        if o.block is not None and not (isinstance(o.block, int) and -d <= o.block < d):
            raise ValueError(
                f"mixer override block must be in {-d}..{d - 1} (stage {o.stage} has {d} blocks; negative "
                f"counts from the end), got {o.block!r}"
            )
    plan: list[list[Slot]] = []
    for i, depth in enumerate(depths):
        stage: list[Slot] = []
        for j in range(depth):
            name = stage_mixers[i]
            kw = dict(stage_kwargs[i]) if i < len(stage_kwargs) else {}
            per_block = kw.pop("per_block", None)
            if per_block:
                kw.update(per_block[j % len(per_block)])
            can_swap = name is not None or (swappable is not None and swappable[i])
            for o in ovs:
                if o.stage != i or (o.block is not None and o.block % depth != j):
                    continue
                if o.mixer is not None and o.mixer != name:
                    name, kw = o.mixer, dict(o.kwargs)
                    can_swap = True
                elif name is None:
                    raise ValueError(
                        f"mixer override {o} gives arguments to stage {i} block {j}, which has no mechanism; "
                        "give mixer=NAME as well"
                    )
                else:
                    kw.update(o.kwargs)
            if name is not None or (attention is not None and can_swap):
                name, kw = resolve_mixer(name, kw, attention if can_swap else None, attn_kwargs)
            stage.append((name, kw))
        plan.append(stage)
    return plan


def _parameters(cls: type) -> tuple[set[str], bool]:
    """The keyword arguments ``cls`` takes (besides dim, dim_out) and whether it takes ``**kwargs``."""
    params = inspect.signature(cls).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = {
        n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    return names - {"dim", "dim_out"}, var_kw


def make_mixer(
    name: str | None,
    dim: int,
    kwargs: Mapping[str, Any],
    *,
    num_heads: int | None = None,
    size: int | None = None,
    dim_out: int | None = None,
    where: str = "",
) -> nn.Module:
    """Mechanism ``name`` (B, dim, H, W) -> (B, dim_out or dim, H, W) for one slot.

    Fills, unless ``kwargs`` set them: ``num_heads`` (the layout's head count of the stage, when
    the mechanism takes ``num_heads``) and the mechanism's ``max_resolution_arg`` with ``size``
    (the side of the slot's map at the model's ``img_size``). ``where`` names the slot
    (``"stage 2 block 1"``) in the errors: an unknown mechanism, an argument the mechanism does not
    take (the message lists those it takes), or a configuration it refuses (e.g. a head count that
    does not divide the stage width) is a ValueError / TypeError that starts with it.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"{where}: " * bool(where) + f"a mixer slot needs a registered mechanism name (a str), got {name!r}"
        )
    slot = f"{where} ({name!r}): " if where else ""
    kw = dict(kwargs)
    layout_heads = False
    try:
        cls = attention_class(name)
        takes, var_kw = _parameters(cls)
        renamed = getattr(cls, "renamed_args", {})
        unknown = sorted(k for k in kw if k not in takes and k not in renamed)
        if unknown and not var_kw:
            raise TypeError(f"unknown argument(s) {unknown} for mechanism {name!r}; it takes {sorted(takes)}")
        layout_heads = num_heads is not None and "num_heads" not in kw and "num_heads" in takes
        if layout_heads:
            kw["num_heads"] = num_heads
        arg = attention_info(name).max_resolution_arg
        if size is not None and arg is not None and arg not in kw:
            kw[arg] = size
        return create_attention(name, dim, dim_out, **kw)
    except (ValueError, TypeError) as e:
        if type(e) not in (ValueError, TypeError):
            raise
        msg = str(e)
        if layout_heads and "num_heads" in msg:
            msg += (
                f" (num_heads={num_heads} is the layout's head count here; give the mechanism a num_heads "
                "argument to choose another)"
            )
        if slot or msg != str(e):
            raise type(e)(slot + msg) from e
        raise


def find_mixers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The spatial mixers in ``module``, in module order: every :class:`SpatialAttention` not nested
    inside another, as (dotted name, module); ``[("", module)]`` when ``module`` is one itself."""
    found: list[tuple[str, nn.Module]] = []
    for name, m in module.named_modules():
        if isinstance(m, SpatialAttention) and not any(name.startswith(p + ".") or p == "" for p, _ in found):
            found.append((name, m))
    return found


@torch.no_grad()
def init_backbone_weights(model: nn.Module, *, linear: bool = False, conv: bool = False) -> None:
    """The one initialisation rule of the backbones; every mechanism (:func:`find_mixers`) keeps its own.

    ``linear``: truncated normal (std 0.02) weights and zero biases for Linear layers (ViT / Swin /
    PVT / T2T-ViT); ``conv``: He normal (fan_out, ReLU) for Conv2d weights (ResNet). Modules are
    visited in ``model.modules()`` order.
    """
    inside = {id(c) for _, mix in find_mixers(model) for c in mix.modules()}
    for m in model.modules():
        if id(m) in inside:
            continue
        if linear and isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        if conv and isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def check_token_mixer(mixer: nn.Module, where: str) -> None:
    """Refuse a mixer that cannot carry a class token (ValueError naming ``where``).

    Class-token mode runs the blocks on a 1 x (1 + h w) strip of tokens, which only means the
    same thing as the (h, w) map for a mechanism that sees no position and does not reduce over
    the grid: a registered ``positional="none (content only)"`` mechanism without a spatial
    reduction (``sr``, e.g. SRA with ``sr_ratio`` 1).
    """
    bad = [n for n, m in find_mixers(mixer) if not _content_only(m)]
    if bad or not find_mixers(mixer):
        name = getattr(type(mixer), "registry_name", type(mixer).__name__)
        raise ValueError(
            f"{where}: class_token=True needs a mechanism that sees no position and does not reduce over the "
            f"grid (the token runs with the map as a 1 x (1 + h w) strip); {name!r} ({mixer.extra_repr()}) does"
        )


def _content_only(m: nn.Module) -> bool:
    name = getattr(type(m), "registry_name", None)
    return (
        name is not None and attention_info(name).positional == "none (content only)" and getattr(m, "sr", None) is None
    )


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------


def _check_field_type(model: str, name: str, ftype: str, v: Any) -> None:
    """A TypeError naming ``model`` unless ``v`` has the container type of config field ``name``
    (a list/tuple for a per-stage field, a dict for arguments); the config checks the rest."""
    if name == "mixer_overrides" or (v is None and ftype.endswith("| None")):
        return
    if ftype.startswith("tuple["):
        if not isinstance(v, (list, tuple)):
            raise TypeError(f"{model}: {name} must be a list or tuple ({ftype}), got {v!r}")
        if ftype.startswith("tuple[dict") and not all(isinstance(x, Mapping) for x in v):
            raise TypeError(f"{model}: {name} must hold one dict per stage ({ftype}), got {v!r}")
    elif ftype.startswith("dict[") and not isinstance(v, Mapping):
        raise TypeError(f"{model}: {name} must be a dict ({ftype}), got {v!r}")


def config_from_kwargs(model: str, cfg, kw: Mapping[str, Any], extra: Sequence[str] = ()) -> tuple[Any, dict]:
    """``cfg`` (a dataclass) with the config fields in ``kw`` replaced; returns (config, the ``extra`` options).

    Lists become tuples where the field holds a tuple; ``mixer_overrides`` may be dicts. Any other
    key is a TypeError naming ``model``, the unknown options and the accepted ones.
    """
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(kw) - fields - set(extra))
    if unknown:
        more = f" or {', '.join(extra)}" if extra else ""
        raise TypeError(
            f"{model}: unknown option(s) {unknown}; expected {type(cfg).__name__} fields {sorted(fields)}{more}"
        )
    extras = {k: kw[k] for k in extra if k in kw}
    changes = {k: v for k, v in kw.items() if k in fields}
    types = {f.name: str(f.type) for f in dataclasses.fields(cfg)}
    for k, v in changes.items():
        _check_field_type(model, k, types[k], v)
        if isinstance(v, list):
            changes[k] = tuple(v)
    if "mixer_overrides" in changes:
        changes["mixer_overrides"] = coerce_overrides(changes["mixer_overrides"])
    return dataclasses.replace(cfg, **changes), extras


def config_builder(name: str, model_cls: type[M], cfg, extra: Sequence[str] = ()) -> Callable[..., M]:
    """The registry builder of model ``name``: ``build(num_classes=1000, attention=None,
    attn_kwargs=None, **options)`` -> ``model_cls(cfg=..., num_classes=..., attention=...,
    attn_kwargs=..., **extras)``, where ``options`` are ``cfg``'s fields (or the ``extra``
    constructor arguments; see :func:`config_from_kwargs`). A new backbone variant is then one
    config plus one :func:`~visattn.registry.register_model` call.
    """

    def build(num_classes: int = 1000, attention: str | None = None, attn_kwargs: dict | None = None, **options) -> M:
        c, extras = config_from_kwargs(name, cfg, options, extra)
        return model_cls(cfg=c, num_classes=num_classes, attention=attention, attn_kwargs=attn_kwargs, **extras)

    build.__name__ = name
    build.__doc__ = f"{name}: {model_cls.__name__} with {type(cfg).__name__} {cfg}"
    return build
