"""``visattn predict --task partseg``: a point cloud coloured by its predicted parts (3-D scatter).

The model, its mechanism and the part names come from the run's ``config.json`` beside the
weights (``visattn train --task partseg``). The cloud is ``parts:K`` (test object K of the built-in
part set, regenerated with the run's seed, size and points) or ``FILE.h5:K`` (cloud K of an HDF5
file in the ShapeNetPart layout: ``data``, ``label``, and ``pid`` when present for the truth).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from visattn._io import atomic_path

__all__ = ["load_part_segmenter", "read_part_cloud", "predict_parts", "draw_parts"]


def _categories(classes: list[str]) -> dict[str, list[int]]:
    """Category -> its global part indices, from the run's part names ``category/part``."""
    cats: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        cats.setdefault(name.partition("/")[0], []).append(i)
    return cats


def load_part_segmenter(
    model: str, weights: str | os.PathLike, *, attention: str | None = None, attn_kwargs: dict | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A part-segmentation model in eval mode with ``weights`` loaded, and its run's facts
    (``classes``, ``categories``, ``data``, ``seed``, ``num_points``, ``data_size``)."""
    from visattn.predict import _run_info
    from visattn.registry import create_model, model_entry
    from visattn.train.checkpoint import load_weights

    if model_entry(model).task != "partseg":
        raise ValueError(
            f"--task partseg needs a part-segmentation model; {model!r} is a {model_entry(model).task} model"
        )
    wpath = Path(weights)
    if not wpath.exists():
        raise FileNotFoundError(
            f"weights {str(wpath)!r} do not exist (expected the run folder of `visattn train --task partseg`)"
        )
    run = _run_info(wpath)
    if run is None or not isinstance(run.get("classes"), list):
        raise ValueError(
            f"no config.json with the part names beside {str(wpath)!r} (a `visattn train --task partseg` run)"
        )
    cfg = run["config"]
    if cfg.get("model") != model:
        raise ValueError(
            f"the weights were trained as model {cfg.get('model')!r} (see their config.json), not {model!r}"
        )
    classes = list(run["classes"])
    cats = _categories(classes)
    net = create_model(
        model,
        num_classes=len(classes),
        attention=attention if attention is not None else cfg.get("attention"),
        attn_kwargs=attn_kwargs if attn_kwargs is not None else cfg.get("attn_kwargs"),
        **{"num_categories": len(cats), **(cfg.get("model_kwargs") or {})},
    )
    load_weights(net, wpath)
    net.eval()
    info = {
        "classes": classes,
        "categories": cats,
        "data": cfg.get("data"),
        "seed": int(cfg.get("seed") or 0),
        "num_points": run.get("image_size"),
        "data_size": cfg.get("data_size"),
    }
    return net, info


def read_part_cloud(spec: str, info: dict[str, Any]) -> tuple[torch.Tensor, int, torch.Tensor | None, str]:
    """(points (N, 3), category, true parts (N,) or None, title) of ``parts:K`` or ``FILE.h5:K``."""
    from visattn.data.points import PointDataError, PointSet, _read_h5, check_clouds, load_point_data

    src, _, k_text = spec.rpartition(":")
    if not src or not k_text.isdigit():
        raise ValueError(f"the cloud must be parts:K or FILE.h5:K with K a cloud number, got {spec!r}")
    k = int(k_text)
    if src == "parts":
        if info.get("data") not in (None, "parts"):
            raise ValueError(f"the model was trained on {info['data']!r}, not on the built-in parts")
        b = load_point_data(
            "parts", info.get("num_points"), seed=info["seed"], task="partseg", size=info.get("data_size")
        )
        test = b.test
        assert isinstance(test, PointSet) and test.parts is not None
        if k >= len(test):
            raise ValueError(f"parts:{k}: the built-in test split holds clouds 0..{len(test) - 1}")
        return test.points[k], int(test.labels[k]), test.parts[k], f"built-in parts, test object {k}"
    names = ("data", "label", "pid")
    import h5py

    with h5py.File(src, "r") as f:
        have_pid = "pid" in f
    d = _read_h5(Path(src), names if have_pid else names[:2])
    if k >= len(d["data"]):
        raise PointDataError(f"{src}: cloud {k} asked for, the file holds clouds 0..{len(d['data']) - 1}")
    cats = list(info["categories"].values())
    sl = slice(k, k + 1)
    check_clouds(f"{src}", d["data"][sl], d["label"][sl], len(cats), d["pid"][sl] if have_pid else None, cats)
    n = info.get("num_points") or d["data"].shape[1]
    pts = torch.from_numpy(d["data"][k, :n])
    truth = torch.from_numpy(d["pid"][k, :n]) if have_pid else None
    return pts, int(d["label"][k]), truth, f"{Path(src).name}, cloud {k}"


def draw_parts(
    points: torch.Tensor, pred: torch.Tensor, classes: list[str], truth: torch.Tensor | None = None, title: str = ""
):
    """A matplotlib Figure: the cloud as a 3-D scatter coloured by predicted part (and by the truth beside it)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from visattn.predict import _colours

    colours = _colours(len(classes))
    p = points.numpy()
    panels = ([("ground truth", truth)] if truth is not None else []) + [("prediction", pred)]
    fig = Figure(figsize=(4.2 * len(panels) + 1.8, 4.4))
    for i, (name, lab) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d")
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=colours[lab.numpy()], s=4, depthshade=False)
        ax.set_title(name, fontsize=10)
        ax.set_box_aspect((1, 1, 1))
        ax.set_axis_off()
    present = sorted(set(pred.tolist()) | (set(truth.tolist()) if truth is not None else set()))
    fig.legend(
        handles=[Patch(color=colours[c], label=classes[c]) for c in present],
        loc="center right",
        fontsize=8,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.0, right=1 - 1.7 / fig.get_figwidth(), top=0.9, bottom=0.0, wspace=0.0)
    return fig


@torch.no_grad()
def predict_parts(
    model: str,
    weights: str | os.PathLike,
    cloud: str,
    out: str | os.PathLike,
    *,
    attention: str | None = None,
    attn_kwargs: dict | None = None,
) -> tuple[Path, torch.Tensor, list[str]]:
    """Predict the parts of ``cloud`` and write the 3-D scatter to ``out`` (PNG).

    Returns (path written, predicted part per point (N,), part names). A point's part is the
    arg-max over its category's parts (as the evaluation does)."""
    from visattn.train.points import restrict_to_category

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"the output {str(out)!r} must be a .png file (the figure is written as PNG)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {str(out.parent)!r} for {out.name} does not exist")
    net, info = load_part_segmenter(model, weights, attention=attention, attn_kwargs=attn_kwargs)
    pts, cat, truth, name = read_part_cloud(cloud, info)
    cats = list(info["categories"].values())
    dev = next(net.parameters()).device
    logits = net(pts.T[None].to(dev), torch.tensor([cat], device=dev))
    pred = restrict_to_category(logits, torch.tensor([cat], device=dev), cats)[0].cpu()
    cat_name = list(info["categories"])[cat]
    fig = draw_parts(pts, pred, info["classes"], truth, title=f"{model} on {name} ({cat_name})")
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return out, pred, info["classes"]
