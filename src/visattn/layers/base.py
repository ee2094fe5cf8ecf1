"""The attention contract shared by every mechanism in visattn.

Every mechanism is an ``nn.Module`` that maps a feature map ``(B, C, H, W)`` to
``(B, C_out, H, W)`` for any ``H, W >= 1``. :class:`SpatialAttention` validates the
input once (rank, channel count, layout) and hands a well-formed tensor to the
subclass's ``_forward``. :class:`TokenAdapter` serves token input ``(B, N, C)`` with an
explicit ``(H, W)``.

Each mechanism also reports its cost analytically through :meth:`SpatialAttention.flop_breakdown`
so benchmarks can check ``torch.utils.flop_counter`` against the paper's formula.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

__all__ = [
    "SpatialAttention",
    "TokenAdapter",
    "check_positive_int",
    "check_divisible",
    "check_odd",
    "check_choice",
    "check_work",
    "work_limit",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FLOPS",
    "DEFAULT_MAX_PARAMS",
    "DEFAULT_MAX_SECONDS",
    "cpu_flop_rate",
    "to_tokens",
    "rename_state_keys",
    "from_tokens",
]


# ---------------------------------------------------------------------------
# Configuration checks: raise at construction with what was expected and given.
# ---------------------------------------------------------------------------


def check_positive_int(name: str, value, *, allow_none: bool = False) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is an int >= 1."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    """Raise ``ValueError`` unless ``value`` is divisible by ``by``."""
    if value % by != 0:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


def check_odd(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an odd int >= 1 (a centred window)."""
    check_positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd so the window is centred on the query, got {value}")


def check_choice(name: str, value, choices: Iterable) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# ---------------------------------------------------------------------------
# Work bounds: refuse a call whose estimated cost is far beyond what anyone means to run.
# ---------------------------------------------------------------------------

#: Largest estimated intermediate (bytes) one mechanism call may ask the allocator for.
DEFAULT_MAX_BYTES = 16 * 2**30
#: Largest estimated forward work (FLOPs, 2 x multiply-adds) of one call on a CPU tensor
#: (about three minutes at 100 GFLOP/s). Accelerators are bounded by memory only.
DEFAULT_MAX_FLOPS = 2 * 10**13
#: Largest parameter count one mechanism may build.
DEFAULT_MAX_PARAMS = 10**8
#: Longest estimated time (seconds) of one call on a CPU tensor: its FLOPs over this machine's
#: measured matrix-product rate (:func:`cpu_flop_rate`), a lower bound of the real time.
DEFAULT_MAX_SECONDS = 60
# No CPU that runs torch is slower than this (FLOP/s): below it no measurement is needed.
_SLOWEST_RATE = 1e9

_LIMITS: contextvars.ContextVar[tuple[int | None, int | None, int | None, int | None]] = contextvars.ContextVar(
    "visattn_work_limits", default=(DEFAULT_MAX_BYTES, DEFAULT_MAX_FLOPS, DEFAULT_MAX_PARAMS, DEFAULT_MAX_SECONDS)
)
_UNSET = object()


@functools.cache
def _measured_rate(threads: int) -> float:
    a = torch.full((256, 256), 0.5)  # no random numbers: the caller's RNG stays as it was
    torch.mm(a, a)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 0.02:
        torch.mm(a, a)
        reps += 1
    return 2 * 256**3 * reps / (time.perf_counter() - t0)


def cpu_flop_rate() -> float:
    """FLOP/s of a float32 matrix product on this machine's CPU with torch's current thread count
    (measured once per thread count, in about 20 ms)."""
    return _measured_rate(torch.get_num_threads())


@contextlib.contextmanager
def work_limit(max_bytes=_UNSET, max_flops=_UNSET, max_params=_UNSET, max_seconds=_UNSET) -> Iterator[None]:
    """Change the work bounds inside a ``with`` block (``None`` or ``float("inf")`` lifts a bound).

    Example::

        with visattn.work_limit(max_bytes=None, max_flops=None):
            y = attn(huge_map)      # runs however long it takes

    The bounds live in a context variable: they apply to this thread / task only and are
    restored on exit. Defaults: :data:`DEFAULT_MAX_BYTES`, :data:`DEFAULT_MAX_FLOPS`,
    :data:`DEFAULT_MAX_PARAMS`, :data:`DEFAULT_MAX_SECONDS` (estimated seconds of one CPU call).
    """
    cur = list(_LIMITS.get())
    named = (
        ("max_bytes", max_bytes),
        ("max_flops", max_flops),
        ("max_params", max_params),
        ("max_seconds", max_seconds),
    )
    for i, (name, v) in enumerate(named):
        if v is _UNSET:
            continue
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):  # NaN too
            raise ValueError(f"work_limit: {name} must be a positive number or None, got {v!r}")
        cur[i] = None if v is None or v == float("inf") else int(v)  # inf: no bound, like None
    token = _LIMITS.set((cur[0], cur[1], cur[2], cur[3]))
    try:
        yield
    finally:
        _LIMITS.reset(token)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_work(
    owner: str,
    what: str,
    *,
    nbytes: float = 0,
    flops: float = 0,
    params: float = 0,
    device: torch.device | str | None = None,
    nbytes_what: str = "for one intermediate",
) -> None:
    """Raise ``ValueError`` when an estimated cost exceeds the current :func:`work_limit`.

    ``owner`` names the module, ``what`` the work ("a 1024x1024 input", ...). ``flops`` is
    bounded on CPU only, as a count and as estimated time on this machine (``flops`` over
    :func:`cpu_flop_rate`); ``nbytes`` and ``params`` everywhere.
    """
    max_bytes, max_flops, max_params, max_seconds = _LIMITS.get()
    lift = "run it inside `with visattn.work_limit(...)` with a larger bound or None to proceed"
    if max_params is not None and params > max_params:
        raise ValueError(f"{owner}: {what} builds {params:.3g} parameters, above the bound of {max_params:.3g}; {lift}")
    if max_bytes is not None and nbytes > max_bytes:
        raise ValueError(
            f"{owner}: {what} needs an estimated {_fmt_bytes(nbytes)} {nbytes_what}, above "
            f"the bound of {_fmt_bytes(max_bytes)}; {lift}"
        )
    dev_type = torch.device(device).type if device is not None else "cpu"
    if max_flops is not None and dev_type == "cpu" and flops > max_flops:
        raise ValueError(
            f"{owner}: {what} needs an estimated {flops:.3g} FLOPs on the CPU, above the bound "
            f"of {max_flops:.3g} (hours of work); {lift}"
        )
    if max_seconds is not None and dev_type == "cpu" and flops > _SLOWEST_RATE * max_seconds:
        rate = cpu_flop_rate()
        if flops / rate > max_seconds:
            t = flops / rate
            took = f"{t / 3600:.1f} hours" if t >= 3600 else f"{t / 60:.1f} minutes" if t >= 60 else f"{t:.0f} s"
            raise ValueError(
                f"{owner}: {what} needs an estimated {flops:.3g} FLOPs, at least {took} on this machine's CPU "
                f"({torch.get_num_threads()} thread(s), {rate / 1e9:.0f} GFLOP/s in a float32 matrix product), "
                f"above the bound of {max_seconds:g} s; {lift}"
            )


# ---------------------------------------------------------------------------
# Layout helpers.
# ---------------------------------------------------------------------------


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C) with N = H*W in row-major order."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, N, C) -> (B, C, H, W)."""
    b, n, c = t.shape
    return t.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def rename_state_keys(state_dict: dict, prefix: str, renamed: Mapping[str, str]) -> None:
    """Rename old state-dict entries in place (for load pre-hooks and readers that compare keys).

    ``renamed`` maps an old name to its new one, relative to ``prefix``: a parameter/buffer name
    (``{"key_bias": "offset_bias"}``) or a submodule path (``{"out_proj": "proj"}`` moves
    ``out_proj.weight`` and ``out_proj.bias``). A name matches whole dotted components only. An
    entry whose new key is already present stays (``load_state_dict`` then reports it unexpected).
    """
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix) :]
        for old, new in renamed.items():
            if local == old or local.startswith(old + "."):
                new_key = prefix + new + local[len(old) :]
                if new_key not in state_dict:
                    state_dict[new_key] = state_dict.pop(key)
                break


class SpatialAttention(nn.Module):
    """Base class of every mechanism: (B, C, H, W) -> (B, C_out, H, W).

    Subclasses implement one method per implementation, ``_forward_<impl>(x)``, on a
    validated input (at least ``_forward_reference``: the paper's math in its symbols),
    ``flop_breakdown(height, width, batch)`` and ``reset_parameters()``. The
    implementations a mechanism has are registry data (``AttentionInfo.impls``); the
    constructor's ``impl=`` picks one, and ``"auto"`` picks by the rule in
    :meth:`_auto_impl` (stated in the mechanism's docstring and tested).

    Attributes:
        dim: input channels C.
        dim_out: output channels C_out.
        impl: the requested implementation ("auto" or a name in ``impls``).
    """

    #: Registry name, filled in by :func:`visattn.registry.register_attention`.
    registry_name: str = ""
    #: Named implementations (``AttentionInfo.impls``), filled in by ``register_attention``.
    impls: tuple[str, ...] = ("reference",)
    #: Floating dtypes a forward accepts (``AttentionInfo.dtypes``), filled in by ``register_attention``;
    #: None (an unregistered subclass): any floating dtype.
    supported_dtypes: frozenset[torch.dtype] | None = None
    #: Renamed constructor arguments, old name -> new name: :func:`visattn.create_attention`
    #: answers an old name with a ``TypeError`` that names the new one.
    renamed_args: dict[str, str] = {}
    #: Renamed state-dict entries, old name -> new name (a parameter/buffer name or a submodule
    #: prefix, relative to the module): ``load_state_dict`` maps old-format checkpoints.
    renamed_keys: dict[str, str] = {}

    def __init__(self, dim: int, dim_out: int | None = None, *, impl: str = "auto"):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("dim_out", dim_out, allow_none=True)
        self.dim = dim
        self.dim_out = dim if dim_out is None else dim_out
        self.impl = impl
        if self.renamed_keys:
            self._register_load_state_dict_pre_hook(self._rename_old_keys)

    def _rename_old_keys(self, state_dict, prefix, *args) -> None:
        """Load-state-dict pre-hook: rename old-format entries (see :attr:`renamed_keys`) in place."""
        rename_state_keys(state_dict, prefix, self.renamed_keys)

    # -- implementations -----------------------------------------------------
    @property
    def impl(self) -> str:
        """The requested implementation: "auto" or one of :attr:`impls`."""
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        choices = ("auto", *self.impls)
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{type(self).__name__}: impl must be one of {choices}, got {value!r}")
        if value != "auto" and "_impl" in self.__dict__:  # built: the configuration is known
            supported = self.supported_impls()
            if value not in supported:
                raise ValueError(
                    f"{type(self).__name__}: impl={value!r} does not apply to this configuration "
                    f"({self._impl_config()}); it runs one of {supported}"
                )
        self._impl = value

    def supported_impls(self) -> tuple[str, ...]:
        """The implementations this module, as configured, can run: a subset of :attr:`impls`
        that always holds "reference". Mechanisms whose fast paths serve only some
        configurations override this (and :meth:`_impl_config`, which names the configuration)."""
        return self.impls

    def _impl_config(self) -> str:
        return "its arguments"

    def select_impl(self, x: torch.Tensor) -> str:
        """The implementation a call on ``x`` runs: :attr:`impl`, or the ``auto`` rule's choice."""
        return self._auto_impl(x) if self._impl == "auto" else self._impl

    def _auto_impl(self, x: torch.Tensor) -> str:
        """The ``auto`` rule. Default: the last (fastest) named implementation."""
        return self.impls[-1]

    def reset_parameters(self) -> None:
        """Re-initialise every parameter and rebuild every non-persistent buffer.

        After ``m.to_empty(device=...)`` of a meta-device build, ``m.reset_parameters()``
        gives a module equal to a normal build followed by ``reset_parameters()`` under the
        same random seed. Mechanisms override this; the default resets the direct children.
        """
        for child in self.children():
            reset = getattr(child, "reset_parameters", None)
            if callable(reset):
                reset()

    # -- input validation --------------------------------------------------
    def _check_input(self, x) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
        if x.dim() == 3:
            raise ValueError(
                f"{name} expects a 4-D feature map (B, C={self.dim}, H, W), got a 3-D tensor of shape "
                f"{tuple(x.shape)}; for token input (B, N, C) wrap the module in "
                f"visattn.TokenAdapter and pass hw=(H, W)"
            )
        if x.dim() != 4:
            raise ValueError(
                f"{name} expects a 4-D feature map (B, C={self.dim}, H, W), got a {x.dim()}-D tensor of "
                f"shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.dim:
            hint = ""
            if x.shape[-1] == self.dim:
                hint = " (this looks like a channels-last (B, H, W, C) tensor; permute it to (B, C, H, W))"
            raise ValueError(
                f"{name} expects (B, C={self.dim}, H, W), got shape {tuple(x.shape)} with "
                f"{x.shape[1]} channels in dim 1{hint}"
            )
        if x.shape[0] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"{name} expects B, H, W >= 1, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} expects a floating-point tensor, got dtype {x.dtype}")
        if self.supported_dtypes is not None and x.dtype not in self.supported_dtypes:
            declared = sorted(str(d).replace("torch.", "") for d in self.supported_dtypes)
            raise TypeError(f"{name} supports dtypes {declared} (AttentionInfo.dtypes), got {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C_out, H, W)."""
        self._check_input(x)
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            self._check_device(x)
            self._check_cost(x)
        return self._forward(x)

    def _check_device(self, x: torch.Tensor) -> None:
        """Refuse parameters on another device than the input (a meta-device build that was never
        materialised would otherwise compute on uninitialised memory). The first parameter (or
        buffer) stands for the module: one look per call."""
        t: torch.Tensor | None = next(self.parameters(), None)
        if t is None:
            t = next(self.buffers(), None)
        if t is not None and t.device != x.device:
            where = (
                "the meta device (never materialised: call .to_empty(device=...) and then reset_parameters())"
                if t.is_meta
                else str(t.device)
            )
            raise ValueError(f"{type(self).__name__}: its parameters are on {where}, the input on {x.device}")

    def _check_cost(self, x: torch.Tensor) -> None:
        """Refuse an input whose estimated cost is beyond :func:`work_limit` (see ``check_work``)."""
        b, _, h, w = x.shape
        check_work(
            type(self).__name__,
            f"a ({b}, {self.dim}, {h}, {w}) input",
            flops=self.analytic_flops(h, w, b),
            nbytes=self.peak_intermediate_bytes(h, w, b, x.element_size()),
            device=x.device,
        )

    def peak_intermediate_bytes(self, height: int, width: int, batch: int = 1, itemsize: int = 4) -> int:
        """Estimated bytes of the largest intermediate one forward call allocates (0: nothing beyond O(n C)).

        Mechanisms that build an n x n (or n x k^2 x C) tensor override this so a call that
        would ask the allocator for terabytes is refused before it starts.
        """
        return 0

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dispatch to ``_forward_<impl>`` for the implementation :meth:`select_impl` picks."""
        return getattr(self, "_forward_" + self.select_impl(x))(x)

    # -- cost ----------------------------------------------------------------
    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        """Analytic forward FLOPs (2 x multiply-adds) for one call on (batch, C, height, width).

        Returns ``{"counted": ..., "uncounted": ...}``: ``counted`` is the part done by
        matmul / convolution / SDPA kernels, which ``torch.utils.flop_counter`` sees (with
        visattn's formulas registered); ``uncounted`` is multiply-adds done as elementwise
        products and sums, which no operator-level counter can see.
        """
        raise NotImplementedError

    def analytic_flops(self, height: int, width: int, batch: int = 1) -> int:
        """Total analytic forward FLOPs (2 x multiply-adds), counted + uncounted."""
        f = self.flop_breakdown(height, width, batch)
        return int(f["counted"] + f["uncounted"])

    def extra_repr(self) -> str:
        impl = "" if self._impl == "auto" else f", impl={self._impl!r}"
        return f"dim={self.dim}, dim_out={self.dim_out}{impl}"


class TokenAdapter(nn.Module):
    """Runs a (B, C, H, W) mechanism on tokens (B, N, C) with an explicit ``hw=(H, W)``.

    Example::

        attn = TokenAdapter(visattn.create_attention("external", 64))
        y = attn(tokens, hw=(14, 14))   # tokens (B, 196, 64) -> (B, 196, 64)
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        if not isinstance(module, SpatialAttention):
            raise TypeError(f"TokenAdapter wraps a visattn mechanism (SpatialAttention), got {type(module).__name__}")
        self.module = module

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """tokens: (B, N, C) with N = H*W -> (B, N, C_out)."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"TokenAdapter expects tokens of shape (B, N, C), got {shape}")
        if not (isinstance(hw, (tuple, list)) and len(hw) == 2 and all(isinstance(v, int) and v >= 1 for v in hw)):
            raise ValueError(f"TokenAdapter expects hw=(H, W) with positive ints, got {hw!r}")
        h, w = hw
        if tokens.shape[1] != h * w:
            raise ValueError(f"TokenAdapter got N={tokens.shape[1]} tokens but hw=({h}, {w}) needs N=H*W={h * w}")
        y = self.module(from_tokens(tokens, (h, w)))
        return to_tokens(y)
