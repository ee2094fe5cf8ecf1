"""External and Efficient attention against a public peer and against plain implementations.

Measures, side by side in one run (CPU):

* visattn ``"external"`` (single head, S=64) vs ``fightingcv-attention``'s
  ``ExternalAttention`` (the most used public implementation) vs a plain implementation
  of the paper's equations (Guo et al., arXiv 2105.02358) on tokens (B, N, C):
  Linear M_k, softmax over N, L1 over S, Linear M_v;
* visattn ``"efficient"`` vs a plain implementation of the paper's equations
  (Shen et al., arXiv 1812.01243) with the authors' module structure (a loop over heads);
* at 56x56 only: efficient attention's forward against global ``"mhsa"``.

Forward (under ``torch.no_grad``) and forward+backward (``out.sum().backward()``) median
wall time, and the peak CPU memory of one call measured with ``torch.profiler``
(``profile_memory=True``): the peak of the cumulative allocation curve over the profiled
events, inputs excluded. Implementations are interleaved round by round so that machine
load affects all of them alike; the ratio column is the median over rounds of the
per-round ratio of medians.

Every implementation is given the same weights and checked to agree with visattn before
it is timed. The peer and the plain external implementation run on their native token
layout (B, N, C), prepared outside the timed region (visattn takes (B, C, H, W)).

Reproduce (from the repository root)::

    pip install -e ".[peers]"   # or, on a machine with torch already installed:
                                # pip install --no-deps fightingcv-attention==1.0.0
    python benchmarks/external_peers.py            # writes benchmarks/results/external_peers.{md,json}

How the peer is loaded: ``fightingcv_attention/attention/ExternalAttention.py`` is
imported on its own with ``importlib`` from the installed package's directory, so that no
other module of that package (some need torchvision or other extras) is imported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import visattn  # noqa: E402
from _record import stamp, write_json, write_text  # noqa: E402
from visattn.bench.measure import peak_memory_bytes  # noqa: E402

RUN_ALL = {
    "args": ["--threads", "1"],
    "minutes": 1.5,
    "results": ["external_peers.json", "external_peers.md"],
    "check": ["ratio_to_"],
}

# ---------------------------------------------------------------------------
# The peer, loaded from its file only.
# ---------------------------------------------------------------------------


def load_fightingcv_external_attention():
    """The ``ExternalAttention`` class of fightingcv-attention, or None when not installed."""
    spec = importlib.util.find_spec("fightingcv_attention")  # locates the package, runs nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "attention" / "ExternalAttention.py"
    if not path.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location("_fightingcv_external_attention", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.ExternalAttention


# ---------------------------------------------------------------------------
# Plain implementations of the papers' equations (the "straightforward" baselines).
# ---------------------------------------------------------------------------


class PlainExternalAttention(nn.Module):
    """Guo et al. eq. for the basic form on tokens F (B, N, d):
    A = DoubleNorm(F M_k^T) (softmax over N, then L1 over S); out = A M_v."""

    def __init__(self, dim: int, memory_size: int, eps: float = 1e-9):
        super().__init__()
        self.mk = nn.Linear(dim, memory_size, bias=False)
        self.mv = nn.Linear(memory_size, dim, bias=False)
        self.eps = eps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        a = self.mk(tokens).softmax(dim=1)  # (B, N, S), normalised over N
        a = a / (self.eps + a.sum(dim=2, keepdim=True))  # over S
        return self.mv(a)  # (B, N, d)


class PlainEfficientAttention(nn.Module):
    """Shen et al.: E = rho_q(Q) (rho_k(K)^T V) per head (softmax normalisation), in the
    authors' module structure: 1x1 convs, a Python loop over heads, concat, reprojection."""

    def __init__(self, dim: int, key_dim: int, value_dim: int, num_heads: int):
        super().__init__()
        self.queries = nn.Conv2d(dim, key_dim, 1)
        self.keys = nn.Conv2d(dim, key_dim, 1)
        self.values = nn.Conv2d(dim, value_dim, 1)
        self.reprojection = nn.Conv2d(value_dim, dim, 1)
        self.key_dim, self.value_dim, self.num_heads = key_dim, value_dim, num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.queries(x).reshape(b, self.key_dim, h * w)
        k = self.keys(x).reshape(b, self.key_dim, h * w)
        v = self.values(x).reshape(b, self.value_dim, h * w)
        hk, hv = self.key_dim // self.num_heads, self.value_dim // self.num_heads
        heads = []
        for i in range(self.num_heads):
            key = F.softmax(k[:, i * hk : (i + 1) * hk], dim=2)
            query = F.softmax(q[:, i * hk : (i + 1) * hk], dim=1)
            value = v[:, i * hv : (i + 1) * hv]
            context = key @ value.transpose(1, 2)  # (B, hk, hv)
            heads.append((context.transpose(1, 2) @ query).reshape(b, hv, h, w))
        return self.reprojection(torch.cat(heads, dim=1))


class OnFeatureMap(nn.Module):
    """Runs a token module (B, N, C) on a feature map (B, C, H, W) and returns (B, C, H, W):
    what a convolutional network pays to use a token-layout implementation."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.flatten(2).transpose(1, 2))  # (B, N, C)
        return y.transpose(1, 2).reshape(x.shape)


# ---------------------------------------------------------------------------
# Measurement helpers.
# ---------------------------------------------------------------------------


def peak_cpu_memory(fn) -> int:
    """Peak bytes allocated while ``fn()`` runs: the library's own measure
    (:func:`visattn.bench.peak_memory_bytes`, the profiler's allocation events summed in time
    order), so this table and ``visattn bench`` count memory the same way."""
    return peak_memory_bytes(fn)


_CLOCK = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = time.perf_counter


def _call(module, inp, backward: bool) -> float:
    if backward:
        x = inp.detach().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        t0 = _clock()
        module(x).sum().backward()
        return _clock() - t0
    with torch.no_grad():
        t0 = _clock()
        module(inp)
        return _clock() - t0


def _memory(module, inp, backward: bool) -> int:
    def run():
        if backward:
            x = inp.detach().requires_grad_(True)
            module(x).sum().backward()
        else:
            with torch.no_grad():
                module(inp)

    module.zero_grad(set_to_none=True)
    run()  # warm caches, allocate .grad once
    module.zero_grad(set_to_none=True)
    return peak_cpu_memory(run)


def compare(impls: dict, backward: bool, rounds: int, calls: int, baseline: str, min_round_s: float = 0.02) -> dict:
    """Interleaved timing. impls: label -> (module, input). Returns label -> stats (ms).

    Each round runs every implementation ``calls`` times (more for fast calls, so a round
    lasts at least ``min_round_s`` per implementation) and keeps the median; the order
    is reversed on every other round so neither side always runs first.
    """
    est = {}
    for label, (module, inp) in impls.items():  # warm-up, and a time estimate
        for _ in range(2):
            est[label] = _call(module, inp, backward)
    n_calls = max(calls, math.ceil(min_round_s / max(1e-6, min(est.values()))))
    per_round = {label: [] for label in impls}
    order = list(impls)
    for r in range(rounds):
        for label in order if r % 2 == 0 else order[::-1]:
            module, inp = impls[label]
            per_round[label].append(statistics.median(_call(module, inp, backward) for _ in range(n_calls)))
    out = {}
    for label, meds in per_round.items():
        ratio = statistics.median(m / b for m, b in zip(meds, per_round[baseline]))
        out[label] = {
            "median_ms": 1e3 * statistics.median(meds),
            "min_ms": 1e3 * min(meds),
            "calls_per_round": n_calls,
            "rounds_ms": [1e3 * m for m in meds],
            f"ratio_to_{baseline}": ratio,
            f"ratio_to_{baseline}_rounds": [m / b for m, b in zip(meds, per_round[baseline])],  # the noise band
        }
    return out


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2).contiguous()  # (B, N, C)


# ---------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 56, 112])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--memory-size", type=int, default=64)
    p.add_argument("--efficient-heads", type=int, default=4)
    p.add_argument("--mhsa-size", type=int, default=56, help="resolution of the efficient-vs-mhsa forward")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (fixed for the run)")
    p.add_argument(
        "--clock",
        choices=("auto", "cpu", "wall"),
        default="auto",
        help="cpu: this thread's CPU time (time.thread_time), immune to other processes on a "
        "shared machine, exact with --threads 1 (CPU autograd runs on the calling thread); "
        "wall: time.perf_counter. auto: cpu with --threads 1, else wall",
    )
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--calls", type=int, default=3, help="minimum calls per implementation per round")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "external_peers")
    p.add_argument("--render", type=Path, metavar="JSON", help="only re-render the markdown of a saved run")
    args = p.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        md = render_markdown(saved["meta"], saved["results"])
        write_text(args.render.with_suffix(".md"), md)
        print(md)
        return 0

    torch.set_num_threads(args.threads)
    global _clock
    clock = args.clock if args.clock != "auto" else ("cpu" if args.threads == 1 else "wall")
    _clock = _CLOCK[clock]
    torch.manual_seed(0)
    c, s, b = args.channels, args.memory_size, args.batch

    Peer = load_fightingcv_external_attention()
    if Peer is None:
        print(
            "fightingcv-attention is not installed: pip install --no-deps fightingcv-attention==1.0.0", file=sys.stderr
        )
        return 2

    ours_ext = visattn.create_attention("external", c, memory_size=s).eval()
    peer_ext = Peer(c, s).eval()
    plain_ext = PlainExternalAttention(c, s, eps=ours_ext.eps).eval()
    with torch.no_grad():
        for m in (peer_ext, plain_ext):
            m.mk.weight.copy_(ours_ext.memory_key)  # Linear(C, S).weight is (S, C) = M_k
            m.mv.weight.copy_(ours_ext.memory_value.T)  # Linear(S, C).weight is (C, S) = M_v^T

    peer_on_map = OnFeatureMap(peer_ext)

    ours_eff = visattn.create_attention("efficient", c, num_heads=args.efficient_heads).eval()
    plain_eff = PlainEfficientAttention(c, c, c, args.efficient_heads).eval()
    # the authors' name for the output projection is "reprojection"; visattn's is "proj"
    plain_eff.load_state_dict({k.replace("proj.", "reprojection.", 1): v for k, v in ours_eff.state_dict().items()})
    mhsa = visattn.create_attention("mhsa", c, num_heads=args.efficient_heads).eval()

    load_start = os.getloadavg()
    t_start = time.time()
    results = {"external": {}, "efficient": {}, "efficient_vs_mhsa": {}}
    memory_jobs = []
    for hw in args.sizes:
        x = torch.randn(b, c, hw, hw)
        t = _tokens(x)
        with torch.no_grad():
            ref = _tokens(ours_ext(x))
            for name, m in (("fightingcv", peer_ext), ("plain", plain_ext)):
                err = _agree(m(t), ref)
                assert err < 1e-5, f"{name} external disagrees with visattn at {hw}x{hw}: rel. err {err:.2e}"
            err = _agree(plain_eff(x), ours_eff(x))
            assert err < 1e-5, f"plain efficient disagrees with visattn at {hw}x{hw}: rel. err {err:.2e}"

        ext = {
            "visattn": (ours_ext, x),
            "fightingcv": (peer_ext, t),
            "plain": (plain_ext, t),
            "fightingcv_on_map": (peer_on_map, x),
        }
        eff = {"visattn": (ours_eff, x), "plain": (plain_eff, x)}
        for group, impls, base in (("external", ext, "fightingcv"), ("efficient", eff, "plain")):
            for mode, bw in (("forward", False), ("forward_backward", True)):
                print(f"[time {group} {hw}x{hw} {mode}]", file=sys.stderr, flush=True)
                results[group].setdefault(f"{hw}x{hw}", {})[mode] = compare(impls, bw, args.rounds, args.calls, base)
                memory_jobs.append((results[group][f"{hw}x{hw}"][mode], impls, bw))

    hw = args.mhsa_size
    x = torch.randn(b, c, hw, hw)
    print(f"[time efficient vs mhsa {hw}x{hw} forward]", file=sys.stderr, flush=True)
    impls = {"mhsa": (mhsa, x), "efficient": (ours_eff, x), "plain efficient": (plain_eff, x)}
    row = compare(impls, False, max(3, args.rounds // 2), 1, "mhsa")
    results["efficient_vs_mhsa"][f"{hw}x{hw}"] = row
    memory_jobs.append((row, impls, False))

    # Memory last: a profiler session can leave the process slower for a while.
    print("[peak memory]", file=sys.stderr, flush=True)
    for row, impls, bw in memory_jobs:
        for label, (m, inp) in impls.items():
            row[label]["peak_bytes"] = _memory(m, inp, bw)

    meta = {
        "command": "python benchmarks/external_peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(t_start)),
        "duration_s": round(time.time() - t_start, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "clock": clock,
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "batch": b,
        "channels": c,
        "memory_size": s,
        "efficient_heads": args.efficient_heads,
        "rounds": args.rounds,
        "calls_per_round": args.calls,
    }
    write_json(args.out.with_suffix(".json"), {**stamp(args.threads), "meta": meta, "results": results})
    md = render_markdown(meta, results)
    write_text(args.out.with_suffix(".md"), md)
    print(md)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _paired(r: dict, a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b), from the recorded per-round medians."""
    return statistics.median(x / y for x, y in zip(r[a]["rounds_ms"], r[b]["rounds_ms"]))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def render_markdown(meta: dict, results: dict) -> str:
    lines = [
        "# External and Efficient attention: visattn vs a public peer and plain implementations",
        "",
        f"`{meta['command'].strip()}` on {meta['date_utc']} UTC, {meta['cpu']} ({meta['cpu_count']} cores, "
        f"torch.set_num_threads({meta['threads']})), torch {meta['torch']}, Python {meta['python']}; "
        f"load average {meta['loadavg_start'][0]} at start, {meta['loadavg_end'][0]} at end "
        f"(shared machine). Clock: "
        + (
            "this thread's CPU time (`time.thread_time`), so other processes' load does not count"
            if meta["clock"] == "cpu"
            else "wall time (`time.perf_counter`)"
        )
        + f". Batch {meta['batch']}, C={meta['channels']}; external: single head, "
        f"S={meta['memory_size']}; efficient: {meta['efficient_heads']} heads, d_k=d_v=C, softmax "
        f"normalisation. Times are medians over {meta['rounds']} interleaved rounds (order reversed every "
        f"other round) of the median of >= {meta['calls_per_round']} calls (more for fast cases, >= 20 ms "
        "per round); ratio = median over rounds of (time / reference time), "
        "< 1 means faster than the reference. Peak = peak of the cumulative CPU allocation curve of "
        "one call (torch.profiler, inputs excluded).",
        "",
        "## External attention vs fightingcv-attention `ExternalAttention` (reference) and the plain equations",
        "",
        "fightingcv and plain run on their native token layout (B, N, C), prepared outside the timed region; "
        '"fightingcv on (B,C,H,W)" adds the layout conversion a convolutional network needs '
        "(flatten/transpose in, transpose/reshape out).",
        "",
        "| size | mode | visattn ms | fightingcv ms | plain ms | fightingcv on (B,C,H,W) ms "
        "| visattn / fightingcv | plain / fightingcv | visattn / plain | visattn / fightingcv on (B,C,H,W) "
        "| peak MiB visattn / fightingcv / plain |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, row in results["external"].items():
        for mode, r in row.items():
            lines.append(
                f"| {size} | {mode.replace('_', '+')} | {r['visattn']['median_ms']:.2f} | "
                f"{r['fightingcv']['median_ms']:.2f} | {r['plain']['median_ms']:.2f} | "
                f"{r['fightingcv_on_map']['median_ms']:.2f} | "
                f"**{r['visattn']['ratio_to_fightingcv']:.2f}** | {r['plain']['ratio_to_fightingcv']:.2f} | "
                f"**{_paired(r, 'visattn', 'plain'):.2f}** | {_paired(r, 'visattn', 'fightingcv_on_map'):.2f} | "
                f"{_mib(r['visattn']['peak_bytes'])} / {_mib(r['fightingcv']['peak_bytes'])} / "
                f"{_mib(r['plain']['peak_bytes'])} |"
            )
    lines += [
        "",
        "## Efficient attention vs the plain equations (authors' per-head loop, reference)",
        "",
        "| size | mode | visattn ms | plain ms | visattn / plain | peak MiB visattn / plain |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for size, row in results["efficient"].items():
        for mode, r in row.items():
            lines.append(
                f"| {size} | {mode.replace('_', '+')} | {r['visattn']['median_ms']:.2f} | {r['plain']['median_ms']:.2f} | "
                f"**{r['visattn']['ratio_to_plain']:.2f}** | {_mib(r['visattn']['peak_bytes'])} / "
                f"{_mib(r['plain']['peak_bytes'])} |"
            )
    lines += [
        "",
        "## Efficient attention vs global multi-head self-attention, forward",
        "",
        "| size | mhsa ms | efficient ms | plain efficient ms | mhsa / efficient | mhsa / plain efficient "
        "| peak MiB mhsa / efficient |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, r in results["efficient_vs_mhsa"].items():
        lines.append(
            f"| {size} | {r['mhsa']['median_ms']:.1f} | {r['efficient']['median_ms']:.2f} | "
            f"{r['plain efficient']['median_ms']:.2f} | **{1 / r['efficient']['ratio_to_mhsa']:.1f}x** | "
            f"{1 / r['plain efficient']['ratio_to_mhsa']:.1f}x | {_mib(r['mhsa']['peak_bytes'])} / "
            f"{_mib(r['efficient']['peak_bytes'])} |"
        )
    slower = [
        f"external {size} {mode} (vs fightingcv)"
        for size, row in results["external"].items()
        for mode, r in row.items()
        if r["visattn"]["ratio_to_fightingcv"] > 1.0
    ]
    slower += [
        f"external {size} {mode} (vs plain equations)"
        for size, row in results["external"].items()
        for mode, r in row.items()
        if _paired(r, "visattn", "plain") > 1.0
    ]
    slower += [
        f"efficient {size} {mode}"
        for size, row in results["efficient"].items()
        for mode, r in row.items()
        if r["visattn"]["ratio_to_plain"] > 1.0
    ]
    slower += [
        f"efficient {size} forward (vs mhsa)"
        for size, r in results["efficient_vs_mhsa"].items()
        if r["efficient"]["ratio_to_mhsa"] > 1.0
    ]
    lines += ["", "Slower than the reference in this run: " + (", ".join(slower) if slower else "nowhere") + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
