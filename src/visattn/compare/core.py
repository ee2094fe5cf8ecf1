"""The one ``visattn compare``: the same model trained per mechanism, data set and seed, for any task.

A task (classification, segmentation, ...) is a :class:`~visattn.compare.plugin.TaskPlugin`
registered with :func:`~visattn.compare.plugin.register_task`; it says what only it knows: its
data sets (``Task``), how to load them, the training call, the metrics it reports (``Metric``,
the first one primary), its defaults, and the input and loss of its cost measurement (or a
stated reason to leave a cost out). Everything else is written once, here and in
:mod:`visattn.compare.report`, for every task:

* the run folders: ``runs/<data set>/<mechanism>/seed<k>/`` inside the task's folder (the main
  task's is the output folder itself, every other task's ``OUT/<task>/``, so tasks never
  overwrite each other's results); compare only ever removes run folders it created itself
  (they hold a :data:`RUN_MARKER` file), any other non-empty folder in its way stops it before
  anything is trained, and a lock (``.lock``) keeps a second compare out of a folder in use;
* the loop over data sets, seeds and mechanisms, a failed run kept as a row with its error;
* per (mechanism, data set): every metric's mean ± half the range over the seeds, the best
  mechanism and those whose interval overlaps its own marked ``*``;
* per mechanism, once, on the first seed's model of the data set with the largest images
  (:func:`cost_task`): ``params``, ``flops`` (forward FLOPs of one input,
  ``torch.utils.flop_counter``), ``latency_ms`` (median eval-mode forward at ``latency_batch``),
  ``peak_mib`` (peak memory of one training step at the training batch size), and the training
  throughput (``train_img_s``, from the engine's history);
* the table, strict ``compare.json`` and ``compare.png`` (:mod:`visattn.compare.report`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from visattn.compare.plugin import CORE_DEFAULTS, DEFAULT_TASK, Task, TaskPlugin, get_task

__all__ = [
    "RUN_MARKER",
    "RunResult",
    "Score",
    "TaskStats",
    "MechanismRow",
    "CompareReport",
    "compare",
    "summarize",
    "sees_position",
    "reach",
    "REACH_OVERRIDES",
    "cost_task",
    "task_folder",
    "failure_text",
]

#: File compare writes into every run folder it creates; only folders holding it are ever removed.
RUN_MARKER = ".visattn-compare-run"


def task_folder(output: str | os.PathLike, task: str = DEFAULT_TASK) -> Path:
    """Where ``task`` writes ``compare.json``, ``compare.png`` and ``runs/`` inside ``output``."""
    folder = get_task(task).out_folder
    return Path(output) / folder if folder else Path(output)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


class RunResult:
    """One training run: a mechanism on a data set with one seed; ``scores``: metric key -> value.

    ``RunResult("digits", "conv", 0, top1=0.9)``: metric values are given by their keys.
    """

    def __init__(
        self,
        task: str,
        mechanism: str,
        seed: int,
        *,
        train_img_s: float | None = None,
        time_s: float = 0.0,
        history: list[dict[str, Any]] | None = None,
        error: str = "",
        **scores: float | None,
    ):
        self.task, self.mechanism, self.seed = task, mechanism, seed
        self.scores: dict[str, float | None] = dict(scores)
        self.train_img_s, self.time_s = train_img_s, time_s
        self.history: list[dict[str, Any]] = list(history or [])
        self.error = error

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "mechanism": self.mechanism,
            "seed": self.seed,
            **self.scores,
            "train_img_s": self.train_img_s,
            "time_s": self.time_s,
            "history": self.history,
            "error": self.error,
        }

    def __repr__(self) -> str:
        return f"RunResult({self.task!r}, {self.mechanism!r}, {self.seed}, scores={self.scores}, error={self.error!r})"


@dataclass
class Score:
    """A secondary metric over seeds: the values, their mean and half their range."""

    values: list[float] = field(default_factory=list)
    mean: float | None = None
    spread: float | None = None


@dataclass
class TaskStats:
    """One mechanism on one data set: the primary metric over seeds and the costs measured once.

    ``values`` (the primary metric per seed), ``mean`` and ``spread`` (half the range over
    seeds) are raw values (fractions for percentages); ``near_best``: the interval ``mean ±
    spread`` overlaps the best mechanism's on this data set. ``others``: the secondary metrics.
    """

    values: list[float] = field(default_factory=list)
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
    others: dict[str, Score] = field(default_factory=dict)

    def as_dict(self, values_key: str) -> dict[str, Any]:
        """The JSON form: ``values`` under ``values_key``, ``others`` only when there are any."""
        d = asdict(self)
        if not self.others:
            del d["others"]
        return {values_key if k == "values" else k: v for k, v in d.items()}


@dataclass
class MechanismRow:
    """A mechanism across data sets (the table's row)."""

    mechanism: str
    sees_position: str
    receptive_field: str
    tasks: dict[str, TaskStats] = field(default_factory=dict)
    time_s: float = 0.0


@dataclass
class CompareReport:
    """Everything a comparison produced: per-run results, per-mechanism rows, the options.
    ``plugin``: the task (None: :data:`DEFAULT_TASK`)."""

    rows: list[MechanismRow]
    runs: list[RunResult]
    tasks: list[Task]
    config: dict[str, Any]
    total_time_s: float
    plugin: TaskPlugin | None = None

    @property
    def task(self) -> TaskPlugin:
        return self.plugin if self.plugin is not None else get_task(DEFAULT_TASK)

    def as_dict(self) -> dict[str, Any]:
        m = self.task.metrics[0]
        key = m.values_key or f"{m.key}s"
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["tasks"] = {name: st.as_dict(key) for name, st in r.tasks.items()}
            rows.append(d)
        return {
            "config": self.config,
            "total_time_s": self.total_time_s,
            "tasks": [asdict(t) for t in self.tasks],
            "rows": rows,
            "runs": [r.as_dict() for r in self.runs],
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
    plugin: TaskPlugin,
    model: torch.nn.Module,
    data: Task,
    info: dict[str, Any],
    batch_size: int,
    latency_batch: int,
    device: torch.device,
) -> dict[str, Any]:
    """Parameters, FLOPs of one input, eval latency at ``latency_batch`` and the peak memory of one
    training step at ``batch_size`` (the plug-in's input and loss), each unless the plug-in skips it."""
    from visattn.bench.measure import median_time, peak_memory_bytes
    from visattn.flops import count_flops

    skip = plugin.skip_costs
    model.eval()
    out: dict[str, Any] = {}
    if "params" not in skip:
        out["params"] = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        if "flops" not in skip:
            out["flops"] = count_flops(model, plugin.cost_input(data, 1, device))
        if "latency_ms" not in skip:
            xb = plugin.cost_input(data, latency_batch, device)
            out["latency_ms"] = 1e3 * median_time(
                lambda: model(xb), device, warmup=2, min_repeats=5, max_repeats=30, min_time=0.2
            )
    if "peak_mib" not in skip:
        model.train()
        loss = plugin.cost_step(model, data, info, batch_size, device)
        out["peak_mib"] = peak_memory_bytes(lambda: loss().backward(), device) / 2**20
        model.zero_grad(set_to_none=True)
    model.eval()
    return out


def _check_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def _resolve_tasks(
    plugin: TaskPlugin,
    tasks: Sequence[str] | None,
    data: str | None,
    image_size: int | None,
    epochs: int | None,
    quick: bool,
) -> list[Task]:
    if data is not None:
        if tasks is not None:
            raise ValueError(f"give either tasks {list(tasks)} or a data spec {data!r}, not both")
        size, e = image_size, epochs
        if size is None or e is None:
            base = plugin.custom_data
            if base is None:
                raise ValueError(f"a custom data spec ({data!r}) needs image_size and epochs")
            size = base.image_size if size is None else size
            e = base.epochs if e is None else e
        picked = [Task(data.partition(":")[0], data, size, e, e, 0.0, f"data {data}")]
    else:
        names = list(tasks) if tasks is not None else list(plugin.default("tasks"))
        unknown = [n for n in names if n not in plugin.datasets]
        if unknown or not names:
            raise ValueError(f"unknown task(s) {unknown or names}; expected names from {list(plugin.datasets)}")
        if len(set(names)) != len(names):
            raise ValueError(f"tasks must not repeat, got {names}")
        picked = [plugin.datasets[n] for n in names]
    out = []
    for t in picked:
        e = epochs if epochs is not None else (t.quick_epochs if quick else t.epochs)
        out.append(replace(t, image_size=image_size if image_size is not None else t.image_size, epochs=e))
    for t in out:
        _check_int("epochs", t.epochs)
        _check_int("image_size", t.image_size)
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


def _run_dir(folder: Path, task: str, mechanism: str, seed: int) -> Path:
    return folder / "runs" / task / mechanism / f"seed{seed}"


def _check_output(out: Path, folder: Path, run_dirs: list[Path]) -> None:
    """Refuse, before any training, an output that is a file or run folders compare did not create.
    ``out``: the output folder; ``folder``: the task's folder in it."""
    if out.exists() and not out.is_dir():
        sub = "" if folder == out else f"{folder.name}/"
        raise ValueError(
            f"output {str(out)!r} is an existing file; expected a folder (it will hold {sub}compare.json, "
            f"{sub}compare.png and {sub}runs/)"
        )
    for name in ("compare.json", "compare.png"):
        if (folder / name).is_dir():
            raise ValueError(f"{str(folder / name)!r} is a folder; compare writes a file there: choose another output")
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
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {str(folder)!r}: {e.strerror or e}") from e


def _output_lock(folder: Path | None):
    """An exclusive lock on the task's folder (``.lock``) for the whole comparison: a second
    compare on the same output refuses at once instead of removing the first one's runs."""
    from visattn.train.checkpoint import RunLock

    return RunLock(folder) if folder is not None else contextlib.nullcontext()


def _claim_run_dir(d: Path) -> None:
    """Empty a run folder compare made earlier (it holds the marker), or create it; mark it as ours."""
    if (d / RUN_MARKER).is_file():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / RUN_MARKER).write_text("written by visattn compare; compare may delete this folder when it runs again\n")


def compare(
    mechanisms: Iterable[str] | None = None,
    *,
    task: str = DEFAULT_TASK,
    tasks: Sequence[str] | None = None,
    model: str | None = None,
    model_kwargs: dict | None = None,
    pos_embed: bool = False,
    data: str | None = None,
    image_size: int | None = None,
    epochs: int | None = None,
    seeds: int | None = None,
    seed: int = CORE_DEFAULTS["seed"],
    batch_size: int | None = None,
    lr: float | None = None,
    latency_batch: int = CORE_DEFAULTS["latency_batch"],
    attn_kwargs: dict[str, dict] | None = None,
    amp: str = "none",
    device: str = "auto",
    output: str | os.PathLike | None = "compare-out",
    progress: bool = True,
    threads: int | None = CORE_DEFAULTS["threads"],
    precise_bn: int = CORE_DEFAULTS["precise_bn"],
    quick: bool = False,
) -> CompareReport:
    """Train ``model`` per mechanism, data set and seed for ``task``, and measure it (see module docstring).

    Args:
        mechanisms: registered names (default: the plug-in's ``default_mechanisms()``, all for images).
        task: a registered task plug-in (:func:`list_tasks`): ``classify`` (the main job),
            ``segment``, ...; None options below take its defaults.
        tasks: names of the task's data sets (default: its ``defaults["tasks"]``; classify:
            digits and longrange).
        model: registered model; ``model_kwargs`` its options (default: the task's
            ``model_kwargs(model)``, for classify's ``resnet_tiny`` its first two stages).
        pos_embed: a depthwise-conv position encoding before every mechanism
            (``model_kwargs["pos_embed"]``): gives content-only mechanisms position.
        data, image_size, epochs: a custom data spec instead of the data sets (needs
            ``image_size`` and ``epochs`` unless the task has ``custom_data`` defaults);
            otherwise ``image_size`` / ``epochs`` override every data set's.
        seeds: runs per (data set, mechanism), with seeds ``seed, seed + 1, ...`` (each seed also
            redraws the data). Default: the task's (classify 2), 1 with ``quick``.
        quick: fewer epochs per data set (``Task.quick_epochs``) and one seed unless ``seeds`` is
            given: a smoke run.
        attn_kwargs: mechanism name -> constructor arguments.
        precise_bn: BatchNorm statistics recomputed over that many training batches before
            each evaluation (:meth:`visattn.train.Trainer.recompute_bn_stats`).
        threads: ``torch.set_num_threads`` for the whole comparison (default 1: these models are
            small, and on a shared 2-core machine two threads made training 3-12x slower and
            its timings erratic; 0 or None: torch's choice).
        output: the output folder (None: nothing written). The task writes ``compare.json``,
            ``compare.png`` and ``runs/`` into :func:`task_folder` (classify: ``output`` itself;
            every other task ``output/<task>/``).

    Returns:
        a :class:`CompareReport`; ``format_table(report)`` prints it.
    """
    import visattn
    from visattn.registry import model_entry

    plugin = get_task(task)
    model = model if model is not None else plugin.default("model")
    batch_size = batch_size if batch_size is not None else plugin.default("batch_size")
    lr = lr if lr is not None else plugin.default("lr")
    model_entry(model)  # unknown model: fail now, with the list of known ones
    plugin.check_model(model)
    _check_names("mechanisms", mechanisms)
    _check_names("tasks", tasks)
    names = list(mechanisms) if mechanisms is not None else plugin.default_mechanisms()
    if not names:
        raise ValueError("no mechanisms to compare")
    known = visattn.list_attention()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown mechanism(s) {unknown}; expected names from {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"mechanisms must not repeat, got {names}")
    if seeds is None:
        seeds = 1 if quick else plugin.default("seeds")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1, got {seeds!r}")
    if latency_batch < 1:
        raise ValueError(f"latency_batch must be >= 1, got {latency_batch}")
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's choice), got {threads}")
    task_list = _resolve_tasks(plugin, tasks, data, image_size, epochs, quick)
    _check_device_amp(device, amp)
    model_kwargs = dict(plugin.model_kwargs(model) if model_kwargs is None else model_kwargs)
    if pos_embed:
        model_kwargs["pos_embed"] = True
    pos_embed = bool(model_kwargs.get("pos_embed"))  # given in model_kwargs too: the position column says so
    seed_list = [seed + i for i in range(seeds)]
    folder = None
    if output is not None:
        folder = task_folder(output, task)
        runs = [_run_dir(folder, t.name, n, s) for t in task_list for n in names for s in seed_list]
        _check_output(Path(output), folder, runs)
    cfg = {
        "task": plugin.name,
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
    if plugin.skip_costs:
        cfg["costs_skipped"] = dict(plugin.skip_costs)
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with _output_lock(folder):
            return _compare(plugin, names, task_list, seed_list, cfg, device, folder, progress)
    finally:
        torch.set_num_threads(prev_threads)


def _compare(
    plugin: TaskPlugin,
    names: list[str],
    tasks: list[Task],
    seeds: list[int],
    cfg: dict,
    device: str,
    out: Path | None,
    progress: bool,
) -> CompareReport:
    from tqdm.auto import tqdm

    from visattn.train.distributed import _pick_device

    dev = _pick_device(device, 0)
    t_start = time.perf_counter()
    runs: list[RunResult] = []
    costs: dict[tuple[str, str], dict[str, Any]] = {}
    data_info: dict[str, dict] = {}
    plan = [(t, s) for t in tasks for s in seeds]
    measured = cost_task(tasks).name
    # every data set (first seed) before any training: a bad spec or size fails now, not after the runs
    first = {t.name: plugin.load_data(t, seeds[0]) for t in tasks}
    with tqdm(
        total=len(plan) * len(names), desc="compare", unit="run", disable=not progress, dynamic_ncols=True, position=0
    ) as bar:
        for task, seed in plan:
            bundle = first.pop(task.name) if task.name in first else plugin.load_data(task, seed)
            info = data_info.setdefault(task.name, plugin.data_info(bundle))
            for name in names:
                bar.set_postfix_str(f"{task.name} · {name} · seed {seed}")
                t0 = time.perf_counter()
                run = RunResult(task.name, name, seed)
                run.scores = {m.key: None for m in plugin.metrics}  # a failed run keeps every key, null
                try:
                    folder = _run_dir(out, task.name, name, seed) if out is not None else None
                    if folder is not None:
                        _claim_run_dir(folder)
                    res = plugin.train(
                        {
                            "model": cfg["model"],
                            "attention": name,
                            "attn_kwargs": cfg["attn_kwargs"].get(name),
                            "model_kwargs": cfg["model_kwargs"] or None,
                            "data": task.data,
                            "image_size": getattr(bundle, "image_size", task.image_size),
                            "epochs": task.epochs,
                            "batch_size": cfg["batch_size"],
                            "lr": cfg["lr"],
                            "seed": seed,
                            "amp": cfg["amp"],
                            "device": device,
                            "progress": progress,
                            "verbose": False,
                            "plot": False,
                            "precise_bn": cfg["precise_bn"],
                            "output": str(folder) if folder is not None else None,
                            "checkpoints": False,
                        },
                        bundle,
                    )
                    run.history = res.history
                    run.scores = plugin.scores(res)
                    run.train_img_s = res.history[-1].get("images_per_s") if res.history else None
                    if task.name == measured and (task.name, name) not in costs:
                        bar.set_postfix_str(f"{task.name} · {name} · measuring")
                        costs[(task.name, name)] = _measure(
                            plugin, res.model, task, info, cfg["batch_size"], cfg["latency_batch"], dev
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
    report = CompareReport(
        summarize(runs, costs, names, tasks, cfg["pos_embed"], plugin), runs, tasks, config, total, plugin
    )
    if out is not None:
        from visattn.compare.report import write_json, write_plot

        write_json(report, out / "compare.json")
        write_plot(report, out / "compare.png")
    return report


def _over_seeds(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and half the range (None, None for no values)."""
    if not values:
        return None, None
    return sum(values) / len(values), (max(values) - min(values)) / 2


def summarize(
    runs: list[RunResult],
    costs: dict[tuple[str, str], dict[str, Any]],
    names: list[str],
    tasks: list[Task],
    pos_embed: bool = False,
    plugin: TaskPlugin | None = None,
) -> list[MechanismRow]:
    """Rows per mechanism: each metric's mean ± half-range over seeds per data set, costs, best
    and near-best flags on the primary metric (``plugin``: the task, None: :data:`DEFAULT_TASK`)."""
    plugin = plugin if plugin is not None else get_task(DEFAULT_TASK)
    primary, *secondary = plugin.metrics
    rows = []
    for name in names:
        row = MechanismRow(name, sees_position(name, pos_embed), reach(name))
        for task in tasks:
            mine = [r for r in runs if r.mechanism == name and r.task == task.name]
            ok = [r for r in mine if not r.error]
            st = TaskStats()
            st.values = [v for r in ok if (v := r.scores.get(primary.key)) is not None]
            errors = [r.error for r in mine if r.error]
            if errors:
                st.error = errors[0]
            else:
                st.mean, st.spread = _over_seeds(st.values)
            for m in secondary:
                vals = [v for r in ok if (v := r.scores.get(m.key)) is not None]
                mean, spread = (None, None) if errors else _over_seeds(vals)
                st.others[m.key] = Score(vals, mean, spread)
            speeds = [r.train_img_s for r in mine if r.train_img_s]
            st.train_img_s = sum(speeds) / len(speeds) if speeds else None
            c = costs.get((task.name, name), {})
            st.params, st.flops = c.get("params"), c.get("flops")
            st.latency_ms, st.peak_mib = c.get("latency_ms"), c.get("peak_mib")
            row.tasks[task.name] = st
            row.time_s += sum(r.time_s for r in mine)
        rows.append(row)
    sign = 1.0 if primary.higher_is_better else -1.0
    for task in tasks:
        scored = [  # (stats, signed mean, spread) of the runs that finished: higher is better after the sign
            (s, sign * s.mean, s.spread or 0.0) for s in (r.tasks[task.name] for r in rows) if s.mean is not None
        ]
        if not scored:
            continue
        top, top_mean, top_spread = max(scored, key=lambda t: t[1])
        for s, mean, spread in scored:
            s.best = s is top
            s.near_best = mean + spread >= top_mean - top_spread
    return rows


def failure_text(e: BaseException) -> str:
    """The error column of a failed run: the exception's first line (the traceback too on stderr
    when ``VISATTN_DEBUG`` is set)."""
    if os.environ.get("VISATTN_DEBUG"):
        traceback.print_exception(e)
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def cost_task(tasks: Sequence[Task]) -> Task:
    """The data set whose costs are measured and fill the table's cost columns: the one with the largest images."""
    return max(tasks, key=lambda t: t.image_size)
