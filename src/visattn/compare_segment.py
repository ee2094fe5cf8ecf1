"""``visattn compare --task segment``: one segmentation model per mechanism on the same data.

The segmentation counterpart of :mod:`visattn.compare`: the backbone + head (default
:data:`visattn.train.segment.SEG_DEFAULT_MODEL`) is built once per mechanism, trained with
:func:`visattn.train.segment.train_segment` (same seed, data order, schedule, epochs), then
measured as in :mod:`visattn.compare`, with the test mIoU (and pixel accuracy) in place of
top-1. ``flops`` and ``latency_ms`` are for one ``image_size`` x ``image_size`` image;
``peak_mib`` is one training step (forward, pixel cross-entropy, backward) at the training
batch size. Results: the same table, ``compare.json`` and ``compare.png`` (mIoU against
latency).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from visattn._io import atomic_path, atomic_write_text
from visattn.compare import (
    _check_device_amp,
    _check_names,
    _check_output,
    _claim_run_dir,
    _f,
    _measure,
    _output_lock,
    _run_dir,
    failure_text,
)
from visattn.train.segment import SEG_DEFAULT_DATA, SEG_DEFAULT_MODEL

__all__ = [
    "SegCompareResult",
    "compare_segment",
    "format_seg_table",
    "write_seg_plot",
    "SEG_COMPARE_DEFAULTS",
    "run_from_args",
]

#: Defaults sized so every mechanism trains on digit scenes on 2 CPU cores in a few minutes in all.
SEG_COMPARE_DEFAULTS: dict[str, Any] = {
    "model": SEG_DEFAULT_MODEL,
    "data": SEG_DEFAULT_DATA,
    "image_size": 32,
    "epochs": 4,
    "batch_size": 16,
    "lr": 5e-3,
    "seed": 0,
    "latency_batch": 1,
    "precise_bn": 5,
    "threads": 1,
}


HEADERS = [
    "mechanism",
    "mIoU %",
    "pixel acc %",
    "params",
    "MFLOPs/img",
    "train img/s",
    "latency ms",
    "peak MiB",
    "time s",
    "error",
]


@dataclass
class SegCompareResult:
    """One row: test mIoU and pixel accuracy (fractions), params, forward FLOPs of one image,
    training images/s (last epoch), eval latency, peak training-step memory, wall time, error."""

    mechanism: str
    miou: float | None = None
    pixel_acc: float | None = None
    params: int | None = None
    flops: int | None = None
    train_img_s: float | None = None
    latency_ms: float | None = None
    peak_mib: float | None = None
    time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


def compare_segment(
    mechanisms: Iterable[str] | None = None,
    *,
    model: str = SEG_COMPARE_DEFAULTS["model"],
    data: str = SEG_COMPARE_DEFAULTS["data"],
    image_size: int | None = SEG_COMPARE_DEFAULTS["image_size"],
    epochs: int = SEG_COMPARE_DEFAULTS["epochs"],
    batch_size: int = SEG_COMPARE_DEFAULTS["batch_size"],
    lr: float = SEG_COMPARE_DEFAULTS["lr"],
    seed: int = SEG_COMPARE_DEFAULTS["seed"],
    latency_batch: int = SEG_COMPARE_DEFAULTS["latency_batch"],
    attn_kwargs: dict[str, dict] | None = None,
    amp: str = "none",
    device: str = "auto",
    output: str | os.PathLike | None = "compare-out",
    progress: bool = True,
    threads: int | None = SEG_COMPARE_DEFAULTS["threads"],
    precise_bn: int = SEG_COMPARE_DEFAULTS["precise_bn"],
) -> list[SegCompareResult]:
    """Train the segmentation ``model`` once per mechanism and measure it (see module docstring;
    arguments as :func:`visattn.compare.compare`). Writes ``compare.json``, ``compare.png`` and
    ``runs/segment/<mechanism>/seed<seed>/`` into ``output`` (None: nothing written)."""
    import visattn
    from visattn.train.segment import check_segmentation_model

    check_segmentation_model(model)
    _check_names("mechanisms", mechanisms)
    names = list(mechanisms) if mechanisms is not None else visattn.list_attention()
    known = visattn.list_attention()
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise ValueError(
            f"unknown mechanism(s) {unknown}; expected names from {known}" if unknown else "no mechanisms to compare"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"mechanisms must not repeat, got {names}")
    if latency_batch < 1:
        raise ValueError(f"latency_batch must be >= 1, got {latency_batch}")
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's choice), got {threads}")
    _check_device_amp(device, amp)
    out = Path(output) if output is not None else None
    if out is not None:  # before any data or training: refuse a file or run folders compare did not create
        _check_output(out, [_run_dir(out, "segment", n, seed) for n in names])
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with _output_lock(out):
            return _compare_segment(
                names,
                model,
                data,
                image_size,
                epochs,
                batch_size,
                lr,
                seed,
                latency_batch,
                dict(attn_kwargs or {}),
                amp,
                device,
                output,
                progress,
                precise_bn,
            )
    finally:
        torch.set_num_threads(prev_threads)


def _compare_segment(
    names,
    model,
    data,
    image_size,
    epochs,
    batch_size,
    lr,
    seed,
    latency_batch,
    attn_kwargs,
    amp,
    device,
    output,
    progress,
    precise_bn,
) -> list[SegCompareResult]:
    from tqdm.auto import tqdm

    from visattn.data.segmentation import load_seg_data
    from visattn.train.distributed import _pick_device
    from visattn.train.segment import SegTrainConfig, train_segment

    out = Path(output) if output is not None else None
    bundle = load_seg_data(data, image_size, seed=seed)
    dev = _pick_device(device, 0)
    t_start = time.perf_counter()
    results: list[SegCompareResult] = []
    with tqdm(names, desc="compare", unit="mech", disable=not progress, dynamic_ncols=True, position=0) as bar:
        for name in bar:
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            row = SegCompareResult(name)
            try:
                cfg = SegTrainConfig(
                    model=model,
                    attention=name,
                    attn_kwargs=attn_kwargs.get(name),
                    data=data,
                    image_size=bundle.image_size,
                    epochs=epochs,
                    batch_size=batch_size,
                    lr=lr,
                    seed=seed,
                    amp=amp,
                    device=device,
                    progress=progress,
                    verbose=False,
                    plot=False,
                    precise_bn=precise_bn,
                    checkpoints=False,
                    output=str(_run_dir(out, "segment", name, seed)) if out is not None else None,
                )
                if out is not None:
                    _claim_run_dir(_run_dir(out, "segment", name, seed))
                res = train_segment(cfg, data=bundle, bar_position=1)
                row.history = res.history
                row.miou, row.pixel_acc = res.final.get("test_miou"), res.final.get("test_pixel_acc")
                row.train_img_s = res.history[-1]["images_per_s"] if res.history else None
                bar.set_postfix_str(f"{name}: measuring")
                m = _measure(
                    res.model, bundle.image_size, batch_size, latency_batch, dev, bundle.num_classes, dense=True
                )
                row.params, row.flops = m["params"], m["flops"]
                row.latency_ms, row.peak_mib = m["latency_ms"], m["peak_mib"]
            except Exception as e:
                row.error = failure_text(e)
            row.time_s = time.perf_counter() - t0
            results.append(row)
    total = time.perf_counter() - t_start
    if out is not None:
        config = {
            "task": "segment",
            "model": model,
            "data": data,
            "image_size": bundle.image_size,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "latency_batch": latency_batch,
            "precise_bn": precise_bn,
            "attn_kwargs": attn_kwargs,
            "amp": amp,
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "train_size": len(bundle.train),
            "test_size": len(bundle.test),
            "num_classes": bundle.num_classes,
            "ignore_index": bundle.ignore_index,
        }
        _write_json(results, out / "compare.json", config, total)
        write_seg_plot(
            results,
            out / "compare.png",
            f"{model} on {data} ({bundle.image_size}x{bundle.image_size}, {epochs} epochs)",
            latency_batch,
        )
    return results


def _write_json(results: list[SegCompareResult], path: Path, config: dict[str, Any], total_s: float) -> Path:
    """Rows, configuration and environment as indented strict JSON, written atomically."""
    from visattn._strict_json import strict as _strict
    from visattn.bench.report import environment

    doc = {
        "environment": environment(),
        "config": config,
        "total_time_s": total_s,
        "results": [asdict(r) for r in results],
    }
    atomic_write_text(path, json.dumps(_strict(doc), indent=2, allow_nan=False))
    return path


def format_seg_table(results: list[SegCompareResult], latency_batch: int = 1) -> str:
    """The comparison as a GitHub-style table: :func:`visattn.compare.format_table`'s columns,
    mIoU and pixel accuracy in place of top-1."""
    from tabulate import tabulate

    rows = [
        [
            r.mechanism,
            _f(None if r.miou is None else 100 * r.miou, "{:.1f}"),
            _f(None if r.pixel_acc is None else 100 * r.pixel_acc, "{:.1f}"),
            _f(None if r.params is None else r.params / 1e3, "{:.1f}k"),
            _f(None if r.flops is None else r.flops / 1e6, "{:.1f}"),
            _f(r.train_img_s, "{:.0f}"),
            _f(r.latency_ms, "{:.2f}"),
            _f(r.peak_mib, "{:.1f}"),
            f"{r.time_s:.1f}",
            r.error,
        ]
        for r in results
    ]
    headers = list(HEADERS)
    headers[6] = f"latency ms (batch {latency_batch})"
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def write_seg_plot(
    results: list[SegCompareResult], path: str | os.PathLike, title: str = "", latency_batch: int = 1
) -> Path:
    """mIoU against inference latency, one labelled point per mechanism that trained
    (a :class:`matplotlib.figure.Figure`: no pyplot, no global state)."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    points = [
        (r.mechanism, r.latency_ms, 100 * r.miou)
        for r in results
        if not r.error and r.miou is not None and r.latency_ms is not None
    ]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name, latency, miou in points:
        ax.scatter(latency, miou, s=40)
        ax.annotate(name, (latency, miou), textcoords="offset points", xytext=(5, 4), fontsize=9)
    failed = [r.mechanism for r in results if r.error]
    ax.set_xlabel(f"inference latency (ms, batch {latency_batch})")
    ax.set_ylabel("test mIoU (%)")
    if title:
        ax.set_title(title + (f"\nfailed: {', '.join(failed)}" if failed else ""), fontsize=10)
    ax.margins(x=0.12, y=0.08)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def run_from_args(args) -> int:
    """``visattn compare --task segment``. ``--model``, ``--data``, ``--image-size``, ``--epochs``,
    ``--batch-size`` and ``--lr`` left out take :data:`SEG_COMPARE_DEFAULTS`' values."""

    def pick(key: str, value):  # an option left out gets the segmentation default; one given is used as given
        return SEG_COMPARE_DEFAULTS[key] if value is None else value

    given = [
        opt
        for opt, v in (
            ("--tasks", args.tasks),
            ("--seeds", args.seeds),
            ("--quick", args.quick),
            ("--pos-embed", args.pos_embed),
            ("--model-kwargs", args.model_kwargs),
        )
        if v is not None and v is not False
    ]  # '{}' is given too
    if given:
        raise ValueError(
            f"{', '.join(given)} belong(s) to the classification comparison; --task segment trains one "
            "seed of one segmentation model per mechanism (choose it with --model, its data with --data)"
        )

    results = compare_segment(
        args.mechanisms,
        model=pick("model", args.model),
        data=pick("data", args.data),
        image_size=pick("image_size", args.image_size),
        epochs=pick("epochs", args.epochs),
        batch_size=pick("batch_size", args.batch_size),
        lr=pick("lr", args.lr),
        seed=args.seed,
        latency_batch=args.latency_batch,
        attn_kwargs=args.attn_kwargs,
        amp=args.amp,
        device=args.device,
        output=args.output,
        progress=not args.no_progress,
        threads=args.threads,
        precise_bn=args.precise_bn,
    )
    print(format_seg_table(results, args.latency_batch))
    total = sum(r.time_s for r in results)
    print(
        f"\n{len(results)} mechanisms in {total:.0f} s; wrote {args.output}/compare.json and {args.output}/compare.png"
    )
    failed = [r.mechanism for r in results if r.error]
    if failed:
        print(f"failed: {', '.join(failed)} (see the error column)")
    return 1 if len(failed) == len(results) else 0
