"""``visattn compare``: the same model trained per mechanism, data set and seed, for every task.

One core (:mod:`visattn.compare.core`: run folders, seeds, failures kept as rows, mean ±
spread and the ``*`` marks, costs; :mod:`visattn.compare.report`: table, JSON, plot) and one
small plug-in per task (:class:`TaskPlugin` in :mod:`visattn.compare.plugin`, registered with
:func:`register_task`):

* ``classify`` (:mod:`visattn.compare.classify`, the main job): ``resnet_tiny`` on digits and
  a long-range task, test top-1; writes ``compare.json``, ``compare.png`` and ``runs/`` at the
  top of the output folder.
* ``segment`` (:mod:`visattn.compare.segment`): ``fpn_resnet_tiny`` on digit scenes, test mIoU
  and pixel accuracy; writes into ``OUT/segment/``.
* ``generate`` (:mod:`visattn.compare.generate`): a SAGAN per mechanism on mirrored digit pairs,
  FID and KID on one shared fallback feature network; writes into ``OUT/generate/``.

``compare(mechanisms, task="segment", ...)`` runs any of them; docs/architecture.md "Add a
task" shows how to add one.
"""

from visattn.compare.classify import DEFAULTS, SHALLOW_TINY, TASKS, ClassifyTask
from visattn.compare.core import (
    REACH_OVERRIDES,
    RUN_MARKER,
    CompareReport,
    MechanismRow,
    RunResult,
    Score,
    TaskStats,
    compare,
    cost_task,
    failure_text,
    reach,
    sees_position,
    summarize,
    task_folder,
)
from visattn.compare.plugin import (
    CORE_DEFAULTS,
    COST_KEYS,
    DEFAULT_TASK,
    Metric,
    Task,
    TaskPlugin,
    get_task,
    list_tasks,
    register_task,
)
from visattn.compare.report import format_table, write_json, write_plot
from visattn.compare.segment import SEG_TASKS, SegmentTask  # each task module registers its plug-in on import

__all__ = [
    "COST_KEYS",
    "CORE_DEFAULTS",
    "DEFAULT_TASK",
    "DEFAULTS",
    "REACH_OVERRIDES",
    "RUN_MARKER",
    "SEG_TASKS",
    "GEN_TASKS",
    "DET_TASKS",
    "DetectTask",
    "GenerateTask",
    "POINT_TASKS",
    "PointsTask",
    "SHALLOW_TINY",
    "TASKS",
    "ClassifyTask",
    "CompareReport",
    "MechanismRow",
    "Metric",
    "RunResult",
    "Score",
    "SegmentTask",
    "Task",
    "TaskPlugin",
    "TaskStats",
    "compare",
    "cost_task",
    "failure_text",
    "format_table",
    "get_task",
    "list_tasks",
    "reach",
    "register_task",
    "sees_position",
    "summarize",
    "task_folder",
    "write_json",
    "write_plot",
]

# After segment: the plug-ins register in this order (compare's --task choices).
from visattn.compare.detect import DET_TASKS, DetectTask
from visattn.compare.generate import GEN_TASKS, GenerateTask
from visattn.compare.points import POINT_TASKS, PointsTask
