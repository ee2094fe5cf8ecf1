"""The plug-in API of ``visattn compare``: a task is a :class:`TaskPlugin` with :class:`Metric` s and
:class:`Task` s (its data sets), registered with :func:`register_task`. docs/architecture.md "Add a task"."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

__all__ = [
    "Task",
    "Metric",
    "TaskPlugin",
    "register_task",
    "get_task",
    "list_tasks",
    "DEFAULT_TASK",
    "CORE_DEFAULTS",
    "COST_KEYS",
]

#: The task ``compare`` runs when none is named (the main job; its results sit at the top of the output).
DEFAULT_TASK = "classify"

#: Defaults every task shares (a plug-in's ``defaults`` may override any of them).
CORE_DEFAULTS: dict[str, Any] = {"seed": 0, "seeds": 1, "latency_batch": 1, "precise_bn": 5, "threads": 1}

#: The measured cost columns, as keys of :class:`~visattn.compare.core.TaskStats` (``TaskPlugin.skip_costs`` names them).
COST_KEYS = ("params", "flops", "latency_ms", "peak_mib")


@dataclass(frozen=True)
class Task:
    """One data set of a comparison (a column group of the table; ``runs/<name>/``).

    Attributes:
        name: short name (table column, ``runs/<name>/``).
        data: data spec the task plug-in loads.
        image_size: input side.
        epochs: training epochs of the default run.
        quick_epochs: epochs under ``--quick``.
        chance: the primary metric of guessing (the plot's dashed line; 0: none drawn).
        about: one line saying what the data set tests.
    """

    name: str
    data: str
    image_size: int
    epochs: int
    quick_epochs: int
    chance: float
    about: str


@dataclass(frozen=True)
class Metric:
    """A metric of a task: one table column per data set, one entry per run in ``compare.json``.

    Attributes:
        key: its name in each run of ``compare.json`` (``runs[i][key]``).
        name: column header (with ``unit``): ``"top-1"``, ``"mIoU"``.
        about: what it measures (the table's note, the plot's axis): ``"test accuracy"``.
        unit: shown after the name (``"%"``; ``""`` for none).
        source: the key of :attr:`visattn.train.TrainResult.final` it is read from (default: ``key``).
        scale: shown as ``scale * value`` (100: a fraction shown in percent).
        digits: decimals shown.
        higher_is_better: which end is best (the ``*`` marks and the best row).
        values_key: the JSON key of the per-seed values of the primary metric in each row
            (default: ``key + "s"``).
    """

    key: str
    name: str
    about: str
    unit: str = "%"
    source: str = ""
    scale: float = 100.0
    digits: int = 1
    higher_is_better: bool = True
    values_key: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} {self.unit}".strip()

    def show(self, v: float) -> str:
        return f"{self.scale * v:.{self.digits}f}"


class TaskPlugin:
    """One task of ``visattn compare``. Subclass it, set the class attributes, implement
    :meth:`load_data`, :meth:`train` and :meth:`cost_step` (or skip ``peak_mib``), and
    :func:`register_task` an instance. docs/architecture.md "Add a task" walks through it.

    Class attributes:
        name: ``--task NAME``; the results go to ``OUT/<folder>/`` (``folder`` defaults to ``name``;
            ``""``: the output folder itself, the main task's place).
        about: one line for ``--help``.
        metrics: what a run reports, the first one primary (plot, ``*`` marks).
        datasets: the built-in data sets by name (``--tasks`` picks among them).
        defaults: ``model``, ``tasks`` (data set names run by default), ``seeds``, ``batch_size``,
            ``lr``, and any of :data:`CORE_DEFAULTS` to override.
        custom_data: the image size and epochs a custom data spec (``--data``) takes when they are
            not given (None: both must be given).
        skip_costs: cost column (from :data:`COST_KEYS`) -> why it is not measured for this task.
    """

    name: ClassVar[str] = ""
    about: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()
    datasets: ClassVar[Mapping[str, Task]] = {}
    defaults: ClassVar[Mapping[str, Any]] = {}
    custom_data: ClassVar[Task | None] = None
    skip_costs: ClassVar[Mapping[str, str]] = {}
    folder: ClassVar[str | None] = None

    @property
    def out_folder(self) -> str:
        return self.name if self.folder is None else self.folder

    def default(self, key: str) -> Any:
        """The task's default for ``key`` (its ``defaults``, else :data:`CORE_DEFAULTS`)."""
        return self.defaults[key] if key in self.defaults else CORE_DEFAULTS[key]

    def model_kwargs(self, model: str) -> dict[str, Any]:
        """Model options used when none are given (e.g. a cut-down backbone)."""
        return {}

    def default_mechanisms(self) -> list[str]:
        """The mechanisms compared when none are named (default: every registered one)."""
        import visattn

        return visattn.list_attention()

    def check_model(self, model: str) -> None:
        """Raise ``ValueError`` before anything runs if ``model`` cannot do this task."""

    def load_data(self, data: Task, seed: int) -> Any:
        """The data bundle of ``data`` at ``data.image_size`` for ``seed`` (``.train``, ``.test``, ...)."""
        raise NotImplementedError

    def data_info(self, bundle: Any) -> dict[str, Any]:
        """What ``compare.json`` records about a loaded data set."""
        info: dict[str, Any] = {"train_size": len(bundle.train), "test_size": len(bundle.test)}
        for key in ("num_classes", "image_size"):
            if hasattr(bundle, key):
                info[key] = getattr(bundle, key)
        return info

    def train(self, config: dict[str, Any], bundle: Any):
        """Train one run on ``bundle`` and return its :class:`visattn.train.TrainResult`.
        ``config`` holds :class:`visattn.train.TrainConfig` fields (model, attention, data,
        image_size, epochs, seed, output, ``checkpoints=False``, ...)."""
        raise NotImplementedError

    def scores(self, result) -> dict[str, float | None]:
        """Each metric's value from a finished run (default: ``result.final[metric.source]``)."""
        return {m.key: result.final.get(m.source or m.key) for m in self.metrics}

    def cost_input(self, data: Task, batch: int, device: torch.device) -> Any:
        """The input of one eval forward for the FLOPs (``batch`` 1) and latency columns
        (default: random images (batch, 3, image_size, image_size))."""
        return torch.randn(batch, 3, data.image_size, data.image_size, device=device)

    def cost_step(
        self, model: torch.nn.Module, data: Task, info: dict[str, Any], batch: int, device: torch.device
    ) -> Callable[[], torch.Tensor]:
        """Random inputs and targets of one training batch, made now, and a function computing
        the training loss on them (the core runs it with ``backward()`` for ``peak_mib``).
        ``info``: :meth:`data_info` of the data set."""
        raise NotImplementedError


_PLUGINS: dict[str, TaskPlugin] = {}
_RESERVED = {"runs", "compare.json", "compare.png", ".lock"}


def register_task(plugin: TaskPlugin) -> TaskPlugin:
    """Add a task plug-in (an instance) by its ``name``; checks that it is complete."""
    cls = type(plugin)
    name = plugin.name
    problems = []
    if not name or not name.replace("_", "").isalnum():
        problems.append(f"name must be letters, digits and '_', got {name!r}")
    if name in _PLUGINS:
        problems.append(f"a task {name!r} is already registered")
    if plugin.out_folder in _RESERVED or "/" in plugin.out_folder:
        problems.append(f"folder {plugin.out_folder!r} is not a plain sub-folder name")
    taken = [p.name for p in _PLUGINS.values() if p.out_folder == plugin.out_folder]
    if taken:
        problems.append(f"folder {plugin.out_folder!r} is the folder of task {taken[0]!r}")
    if not plugin.metrics:
        problems.append("metrics is empty (the first one is the primary metric)")
    reserved_keys = {"task", "mechanism", "seed", "train_img_s", "time_s", "history", "error"}
    bad = [m.key for m in plugin.metrics if m.key in reserved_keys]
    if bad or len({m.key for m in plugin.metrics}) != len(plugin.metrics):
        problems.append(f"metric keys must be unique and not one of {sorted(reserved_keys)}, got {bad or 'repeats'}")
    missing = [k for k in ("model", "tasks", "batch_size", "lr") if k not in plugin.defaults]
    unknown = [k for k in plugin.defaults if k not in {"model", "tasks", "batch_size", "lr", *CORE_DEFAULTS}]
    if missing or unknown:
        problems.append(f"defaults lack {missing} / have unknown keys {unknown}")
    elif [t for t in plugin.defaults["tasks"] if t not in plugin.datasets] or not plugin.defaults["tasks"]:
        problems.append(
            f"defaults['tasks'] {plugin.defaults['tasks']!r} must name data sets of {list(plugin.datasets)}"
        )
    for meth in ("load_data", "train"):
        if getattr(cls, meth) is getattr(TaskPlugin, meth):
            problems.append(f"{meth}() is not implemented")
    if cls.cost_step is TaskPlugin.cost_step and "peak_mib" not in plugin.skip_costs:
        problems.append("cost_step() is not implemented (or say why in skip_costs['peak_mib'])")
    odd = [k for k in plugin.skip_costs if k not in COST_KEYS]
    if odd:
        problems.append(f"skip_costs keys must be from {COST_KEYS}, got {odd}")
    if problems:
        raise ValueError(f"task plug-in {cls.__name__}: " + "; ".join(problems))
    _PLUGINS[name] = plugin
    return plugin


def get_task(name: str) -> TaskPlugin:
    """The registered task plug-in ``name``."""
    if not isinstance(name, str) or name not in _PLUGINS:
        raise ValueError(f"unknown task {name!r}; expected one of {list_tasks()}")
    return _PLUGINS[name]


def list_tasks() -> list[str]:
    """Names of the registered task plug-ins, in registration order."""
    return list(_PLUGINS)
