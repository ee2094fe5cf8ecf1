"""``visattn compare``: the same backbone trained per mechanism, per task and per seed.

For every mechanism (default: every registered one, the ``conv`` baseline included) the
backbone (default: ``resnet_tiny`` cut to its first two stages, :data:`SHALLOW_TINY`) is
built with that mechanism in its spatial-mixer slot and trained with
:func:`visattn.train.train` on each task, once per seed (same seeds, data, schedule and
epochs for every mechanism). Two built-in tasks (:data:`TASKS`) pull in opposite
directions:

* ``digits`` — scikit-learn's handwritten digit scans at their native 8 x 8: local shape
  matters and position helps; every mechanism's receptive field covers the image.
* ``longrange`` — :mod:`visattn.data.longrange` at 16 x 16: are two marks, at least 8
  columns apart, the same colour? The shallow backbone's 3x3 local mixers (conv, local,
  slide) never see both marks, which caps them at 75% (provably: see that module) and in
  practice keeps them near chance; swin's windows are bridged by the strided block's
  average pool, so the proof does not cover it (it too stays near chance in practice);
  mechanisms that mix the whole map can compare them.

Per (task, mechanism, seed): ``top1``, test accuracy after the last epoch (BatchNorm
statistics recomputed over a few training batches first, ``precise_bn``), the training
throughput and the wall time. Per mechanism, once, on the first seed's model of the task
with the largest images (:func:`cost_task`; the long-range task by default): ``params``, ``flops`` (forward FLOPs of one image, ``torch.utils.flop_counter``),
``latency_ms`` (median eval-mode forward at ``latency_batch`` images) and ``peak_mib`` (peak
memory of one training step at the training batch size). Accuracy is reported as the mean
over seeds ± half the range (max - min) / 2; a mechanism whose interval overlaps the best
one's on a task is marked: the run does not tell them apart.

"Trained enough": each task's epochs are chosen so that every mechanism is near its own
plateau at the default budget (docs/compare.md records the check: accuracy within about a
point of a run with 4x the epochs).

A mechanism that fails (construction, training or measurement) keeps its row with the
error; the others go on. Results: a table on stdout, ``compare.json`` and ``compare.png``
(accuracy per task with error bars) in the output folder, and every run's metrics in
``runs/<task>/<mechanism>/seed<k>/``. compare only ever removes run folders it created
itself (they hold a :data:`RUN_MARKER` file); any other non-empty folder in its way stops
it, before anything is trained.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from visattn._io import atomic_path, atomic_write_text

__all__ = [
    "Task",
    "TASKS",
    "SHALLOW_TINY",
    "DEFAULTS",
    "RUN_MARKER",
    "RunResult",
    "TaskStats",
    "MechanismRow",
    "CompareReport",
    "compare",
    "summarize",
    "format_table",
    "write_json",
    "write_plot",
    "sees_position",
    "reach",
    "REACH_OVERRIDES",
    "cost_task",
]


@dataclass(frozen=True)
class Task:
    """One classification task of the comparison.

    Attributes:
        name: short name (table column, ``runs/<name>/``).
        data: data spec for :func:`visattn.data.load_data`.
        image_size: input side.
        epochs: training epochs of the default run.
        quick_epochs: epochs under ``--quick``.
        chance: accuracy of guessing (the plot's dashed line).
        about: one line saying what the task tests.
    """

    name: str
    data: str
    image_size: int
    epochs: int
    quick_epochs: int
    chance: float
    about: str


#: The built-in tasks (epochs from the plateau check recorded in docs/compare.md).
TASKS: dict[str, Task] = {
    "digits": Task(
        "digits",
        "digits",
        8,
        8,
        2,
        0.1,
        "handwritten digit scans at 8x8: local shape, every mixer sees the whole image",
    ),
    "longrange": Task(
        "longrange",
        "longrange",
        16,
        2,
        1,
        0.5,
        "same colour? two marks >= 8 columns apart: local mixers never see both",
    ),
}

#: ``resnet_tiny`` cut to its first two stages (stem, a stride-1 block, a stride-2 block): with a
#: 3x3 local mixer (conv, local, slide; each followed by the strided block's 3x3 average pool) a
#: feature sees 9 input columns, fewer than the 10 it needs to touch both long-range marks. swin's 7x7 windows
#: tile a 16-wide map at columns 0-6, 7-13, 14-15 and that pool straddles two windows: some of its
#: features see 15 columns. 10k-30k parameters.
SHALLOW_TINY: dict[str, Any] = {"depths": [1, 1], "widths": [16, 32]}

#: Defaults of the main job: 10 mechanisms x 2 tasks x 2 seeds in <= 8 minutes on 2 CPU cores.
DEFAULTS: dict[str, Any] = {
    "model": "resnet_tiny",
    "tasks": ("digits", "longrange"),
    "seeds": 2,
    "seed": 0,
    "batch_size": 64,
    "lr": 3e-3,
    "latency_batch": 1,
    "precise_bn": 5,
    "threads": 1,
}

#: File compare writes into every run folder it creates; only folders holding it are ever removed.
RUN_MARKER = ".visattn-compare-run"


@dataclass
class RunResult:
    """One training run: a mechanism on a task with one seed."""

    task: str
    mechanism: str
    seed: int
    top1: float | None = None
    train_img_s: float | None = None
    time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


@dataclass
class TaskStats:
    """One mechanism on one task: accuracy over seeds and the costs measured once.

    ``mean`` and ``spread`` (half the range over seeds) are fractions; ``near_best``: the
    interval ``mean ± spread`` overlaps the best mechanism's on this task.
    """

    accs: list[float] = field(default_factory=list)
    mean: float | None = None
    spread: float | None = None
    near_best: bool = False
    best: bool = False
    params: int | None = None
    flops: int | None = None
    train_img_s: float | None = None
    latency_ms: float | None = None
    peak_mib: float | None = None
    error: str = ""


@dataclass
class MechanismRow:
    """A mechanism across tasks (the table's row)."""

    mechanism: str
    sees_position: str
    receptive_field: str
    tasks: dict[str, TaskStats] = field(default_factory=dict)
    time_s: float = 0.0


@dataclass
class CompareReport:
    """Everything a comparison produced: per-run results, per-mechanism rows, the options."""

    rows: list[MechanismRow]
    runs: list[RunResult]
    tasks: list[Task]
    config: dict[str, Any]
    total_time_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "total_time_s": self.total_time_s,
            "tasks": [asdict(t) for t in self.tasks],
            "rows": [asdict(r) for r in self.rows],
            "runs": [asdict(r) for r in self.runs],
        }


#: Where a mechanism's reach differs from the registry's ``receptive_field`` (which describes
#: its positional part): a lambda layer's content lambda sums over every position of the map.
REACH_OVERRIDES: dict[str, str] = {"lambda": "global"}


def reach(mechanism: str) -> str:
    """ "local" or "global": whether one layer of the mechanism mixes the whole map."""
    from visattn.registry import attention_info

    return REACH_OVERRIDES.get(mechanism, attention_info(mechanism).receptive_field)


def sees_position(mechanism: str, pos_embed: bool = False) -> str:
    """ "yes", "no" or "conv PE" (position from :class:`~visattn.models.pos_embed.ConvPosEmbed`),
    from the registry's ``positional`` description of the mechanism."""
    from visattn.registry import attention_info

    blind = attention_info(mechanism).positional.startswith("none")
    if not blind:
        return "yes"
    return "conv PE" if pos_embed else "no"


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def _measure(
    model: torch.nn.Module,
    image_size: int,
    batch_size: int,
    latency_batch: int,
    device,
    num_classes: int,
    dense: bool = False,
) -> dict[str, Any]:
    """Parameters, FLOPs of one image, eval latency at ``latency_batch`` and the peak memory of one
    training step at ``batch_size``; ``dense``: per-pixel targets (segmentation) instead of one per image."""
    from visattn.bench.measure import median_time, peak_memory_bytes
    from visattn.flops import count_flops

    model.eval()
    out: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        out["flops"] = count_flops(model, torch.randn(1, 3, image_size, image_size, device=device))
        xb = torch.randn(latency_batch, 3, image_size, image_size, device=device)
        out["latency_ms"] = 1e3 * median_time(
            lambda: model(xb), device, warmup=2, min_repeats=5, max_repeats=30, min_time=0.2
        )
    model.train()
    xt = torch.randn(batch_size, 3, image_size, image_size, device=device)
    yt = torch.randint(0, num_classes, (batch_size, image_size, image_size) if dense else (batch_size,), device=device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()

    out["peak_mib"] = peak_memory_bytes(step, device) / 2**20
    model.zero_grad(set_to_none=True)
    model.eval()
    return out


def _resolve_tasks(
    tasks: Sequence[str] | None, data: str | None, image_size: int | None, epochs: int | None, quick: bool
) -> list[Task]:
    if data is not None:
        if tasks is not None:
            raise ValueError(f"give either tasks {list(tasks)} or a data spec {data!r}, not both")
        if image_size is None or epochs is None:
            raise ValueError(f"a custom data spec ({data!r}) needs image_size and epochs")
        picked = [Task(data.partition(":")[0], data, image_size, epochs, epochs, 0.0, f"data {data}")]
    else:
        names = list(tasks) if tasks is not None else list(DEFAULTS["tasks"])
        unknown = [n for n in names if n not in TASKS]
        if unknown or not names:
            raise ValueError(f"unknown task(s) {unknown or names}; expected names from {list(TASKS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"tasks must not repeat, got {names}")
        picked = [TASKS[n] for n in names]
    out = []
    for t in picked:
        e = epochs if epochs is not None else (t.quick_epochs if quick else t.epochs)
        out.append(replace(t, image_size=image_size if image_size is not None else t.image_size, epochs=e))
    for t in out:
        if isinstance(t.epochs, bool) or not isinstance(t.epochs, int) or t.epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {t.epochs!r}")
        if isinstance(t.image_size, bool) or not isinstance(t.image_size, int) or t.image_size < 1:
            raise ValueError(f"image_size must be an int >= 1, got {t.image_size!r}")
    return out


def _check_names(what: str, names) -> None:
    """A bare string where a list of names belongs would be read letter by letter: refuse it."""
    if isinstance(names, str):
        raise TypeError(f"{what} must be a list of names, got the string {names!r} (write [{names!r}])")


def _check_device_amp(device: str, amp: str) -> None:
    """Refuse, before any output or training, a device that is not there or an ``amp`` it cannot run
    (every run would fail the same way)."""
    from visattn.train.distributed import _pick_device
    from visattn.train.engine import _amp_dtype

    _amp_dtype(amp, _pick_device(device, 0))


def _run_dir(out: Path, task: str, mechanism: str, seed: int) -> Path:
    return out / "runs" / task / mechanism / f"seed{seed}"


def _check_output(out: Path, run_dirs: list[Path]) -> None:
    """Refuse, before any training, an output that is a file or run folders compare did not create."""
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"output {str(out)!r} is an existing file; expected a folder (it will hold compare.json, "
            "compare.png and runs/)"
        )
    for name in ("compare.json", "compare.png"):
        if (out / name).is_dir():
            raise ValueError(f"{str(out / name)!r} is a folder; compare writes a file there: choose another output")
    blocked = sorted(
        {
            p
            for d in run_dirs
            for p in [d, *d.parents]
            if p != out and out in p.parents and p != d and p.exists() and not p.is_dir()
        }
    )
    if blocked:
        raise ValueError(
            f"{str(blocked[0])!r} is an existing file where compare needs a folder for its runs: move "
            "it away or choose another output"
        )
    foreign = []
    for d in run_dirs:
        if d.exists() and not (d.is_dir() and ((d / RUN_MARKER).is_file() or not any(d.iterdir()))):
            foreign.append(d)
    if foreign:
        shown = ", ".join(repr(str(d)) for d in foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise ValueError(
            f"{shown} already exist(s) and compare did not create it (no {RUN_MARKER} file); compare "
            "removes only its own runs: move it away or choose another output"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {str(out)!r}: {e.strerror or e}") from e


def _output_lock(out: Path | None):
    """An exclusive lock on the output folder (``OUT/.lock``) for the whole comparison: a second
    compare on the same output refuses at once instead of removing the first one's runs."""
    import contextlib

    from visattn.train.checkpoint import RunLock

    return RunLock(out) if out is not None else contextlib.nullcontext()


def _claim_run_dir(d: Path) -> None:
    """Empty a run folder compare made earlier (it holds the marker), or create it; mark it as ours."""
    if (d / RUN_MARKER).is_file():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / RUN_MARKER).write_text("written by visattn compare; compare may delete this folder when it runs again\n")


def compare(
    mechanisms: Iterable[str] | None = None,
    *,
    tasks: Sequence[str] | None = None,
    model: str = DEFAULTS["model"],
    model_kwargs: dict | None = None,
    pos_embed: bool = False,
    data: str | None = None,
    image_size: int | None = None,
    epochs: int | None = None,
    seeds: int | None = None,
    seed: int = DEFAULTS["seed"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    latency_batch: int = DEFAULTS["latency_batch"],
    attn_kwargs: dict[str, dict] | None = None,
    amp: str = "none",
    device: str = "auto",
    output: str | os.PathLike | None = "compare-out",
    progress: bool = True,
    threads: int | None = DEFAULTS["threads"],
    precise_bn: int = DEFAULTS["precise_bn"],
    quick: bool = False,
) -> CompareReport:
    """Train ``model`` per mechanism, task and seed, and measure it (see module docstring).

    Args:
        mechanisms: registered names (default: all).
        tasks: names from :data:`TASKS` (default: digits and longrange).
        model: registered backbone; ``model_kwargs`` its options (default for ``resnet_tiny``:
            :data:`SHALLOW_TINY`; ``{}`` for the full four-stage network).
        pos_embed: a depthwise-conv position encoding before every mechanism (ResNet backbones,
            ``ResNetConfig.pos_embed``): gives content-only mechanisms position.
        data, image_size, epochs: a custom data spec instead of the tasks (needs ``image_size``
            and ``epochs``); otherwise ``image_size`` / ``epochs`` override every task's.
        seeds: runs per (task, mechanism), with seeds ``seed, seed + 1, ...`` (each seed also
            redraws the data: digits' split, the long-range images). Default 2, or 1 with ``quick``.
        quick: fewer epochs per task (``Task.quick_epochs``) and one seed unless ``seeds`` is given:
            a smoke run.
        attn_kwargs: mechanism name -> constructor arguments.
        precise_bn: BatchNorm statistics recomputed over that many training batches before
            each evaluation (:meth:`visattn.train.Trainer.recompute_bn_stats`).
        threads: ``torch.set_num_threads`` for the whole comparison (default 1: these models are
            small, and on a shared 2-core machine two threads made training 3-12x slower and
            its timings erratic; 0 or None: torch's choice).
        output: folder for ``compare.json``, ``compare.png`` and ``runs/`` (None: nothing written).

    Returns:
        a :class:`CompareReport`; ``format_table(report)`` prints it.
    """
    import visattn
    from visattn.registry import model_entry

    model_entry(model)  # unknown model: fail now, with the list of known ones
    _check_names("mechanisms", mechanisms)
    _check_names("tasks", tasks)
    names = list(mechanisms) if mechanisms is not None else visattn.list_attention()
    if not names:
        raise ValueError("no mechanisms to compare")
    known = visattn.list_attention()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown mechanism(s) {unknown}; expected names from {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"mechanisms must not repeat, got {names}")
    if seeds is None:
        seeds = 1 if quick else DEFAULTS["seeds"]
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1, got {seeds!r}")
    if latency_batch < 1:
        raise ValueError(f"latency_batch must be >= 1, got {latency_batch}")
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's choice), got {threads}")
    task_list = _resolve_tasks(tasks, data, image_size, epochs, quick)
    _check_device_amp(device, amp)
    if model_kwargs is None:
        model_kwargs = dict(SHALLOW_TINY) if model == "resnet_tiny" else {}
    model_kwargs = dict(model_kwargs)
    if pos_embed:
        model_kwargs["pos_embed"] = True
    pos_embed = bool(model_kwargs.get("pos_embed"))  # given in model_kwargs too: the position column says so
    seed_list = [seed + i for i in range(seeds)]
    out = Path(output) if output is not None else None
    if out is not None:
        _check_output(out, [_run_dir(out, t.name, n, s) for t in task_list for n in names for s in seed_list])
    cfg = {
        "model": model,
        "model_kwargs": model_kwargs,
        "pos_embed": pos_embed,
        "seeds": seed_list,
        "batch_size": batch_size,
        "lr": lr,
        "latency_batch": latency_batch,
        "precise_bn": precise_bn,
        "attn_kwargs": dict(attn_kwargs or {}),
        "amp": amp,
        "quick": quick,
    }
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with _output_lock(out):
            return _compare(names, task_list, seed_list, cfg, device, out, progress)
    finally:
        torch.set_num_threads(prev_threads)


def _compare(
    names: list[str], tasks: list[Task], seeds: list[int], cfg: dict, device: str, out: Path | None, progress: bool
) -> CompareReport:
    from tqdm.auto import tqdm

    from visattn.data import load_data
    from visattn.train import TrainConfig, train
    from visattn.train.distributed import _pick_device

    dev = _pick_device(device, 0)
    t_start = time.perf_counter()
    runs: list[RunResult] = []
    costs: dict[tuple[str, str], dict[str, Any]] = {}
    data_info: dict[str, dict] = {}
    plan = [(t, s) for t in tasks for s in seeds]
    measured = cost_task(tasks).name
    # every task's data (first seed) before any training: a bad spec or size fails now, not after the runs
    first = {t.name: load_data(t.data, t.image_size, seed=seeds[0]) for t in tasks}
    with tqdm(
        total=len(plan) * len(names), desc="compare", unit="run", disable=not progress, dynamic_ncols=True, position=0
    ) as bar:
        for task, seed in plan:
            bundle = first.pop(task.name) if task.name in first else load_data(task.data, task.image_size, seed=seed)
            data_info.setdefault(
                task.name,
                {
                    "train_size": len(bundle.train),
                    "test_size": len(bundle.test),
                    "num_classes": bundle.num_classes,
                    "image_size": bundle.image_size,
                },
            )
            for name in names:
                bar.set_postfix_str(f"{task.name} · {name} · seed {seed}")
                t0 = time.perf_counter()
                run = RunResult(task.name, name, seed)
                try:
                    folder = _run_dir(out, task.name, name, seed) if out is not None else None
                    if folder is not None:
                        _claim_run_dir(folder)
                    tc = TrainConfig(
                        model=cfg["model"],
                        attention=name,
                        attn_kwargs=cfg["attn_kwargs"].get(name),
                        model_kwargs=cfg["model_kwargs"] or None,
                        data=task.data,
                        image_size=bundle.image_size,
                        epochs=task.epochs,
                        batch_size=cfg["batch_size"],
                        lr=cfg["lr"],
                        seed=seed,
                        amp=cfg["amp"],
                        device=device,
                        progress=progress,
                        verbose=False,
                        plot=False,
                        precise_bn=cfg["precise_bn"],
                        output=str(folder) if folder is not None else None,
                        checkpoints=False,
                    )
                    res = train(tc, data=bundle, bar_position=1)
                    run.history = res.history
                    run.top1 = res.final.get("test_acc")
                    run.train_img_s = res.history[-1]["images_per_s"] if res.history else None
                    if task.name == measured and (task.name, name) not in costs:
                        bar.set_postfix_str(f"{task.name} · {name} · measuring")
                        costs[(task.name, name)] = _measure(
                            res.model,
                            bundle.image_size,
                            cfg["batch_size"],
                            cfg["latency_batch"],
                            dev,
                            bundle.num_classes,
                        )
                except Exception as e:
                    run.error = failure_text(e)
                run.time_s = time.perf_counter() - t0
                runs.append(run)
                bar.update(1)
    total = time.perf_counter() - t_start
    config = dict(
        cfg, tasks=[asdict(t) for t in tasks], data=data_info, device=str(dev), threads=torch.get_num_threads()
    )
    report = CompareReport(summarize(runs, costs, names, tasks, cfg["pos_embed"]), runs, tasks, config, total)
    if out is not None:
        write_json(report, out / "compare.json")
        write_plot(report, out / "compare.png")
    return report


def summarize(
    runs: list[RunResult],
    costs: dict[tuple[str, str], dict[str, Any]],
    names: list[str],
    tasks: list[Task],
    pos_embed: bool = False,
) -> list[MechanismRow]:
    """Rows per mechanism: accuracy mean ± half-range over seeds per task, costs, near-best flags."""
    rows = []
    for name in names:
        row = MechanismRow(name, sees_position(name, pos_embed), reach(name))
        for task in tasks:
            mine = [r for r in runs if r.mechanism == name and r.task == task.name]
            st = TaskStats()
            st.accs = [r.top1 for r in mine if not r.error and r.top1 is not None]
            errors = [r.error for r in mine if r.error]
            if errors:
                st.error = errors[0]
            elif st.accs:
                st.mean = sum(st.accs) / len(st.accs)
                st.spread = (max(st.accs) - min(st.accs)) / 2
            speeds = [r.train_img_s for r in mine if r.train_img_s]
            st.train_img_s = sum(speeds) / len(speeds) if speeds else None
            c = costs.get((task.name, name), {})
            st.params, st.flops = c.get("params"), c.get("flops")
            st.latency_ms, st.peak_mib = c.get("latency_ms"), c.get("peak_mib")
            row.tasks[task.name] = st
            row.time_s += sum(r.time_s for r in mine)
        rows.append(row)
    for task in tasks:
        scored = [  # (stats, mean, spread) of the runs that finished
            (s, s.mean, s.spread or 0.0) for s in (r.tasks[task.name] for r in rows) if s.mean is not None
        ]
        if not scored:
            continue
        top, top_mean, top_spread = max(scored, key=lambda t: t[1])
        for s, mean, spread in scored:
            s.best = s is top
            s.near_best = mean + spread >= top_mean - top_spread
    return rows


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def failure_text(e: BaseException) -> str:
    """The error column of a failed run: the exception's first line (the traceback too on stderr
    when ``VISATTN_DEBUG`` is set)."""
    if os.environ.get("VISATTN_DEBUG"):
        traceback.print_exception(e)
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def _f(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _acc_cell(s: TaskStats) -> str:
    if s.error:
        return "failed"
    if s.mean is None:
        return "-"
    spread = s.spread or 0.0  # set with the mean
    cell = f"{100 * s.mean:.1f} ± {100 * spread:.1f}" if len(s.accs) > 1 else f"{100 * s.mean:.1f}"
    return cell + (" *" if s.near_best else "")


def cost_task(tasks: Sequence[Task]) -> Task:
    """The task whose costs are measured and fill the table's cost columns: the one with the largest images."""
    return max(tasks, key=lambda t: t.image_size)


def format_table(report: CompareReport) -> str:
    """The comparison as a GitHub-style table, a line per mechanism, then what ``*`` means."""
    from tabulate import tabulate

    ct = cost_task(report.tasks)
    lb = report.config.get("latency_batch", 1)
    headers = ["mechanism", "reach", "sees position"]
    headers += [f"{t.name} top-1 %" for t in report.tasks]
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
        rows.append(
            [r.mechanism, r.receptive_field, r.sees_position]
            + [_acc_cell(r.tasks[t.name]) for t in report.tasks]
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
    notes = [
        f"top-1: test accuracy, mean ± half the range over {n} seed(s); * = the best on that task, or its "
        "interval overlaps the best one's (this run does not tell them apart)."
        if n > 1
        else "top-1: test accuracy of one seed (no spread: run --seeds 2 or more); * = the best on that task.",
        f"Costs (params to peak MiB) on {ct.name} at {ct.image_size}x{ct.image_size}; {sizes}.",
    ]
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
    """Accuracy per task, one panel per task: mean with an error bar over the seeds (min..max),
    each seed as a dot, local mechanisms in one colour and global ones in another, chance dashed.
    Drawn on a ``matplotlib.figure.Figure`` (no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
            lo, hi = 100 * (s.mean - min(s.accs)), 100 * (max(s.accs) - s.mean)
            ax.errorbar(
                [i],
                [100 * s.mean],
                yerr=[[lo], [hi]],
                fmt="o",
                color=col,
                capsize=4,
                ms=6,
                mfc="white" if r.sees_position == "no" else col,
            )
            ax.scatter([i] * len(s.accs), [100 * a for a in s.accs], s=9, color=col, alpha=0.6, zorder=3)
        if task.chance:
            ax.axhline(100 * task.chance, ls="--", color="gray", lw=1)  # out of view when every run is far above
        lows = [100 * min(r.tasks[task.name].accs) for r in report.rows if r.tasks[task.name].accs]
        if lows:
            ax.set_ylim(max(0.0, min(lows) - 3), 101)
        ax.set_xticks(range(len(names)))
        ax.set_xlim(-0.6, len(names) - 0.4)  # the first and last mechanisms' markers whole, not cut at the frame
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{task.name} ({task.image_size}x{task.image_size}, {task.epochs} epochs)", fontsize=10)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, axis="y", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=c, label=f"{k} reach") for k, c in colors.items()]
    handles.append(Line2D([], [], marker="o", ls="", color="gray", mfc="white", label="sees no position"))
    axes[-1].legend(handles=handles, fontsize=7, loc="center right")
    n = len(report.config.get("seeds", [])) or 1
    fig.suptitle(f"{report.config.get('model', '')}: mean and range over {n} seed(s)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return path
