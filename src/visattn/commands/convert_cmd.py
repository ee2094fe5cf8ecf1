"""``visattn convert SOURCE OUT``: published weights -> a visattn safetensors file; ``--list``: the tables."""

from __future__ import annotations

import json

from visattn.commands.train_cmd import _json_dict

__all__ = ["add_parser", "run", "source_rows"]


def add_parser(sub) -> None:
    from visattn.models.convert import FORMATS

    p = sub.add_parser(
        "convert",
        help="convert published weights (timm, torchvision, the authors') into a visattn safetensors file",
        description="Read SOURCE (a .safetensors / .pth / .pth.tar / .bin file, an http(s) URL, hf-hub:ORG/REPO[:FILE] "
        "or a name from --list), detect its layout, convert it to visattn's keys, load it strictly into the model it "
        "describes and write OUT (safetensors) with the model, its options and the preprocessing in the metadata. "
        "Pickled files are read with torch.load(weights_only=True) and an allow-list. See docs/weights.md.",
    )
    p.add_argument("source", nargs="?", default=None, metavar="SOURCE", help="weights file, URL, hf-hub:... or name")
    p.add_argument("out", nargs="?", default=None, metavar="OUT", help="output .safetensors file")
    p.add_argument(
        "--model", default=None, metavar="NAME", help="visattn model to load into (default: what the keys say)"
    )
    p.add_argument("--model-kwargs", type=_json_dict, default=None, metavar="JSON", help="model options, a JSON object")
    p.add_argument(
        "--source-format",
        default=None,
        choices=sorted(FORMATS),
        help="the layout of SOURCE when its detection from the keys is wrong",
    )
    p.add_argument(
        "--list", action="store_true", help="list the published weights visattn knows and the layouts it reads"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-progress", action="store_true", help="no download progress bar")
    p.set_defaults(func=run)


def source_rows(model: str | None = None) -> list[dict]:
    """The source table (or its entries for ``model``) as JSON-ready rows."""
    from visattn.models.convert import SOURCES, sources_for

    rows = sources_for(model) if model is not None else list(SOURCES.values())
    return [
        {
            "name": s.name,
            "model": s.model,
            "model_kwargs": s.model_kwargs,
            "part": s.part,
            "format": s.format,
            "location": s.location,
            "num_classes": s.num_classes,
            "params": s.params,
            "preprocess": s.preprocess.as_dict(),
            "license": s.license,
            "verified": s.verified,
            "backbone_of": list(s.backbone_of),
            "notes": s.notes,
        }
        for s in rows
    ]


def _run_list(as_json: bool) -> int:
    from visattn.models.convert import FORMATS

    rows = source_rows()
    if as_json:
        formats = [{"name": f.name, "title": f.title, "dropped": f.dropped} for f in FORMATS.values()]
        print(json.dumps({"sources": rows, "formats": formats}, indent=2))
        return 0
    print("Published weights (pretrained=NAME or its location):")
    for r in rows:
        part = " (backbone)" if r["part"] == "backbone" else ""
        print(f"  {r['name']:<52} -> {r['model']}{part}, {r['params'] / 1e6:.2f}M, {r['license']}")
    print("Layouts read (detected from the keys, or --source-format):")
    for f in FORMATS.values():
        print(f"  {f.name:<22} {f.title}")
    return 0


def run(args) -> int:
    if args.list:
        return _run_list(args.json)
    if args.source is None or args.out is None:
        raise ValueError("give SOURCE and OUT (visattn convert SOURCE OUT), or --list")
    from visattn.models.pretrained import convert_checkpoint

    res = convert_checkpoint(
        args.source,
        args.out,
        model=args.model,
        model_kwargs=args.model_kwargs,
        source_format=args.source_format,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    opts = ", ".join(f"{k}={v!r}" for k, v in res["model_kwargs"].items())
    cfg = res["pretrained_cfg"]
    expected = f" (table: {res['expected_params']:,})" if res["expected_params"] is not None else ""
    print(f"{res['source']} ({res['format']}{', ' + res['wrapper'] if res['wrapper'] else ''})")
    print(f"  model: {res['model']}({opts}), {res['num_classes']} classes, {res['params']:,} parameters{expected}")
    print(
        f"  preprocessing: mean {cfg['mean']}, std {cfg['std']}, input {cfg['input_size'][-1]}, crop {cfg['crop_pct']:.3f}, "
        f"{cfg['interpolation']}"
        + (" (assumed from the layout)" if cfg.get("assumed") else "")
        + f"; licence {cfg['license']}"
    )
    print(res["out"])
    return 0
