"""``visattn list`` and ``visattn info NAME``."""

from __future__ import annotations

import json

import visattn
from visattn.registry import attention_class, list_attention, list_models


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list registered mechanisms and models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_list)

    p = sub.add_parser("info", help="capabilities of a mechanism, or a model's summary")
    p.add_argument("name", help="mechanism or model name (see `visattn list`)")
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


def run_info(args) -> int:
    name = args.name
    if name in list_attention():
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
