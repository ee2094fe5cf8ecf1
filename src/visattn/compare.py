"""``visattn compare``: the same backbone trained once per mechanism, on the same data.

For every mechanism (default: every registered one, the ``conv`` baseline included) the
backbone (default ``resnet_tiny``) is built with that mechanism in its spatial-mixer slot,
trained with :func:`visattn.train.train` (same seed, data order, schedule and epochs),
then measured:

* ``top1``: test accuracy after the last epoch (BatchNorm statistics recomputed over a few
  training batches first, ``precise_bn``);
* ``params``: parameters of the whole model;
* ``flops``: forward FLOPs (2 x multiply-adds) of one image, ``torch.utils.flop_counter``
  via :func:`visattn.flops.count_flops`;
* ``train_img_s``: training throughput in the last epoch (images/s);
* ``latency_ms``: median eval-mode forward latency at ``latency_batch`` images;
* ``peak_mib``: peak memory of one training step (forward + backward) at the training
  batch size (CPU: cumulative profiler allocation curve; CUDA: ``max_memory_allocated``),
  via :func:`visattn.bench.peak_memory_bytes`.

A mechanism that fails (construction, training or measurement) becomes a row with its
error; the others go on. Results: a table on stdout, ``compare.json`` and ``compare.png``
(accuracy against latency, one labelled point per mechanism) in the output folder.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

__all__ = ["CompareResult", "compare", "format_table", "write_json", "write_plot", "DEFAULTS"]

#: Defaults of the main job, sized so ~10 mechanisms finish in < 5 minutes on 2 CPU cores.
DEFAULTS: dict[str, Any] = {
    "model": "resnet_tiny",
    "data": "digits",
    "image_size": 16,
    "epochs": 3,
    "batch_size": 64,
    "lr": 3e-3,
    "seed": 0,
    "latency_batch": 1,
    "precise_bn": 5,
    "threads": 1,
}


@dataclass
class CompareResult:
    """One row of the comparison (see module docstring for each figure)."""

    mechanism: str
    top1: float | None = None
    params: int | None = None
    flops: int | None = None
    train_img_s: float | None = None
    latency_ms: float | None = None
    peak_mib: float | None = None
    time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _measure(model: torch.nn.Module, image_size: int, batch_size: int, latency_batch: int, device,
             num_classes: int) -> dict[str, Any]:
    from visattn.bench.measure import median_time, peak_memory_bytes
    from visattn.flops import count_flops

    model.eval()
    out: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        out["flops"] = count_flops(model, torch.randn(1, 3, image_size, image_size, device=device))
        xb = torch.randn(latency_batch, 3, image_size, image_size, device=device)
        out["latency_ms"] = 1e3 * median_time(lambda: model(xb), device, warmup=2, min_repeats=5, max_repeats=30,
                                              min_time=0.2)
    model.train()
    xt = torch.randn(batch_size, 3, image_size, image_size, device=device)
    yt = torch.randint(0, num_classes, (batch_size,), device=device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()

    out["peak_mib"] = peak_memory_bytes(step, device) / 2**20
    model.zero_grad(set_to_none=True)
    model.eval()
    return out


def compare(mechanisms: Iterable[str] | None = None, *, model: str = DEFAULTS["model"], data: str = DEFAULTS["data"],
            image_size: int | None = DEFAULTS["image_size"], epochs: int = DEFAULTS["epochs"],
            batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"], seed: int = DEFAULTS["seed"],
            latency_batch: int = DEFAULTS["latency_batch"], attn_kwargs: dict[str, dict] | None = None,
            amp: str = "none", device: str = "auto", output: str | os.PathLike | None = "compare-out",
            progress: bool = True, threads: int | None = DEFAULTS["threads"],
            precise_bn: int = DEFAULTS["precise_bn"]) -> list[CompareResult]:
    """Train ``model`` once per mechanism and measure it (see module docstring).

    ``attn_kwargs`` maps a mechanism name to its constructor arguments. ``precise_bn``: BatchNorm
    statistics are recomputed over that many training batches before each evaluation (see
    :meth:`visattn.train.Trainer.recompute_bn_stats`; a short run otherwise leaves BN's
    running variance biased towards its initial 1, which wrecks eval-mode accuracy of
    mechanisms whose outputs have a small variance). ``threads`` sets
    ``torch.set_num_threads`` for the whole comparison (default 1; None or 0: torch's
    choice). One thread is the default because these models are small: on a 2-core
    machine shared with other work, two OpenMP threads made the same training 3-12x
    slower and its timings erratic (measured), while one thread gives steady figures. Writes
    ``compare.json`` and ``compare.png`` into ``output`` (None: nothing written) and
    per-mechanism ``runs/<name>/metrics.jsonl``.
    """
    import visattn
    from visattn.registry import model_entry

    model_entry(model)  # unknown model: fail now, with the list of known ones
    names = list(mechanisms) if mechanisms is not None else visattn.list_attention()
    if not names:
        raise ValueError("no mechanisms to compare")
    known = visattn.list_attention()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown mechanism(s) {unknown}; expected names from {known}")
    attn_kwargs = dict(attn_kwargs or {})
    if latency_batch < 1:
        raise ValueError(f"latency_batch must be >= 1, got {latency_batch}")
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's choice), got {threads}")
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _compare(names, model, data, image_size, epochs, batch_size, lr, seed, latency_batch, attn_kwargs, amp,
                        device, output, progress, precise_bn)
    finally:
        torch.set_num_threads(prev_threads)


def _compare(names, model, data, image_size, epochs, batch_size, lr, seed, latency_batch, attn_kwargs, amp, device,
             output, progress, precise_bn) -> list[CompareResult]:
    from tqdm.auto import tqdm

    from visattn.data import load_data
    from visattn.train import TrainConfig, train
    from visattn.train.distributed import _pick_device

    bundle = load_data(data, image_size, seed=seed)
    dev = _pick_device(device, 0)
    out = Path(output) if output is not None else None
    t_start = time.perf_counter()
    results: list[CompareResult] = []
    with tqdm(names, desc="compare", unit="mech", disable=not progress, dynamic_ncols=True, position=0) as bar:
        for name in bar:
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            row = CompareResult(name)
            try:
                cfg = TrainConfig(model=model, attention=name, attn_kwargs=attn_kwargs.get(name), data=data,
                                  image_size=bundle.image_size, epochs=epochs, batch_size=batch_size, lr=lr,
                                  seed=seed, amp=amp, device=device, progress=progress, verbose=False, plot=False,
                                  precise_bn=precise_bn,
                                  output=str(out / "runs" / name) if out is not None else None, checkpoints=False)
                if out is not None:
                    _clear_run(out / "runs" / name)
                res = train(cfg, data=bundle, bar_position=1)
                row.history = res.history
                row.top1 = res.final.get("test_acc")
                row.train_img_s = res.history[-1]["images_per_s"] if res.history else None
                bar.set_postfix_str(f"{name}: measuring")
                m = _measure(res.model, bundle.image_size, batch_size, latency_batch, dev, bundle.num_classes)
                row.params, row.flops = m["params"], m["flops"]
                row.latency_ms, row.peak_mib = m["latency_ms"], m["peak_mib"]
            except Exception as e:  # noqa: BLE001 - one failing mechanism must not end the run
                row.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                row.history = row.history or []
                if os.environ.get("VISATTN_DEBUG"):
                    traceback.print_exc()
            row.time_s = time.perf_counter() - t0
            results.append(row)
    total = time.perf_counter() - t_start
    if out is not None:
        config = {"model": model, "data": data, "image_size": bundle.image_size, "epochs": epochs,
                  "batch_size": batch_size, "lr": lr, "seed": seed, "latency_batch": latency_batch,
                  "precise_bn": precise_bn, "attn_kwargs": attn_kwargs, "amp": amp, "device": str(dev),
                  "threads": torch.get_num_threads(),
                  "train_size": len(bundle.train), "test_size": len(bundle.test), "num_classes": bundle.num_classes}
        write_json(results, out / "compare.json", config, total)
        write_plot(results, out / "compare.png",
                   f"{model} on {data} ({bundle.image_size}x{bundle.image_size}, {epochs} epochs)",
                   latency_batch)
    return results


def _clear_run(folder: Path) -> None:
    import shutil

    if folder.is_dir():
        shutil.rmtree(folder)


def _f(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


HEADERS = ["mechanism", "top-1 %", "params", "MFLOPs/img", "train img/s", "latency ms", "peak MiB", "time s",
           "error"]


def format_table(results: list[CompareResult], latency_batch: int = 1) -> str:
    """The comparison as a GitHub-style table (tabulate)."""
    from tabulate import tabulate

    rows = [[r.mechanism, _f(None if r.top1 is None else 100 * r.top1, "{:.1f}"),
             _f(None if r.params is None else r.params / 1e3, "{:.1f}k"),
             _f(None if r.flops is None else r.flops / 1e6, "{:.1f}"), _f(r.train_img_s, "{:.0f}"),
             _f(r.latency_ms, "{:.2f}"), _f(r.peak_mib, "{:.1f}"), f"{r.time_s:.1f}", r.error]
            for r in results]
    headers = list(HEADERS)
    headers[5] = f"latency ms (batch {latency_batch})"
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def write_json(results: list[CompareResult], path: str | os.PathLike, config: dict, total_time_s: float) -> Path:
    from visattn.bench.report import environment

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"config": config, "environment": environment(), "total_time_s": total_time_s,
           "results": [r.as_dict() for r in results]}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
    return path


def write_plot(results: list[CompareResult], path: str | os.PathLike, title: str = "", latency_batch: int = 1) -> Path:
    """Accuracy against inference latency, one labelled point per mechanism that trained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = [r for r in results if not r.error and r.top1 is not None and r.latency_ms is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ok:
        ax.scatter(r.latency_ms, 100 * r.top1, s=40)
        ax.annotate(r.mechanism, (r.latency_ms, 100 * r.top1), textcoords="offset points", xytext=(5, 4),
                    fontsize=9)
    failed = [r.mechanism for r in results if r.error]
    ax.set_xlabel(f"inference latency (ms, batch {latency_batch})")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title + (f"\nfailed: {', '.join(failed)}" if failed else ""), fontsize=10)
    ax.margins(x=0.12, y=0.08)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
