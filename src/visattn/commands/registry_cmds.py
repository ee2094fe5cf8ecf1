"""``visattn list`` and ``visattn info NAME`` (or ``info --model NAME`` / ``info --attention MECH``)."""

from __future__ import annotations

import json

import visattn
from visattn.registry import attention_class, list_attention, list_models


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list registered mechanisms and models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_list)

    p = sub.add_parser("info", help="capabilities of a mechanism, or a model's summary")
    p.add_argument("name", nargs="?", default=None, help="mechanism or model name (see `visattn list`)")
    p.add_argument("--model", default=None, metavar="NAME", help="a model's summary (as `train --model`)")
    p.add_argument(
        "--attention", default=None, metavar="MECH", help="a mechanism's capabilities (as `train --attention`)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)


def run_list(args) -> int:
    mechs, models = list_attention(), list_models()
    if args.json:
        print(json.dumps({"attention": mechs, "models": models}, indent=2))
        return 0
    print("Mechanisms:")
    for n in mechs:
        i = visattn.attention_info(n)
        print(f"  {n:<12} {i.title} [{i.cost}, {i.receptive_field}]")
    print("Models:")
    for n in models:
        print(f"  {n}")
    return 0


def _info_name(args) -> tuple[str, str | None]:
    """(name, "model" | "attention" | None when either may be meant) from the positional name and the options."""
    model, attention = getattr(args, "model", None), getattr(args, "attention", None)  # a Namespace(name=...) too
    opts = [(kind, v) for kind, v in (("model", model), ("attention", attention)) if v is not None]
    if len(opts) == 2:
        raise ValueError(f"give --model or --attention, not both (got --model {model!r} --attention {attention!r})")
    if not opts:
        if args.name is None:
            raise ValueError(
                "no name given: `visattn info NAME`, `--model NAME` or `--attention MECH` (see `visattn list`)"
            )
        return args.name, None
    kind, name = opts[0]
    if args.name is not None and args.name != name:
        raise ValueError(f"two different names given: {args.name!r} (positional) and --{kind} {name!r}; give one")
    if kind == "model" and name not in list_models():
        hint = f"; {name!r} is a mechanism: use --attention {name}" if name in list_attention() else ""
        raise ValueError(f"--model {name!r} is not a registered model {list_models()}{hint}")
    if kind == "attention" and name not in list_attention():
        hint = f"; {name!r} is a model: use --model {name}" if name in list_models() else ""
        raise ValueError(f"--attention {name!r} is not a registered mechanism {list_attention()}{hint}")
    return name, kind


def run_info(args) -> int:
    name, kind = _info_name(args)
    if kind != "model" and name in list_attention():
        info = visattn.attention_info(name).as_dict()
        info["class"] = f"{attention_class(name).__module__}.{attention_class(name).__qualname__}"
        if args.json:
            print(json.dumps(info, indent=2, default=str))
        else:
            for k, v in info.items():
                print(f"{k:>18}: {v}")
        return 0
    if name in list_models():
        from visattn.commands import model_info

        return model_info.run(name, as_json=args.json)
    raise ValueError(f"{name!r} is neither a mechanism {list_attention()} nor a model {list_models()}")
