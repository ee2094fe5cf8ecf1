"""The report of ``visattn compare``, the same for every task: the table, strict ``compare.json``
and ``compare.png`` (the primary metric per data set with error bars)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from visattn._io import atomic_path, atomic_write_text
from visattn.compare.core import CompareReport, Score, TaskStats, cost_task
from visattn.compare.plugin import Metric

__all__ = ["format_table", "write_json", "write_plot"]


def _f(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _score_cell(m: Metric, s: TaskStats, mean: float | None, spread: float | None, n: int, mark: bool) -> str:
    if s.error:
        return "failed"
    if mean is None:
        return "-"
    cell = f"{m.show(mean)} ± {m.show(spread or 0.0)}" if n > 1 else m.show(mean)
    return cell + (" *" if mark else "")


def format_table(report: CompareReport) -> str:
    """The comparison as a GitHub-style table, a line per mechanism, then what ``*`` means."""
    from tabulate import tabulate

    plugin = report.task
    primary, *secondary = plugin.metrics
    ct = cost_task(report.tasks)
    lb = report.config.get("latency_batch", 1)
    headers = ["mechanism", "reach", "sees position"]
    headers += [f"{t.name} {m.label}" for t in report.tasks for m in plugin.metrics]
    headers += [
        f"params ({ct.name})",
        "MFLOPs/img",
        "train img/s",
        f"latency ms (batch {lb})",
        "peak MiB",
        "time s",
        "error",
    ]
    rows = []
    for r in report.rows:
        c = r.tasks[ct.name]
        errors = "; ".join(f"{t}: {s.error}" for t, s in r.tasks.items() if s.error)
        cells = []
        for t in report.tasks:
            s = r.tasks[t.name]
            cells.append(_score_cell(primary, s, s.mean, s.spread, len(s.values), s.near_best))
            for m in secondary:
                o = s.others.get(m.key, Score())
                cells.append(_score_cell(m, s, o.mean, o.spread, len(o.values), False))
        rows.append(
            [r.mechanism, r.receptive_field, r.sees_position]
            + cells
            + [
                _f(None if c.params is None else c.params / 1e3, "{:.1f}k"),
                _f(None if c.flops is None else c.flops / 1e6, "{:.2f}"),
                _f(c.train_img_s, "{:.0f}"),
                _f(c.latency_ms, "{:.2f}"),
                _f(c.peak_mib, "{:.1f}"),
                f"{r.time_s:.0f}",
                errors,
            ]
        )
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    n = len(report.config.get("seeds", [])) or 1
    sizes = ", ".join(f"{t.name} {t.image_size}x{t.image_size} {t.epochs} epochs" for t in report.tasks)
    best = "best" if primary.higher_is_better else "best (lowest)"
    notes = [
        f"{primary.name}: {primary.about}, mean ± half the range over {n} seed(s); * = the {best} on that task, "
        "or its interval overlaps the best one's (this run does not tell them apart)."
        if n > 1
        else f"{primary.name}: {primary.about} of one seed (no spread: run --seeds 2 or more); * = the {best} "
        "on that task.",
    ]
    notes += [f"{m.name}: {m.about}." for m in secondary]
    notes.append(f"Costs (params to peak MiB) on {ct.name} at {ct.image_size}x{ct.image_size}; {sizes}.")
    if plugin.skip_costs:
        notes.append("Not measured: " + "; ".join(f"{k} ({why})" for k, why in plugin.skip_costs.items()) + ".")
    return table + "\n\n" + "\n".join(notes)


def write_json(report: CompareReport, path: str | os.PathLike) -> Path:
    """``report`` with the environment, as indented JSON, written atomically."""
    from visattn._strict_json import strict as _strict
    from visattn.bench.report import environment

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"environment": environment(), **report.as_dict()}
    atomic_write_text(path, json.dumps(_strict(doc), indent=2, allow_nan=False))  # strict JSON: NaN -> null
    return path


def write_plot(report: CompareReport, path: str | os.PathLike) -> Path:
    """The primary metric per data set, one panel per data set: mean with an error bar over the
    seeds (min..max), each seed as a dot, local mechanisms in one colour and global ones in
    another, chance dashed. Drawn on a ``matplotlib.figure.Figure`` (no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = report.task.metrics[0]
    tasks = report.tasks
    fig = Figure(figsize=(4.2 * len(tasks) + 1.0, 4.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    colors = {"local": "tab:blue", "global": "tab:orange"}
    names = [r.mechanism for r in report.rows]
    for ax, task in zip(axes, tasks):
        for i, r in enumerate(report.rows):
            s = r.tasks[task.name]
            if s.mean is None:
                ax.annotate(
                    "failed",
                    (i, 0.04),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="red",
                )  # in view whatever the y range
                continue
            col = colors.get(r.receptive_field, "tab:gray")
            lo, hi = m.scale * (s.mean - min(s.values)), m.scale * (max(s.values) - s.mean)
            ax.errorbar(
                [i],
                [m.scale * s.mean],
                yerr=[[lo], [hi]],
                fmt="o",
                color=col,
                capsize=4,
                ms=6,
                mfc="white" if r.sees_position == "no" else col,
            )
            ax.scatter([i] * len(s.values), [m.scale * a for a in s.values], s=9, color=col, alpha=0.6, zorder=3)
        if task.chance:
            ax.axhline(m.scale * task.chance, ls="--", color="gray", lw=1)  # out of view when every run is far above
        lows = [m.scale * min(r.tasks[task.name].values) for r in report.rows if r.tasks[task.name].values]
        if lows and m.unit == "%":
            ax.set_ylim(max(0.0, min(lows) - 3), 101)
        ax.set_xticks(range(len(names)))
        ax.set_xlim(-0.6, len(names) - 0.4)  # the first and last mechanisms' markers whole, not cut at the frame
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{task.name} ({task.image_size}x{task.image_size}, {task.epochs} epochs)", fontsize=10)
        ax.set_ylabel(f"{m.about} ({m.unit})" if m.unit else m.about)
        ax.grid(True, axis="y", alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="", color=c, label=f"{k} reach") for k, c in colors.items()]
    handles.append(Line2D([], [], marker="o", ls="", color="gray", mfc="white", label="sees no position"))
    axes[-1].legend(handles=handles, fontsize=7, loc="center right")
    n = len(report.config.get("seeds", [])) or 1
    fig.suptitle(f"{report.config.get('model', '')}: mean and range over {n} seed(s)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return path
