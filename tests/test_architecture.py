"""The architecture rules of docs/architecture.md, enforced.

* ``test_package_imports_follow_the_layering``: every module under src/visattn imports only
  what its layer may (parsed with ``ast``, imports inside functions included);
* ``test_every_mechanism_class_is_registered``: a SpatialAttention subclass defined in
  visattn but not registered fails, naming the class;
* ``test_toy_backbone_from_one_config_and_one_registration``: a backbone added with one config
  plus one registration builds by name and gives the forward shape, ``features_only`` maps,
  ``mixers()``, a swap by name and per-block overrides (registered models in src get the whole
  model conformance suite, which is parametrised over ``list_models()``).
"""

from __future__ import annotations

import ast
import functools
import gc
import importlib
import pathlib
import pkgutil
import subprocess
import sys

import pytest
import torch

import visattn
from visattn.layers.base import SpatialAttention
from visattn.models.blocks import config_builder
from visattn.models.hierarchical import HierarchicalConfig, HierarchicalTransformer
from visattn.registry import _MODELS, attention_class, list_attention, model_entry, register_model

SRC = pathlib.Path(visattn.__file__).parent

# ---------------------------------------------------------------------------
# Layering
# ---------------------------------------------------------------------------

#: module (first component under visattn) -> layer.
LAYER_OF = {
    "errors": "core",
    "_io": "core",
    "_strict_json": "core",
    "flops": "core",
    "fpmode": "core",
    "registry": "registry",
    "layers": "layers",
    "models": "models",
    "data": "data",
    "train": "train",
    "bench": "bench",
    "compare": "apps",
    "predict": "apps",
    "predict_points": "apps",
    "viz": "apps",
    "docs_models": "apps",
    "docs_weights": "apps",
    "commands": "commands",
    "cli": "cli",
    "__main__": "cli",
}

#: layer -> the layers it may import (besides itself). "root" is ``import visattn`` (the public API,
#: which loads layers, models and the registry).
MAY_IMPORT = {
    "core": set(),
    "registry": {"core"},
    "layers": {"core", "registry"},
    "models": {"core", "registry", "layers"},
    "root": {"core", "registry", "layers", "models"},
    "data": {"core"},
    "train": {"core", "registry", "layers", "models", "data", "root"},
    "bench": {"core", "registry", "layers", "models", "root"},
    "apps": {"core", "registry", "layers", "models", "data", "train", "bench", "root"},
    "commands": {"core", "registry", "layers", "models", "data", "train", "bench", "apps", "root", "cli"},
    "cli": {"core", "registry", "layers", "models", "data", "train", "bench", "apps", "root", "commands"},
}

#: Imports inside functions that a layer may make upwards: the registry loads the packages whose
#: import registers the mechanisms and models (``registry._ensure_loaded``).
MAY_IMPORT_LAZILY = {"registry": {"layers", "models"}}

#: Known violations being removed by other parts of issue 11 (bench/cli.py moves into commands/;
#: train/segment.py reads its config without the CLI layer). Each entry must still exist: delete
#: it once the import is gone.
PENDING: set[tuple[str, str]] = set()


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts == ["visattn"]:
        return "root"
    return LAYER_OF.get(parts[1], f"unknown ({parts[1]})")


def _module_name(path: pathlib.Path, src: pathlib.Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, src: pathlib.Path = SRC) -> list[tuple[str, bool]]:
    """(imported visattn module, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }
    me = _module_name(path, src).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            names = [f"{mod}.{a.name}" for a in node.names] if mod == "visattn" else [mod]
        else:
            continue
        out += [(n, id(node) in lazy) for n in names if n.split(".")[0] == "visattn"]
    return out


def _violations(src: pathlib.Path = SRC) -> set[tuple[str, str]]:
    """(module, imported module) pairs against MAY_IMPORT in the package at ``src``."""
    bad = set()
    for path in sorted(src.rglob("*.py")):
        me = _module_name(path, src)
        src_layer = _layer(me)
        for target, lazy in _imports(path, src):
            t = target if target.split(".")[1:2] != [] and target.split(".")[1] in LAYER_OF else "visattn"
            dst_layer = _layer(t)
            ok = dst_layer == src_layer or dst_layer in MAY_IMPORT.get(src_layer, set())
            ok = ok or (lazy and dst_layer in MAY_IMPORT_LAZILY.get(src_layer, set()))
            if not ok:
                bad.add((me, target))
    return bad


def test_every_module_has_a_layer():
    unknown = sorted({_module_name(p) for p in SRC.rglob("*.py") if _layer(_module_name(p)).startswith("unknown")})
    assert not unknown, f"modules in no layer (add them to LAYER_OF and docs/architecture.md): {unknown}"
    doc = SRC.parent.parent / "docs" / "architecture.md"
    if doc.is_file():  # the page's layer table names every module of LAYER_OF
        text = doc.read_text(encoding="utf-8")
        missing = sorted(m for m in LAYER_OF if not any(f"`{m}{end}`" in text for end in ("", "/", ".py")))
        assert not missing, f"docs/architecture.md's layer table does not name {missing}"


def test_package_imports_follow_the_layering():
    found = _violations()
    new = sorted(found - PENDING)
    assert not new, "imports against the layering (docs/architecture.md): " + "; ".join(f"{a} -> {b}" for a, b in new)
    stale = sorted(PENDING - found)
    assert not stale, f"these PENDING exceptions no longer occur; delete them from tests/test_architecture.py: {stale}"


def test_the_layering_check_sees_a_violation(tmp_path):
    # The checker itself, on a small package tree: layers/ importing models/ (inside a function)
    # and commands/ (relative, top level) is reported; the registry's lazy loading and an
    # import of core are not.
    pkg = tmp_path / "visattn"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "layers" / "__init__.py").write_text("")
    (pkg / "layers" / "probe.py").write_text(
        "from visattn import errors\n\ndef f():\n    from visattn.models import blocks\n\nfrom ..commands import _args\n"
    )
    (pkg / "registry.py").write_text("def _ensure_loaded():\n    from visattn import layers, models\n")
    assert _violations(pkg) == {
        ("visattn.layers.probe", "visattn.models"),
        ("visattn.layers.probe", "visattn.commands"),
    }


# ---------------------------------------------------------------------------
# Every mechanism class is registered
# ---------------------------------------------------------------------------

#: SpatialAttention subclasses that are not mechanisms one creates by name, with the reason.
NOT_CREATED_BY_NAME = {
    "visattn.layers.relpos.ConvAsAttention": "a trained convolution re-expressed as relpos attention "
    "(built by attention_from_conv; it wraps a registered RelativePositionAttention)",
}


def _import_all() -> None:
    for info in pkgutil.walk_packages([str(SRC)], prefix="visattn."):
        if info.name.split(".")[-1] != "__main__":
            importlib.import_module(info.name)


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for s in cls.__subclasses__():
        out += [s, *_all_subclasses(s)]
    return out


@functools.lru_cache(maxsize=1)
def _registered_by_import() -> frozenset[str]:
    """Qualified names of the mechanism classes that a plain ``import visattn`` registers, in a fresh
    interpreter (a registered class whose module nothing imports is invisible to users)."""
    code = (
        "import visattn\nfrom visattn.registry import attention_class, list_attention\n"
        "for n in list_attention():\n    c = attention_class(n)\n    print(c.__module__ + '.' + c.__qualname__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return frozenset(out.stdout.split())


def unregistered_mechanisms() -> list[str]:
    """Qualified names of SpatialAttention subclasses defined in visattn that are not registered
    under a name of their own by ``import visattn`` (and not listed in NOT_CREATED_BY_NAME)."""
    _import_all()
    registered = {attention_class(n) for n in list_attention()}
    on_import = _registered_by_import()
    out = []
    for cls in _all_subclasses(SpatialAttention):
        qual = f"{cls.__module__}.{cls.__qualname__}"
        known = cls in registered and qual in on_import
        if cls.__module__.startswith("visattn.") and not known and qual not in NOT_CREATED_BY_NAME:
            out.append(qual)
    return sorted(set(out))


def _check_registered() -> None:
    missing = unregistered_mechanisms()
    assert not missing, (
        f"SpatialAttention subclasses defined but not registered: {missing}; decorate each with "
        "@register_attention(NAME, ...) and import its module in layers/__init__.py (docs/architecture.md, "
        "'Add a mechanism', step 2)"
    )


def test_every_mechanism_class_is_registered():
    _check_registered()
    for qual in NOT_CREATED_BY_NAME:  # the exemptions exist
        mod, name = qual.rsplit(".", 1)
        assert issubclass(getattr(importlib.import_module(mod), name), SpatialAttention)


def test_an_unregistered_mechanism_fails_naming_the_class():
    def _forward(self, x):
        return x

    rogue = type("RogueAttention", (SpatialAttention,), {"__module__": "visattn.layers.rogue", "_forward": _forward})
    try:
        with pytest.raises(AssertionError, match=r"not registered: \['visattn\.layers\.rogue\.RogueAttention'\]"):
            _check_registered()
    finally:
        del rogue
        gc.collect()
    _check_registered()  # gone again


# ---------------------------------------------------------------------------
# A toy backbone: one config + one registration
# ---------------------------------------------------------------------------

TOY = "_toy_backbone"


@pytest.fixture
def toy():
    # The whole backbone: one config of the kit ...
    cfg = HierarchicalConfig(
        embed_dims=(8, 16, 24),
        depths=(1, 2, 1),
        num_heads=(1, 2, 2),
        mixers=("conv", "local", "mhsa"),
        mixer_kwargs=({"kernel_size": 3}, {"kernel_size": 3}, {}),
        mlp_ratios=(2.0, 2.0, 2.0),
        stem="pvt",
        pos_embed=(False, False, True),
        pos_embed_size=32,
        img_size=32,
    )
    # ... and one registration.
    register_model(TOY, family="toy", default_input=(3, 32, 32), test_input=(3, 32, 32), paper="test")(
        config_builder(TOY, HierarchicalTransformer, cfg)
    )
    try:
        yield TOY
    finally:
        _MODELS.pop(TOY, None)


def test_toy_backbone_from_one_config_and_one_registration(toy):
    torch.manual_seed(0)
    model = visattn.create_model(toy, num_classes=5).eval()  # create_model by name
    x = torch.randn(2, *model_entry(toy).test_input)
    with torch.no_grad():
        assert model(x).shape == (2, 5)  # forward shape
        assert model.forward_features(x).shape == (2, 24, 2, 2)  # 32 / (4 * 2 * 2)
    # mixers(): the mechanisms of its blocks, in order
    assert [type(m).registry_name for m in model.mixers()] == ["conv", "local", "local", "mhsa"]
    assert [n for n, _ in model.named_mixers()][0] == "stages.0.blocks.0.mixer"
    # features_only: one map per stage, as feature_info says, equal to the full model's
    ext = visattn.create_model(toy, features_only=True).eval()
    ext.model.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        feats = ext(x)
        inter = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 8, 8), (2, 16, 4, 4), (2, 24, 2, 2)]
    assert ext.feature_info.channels() == [8, 16, 24] and ext.feature_info.reduction() == [4, 8, 16]
    assert all(torch.equal(a, b) for a, b in zip(feats, inter))
    # swap of a mechanism by name: every slot, the stage head counts kept
    swapped = visattn.create_model(toy, num_classes=5, attention="external")
    assert [type(m).registry_name for m in swapped.mixers()] == ["external"] * 4
    assert [m.num_heads for m in swapped.mixers()] == [1, 2, 2, 2]
    y = swapped(x)
    y.sum().backward()
    assert all(p.grad is not None for p in swapped.parameters() if p.requires_grad)
    # per-block override and the one unknown-option message
    m = visattn.create_model(toy, mixer_overrides=[{"stage": 1, "block": 1, "mixer": "mhsa"}])
    assert [type(m).registry_name for m in m.mixers()] == ["conv", "local", "mhsa", "mhsa"]
    with pytest.raises(TypeError, match=rf"^{TOY}: unknown option\(s\) \['depth'\]; expected HierarchicalConfig"):
        visattn.create_model(toy, depth=3)


# ---------------------------------------------------------------------------
# Every mechanism has its own tests and a docs page
# ---------------------------------------------------------------------------

ROOT = SRC.parent.parent
SUITES = {"test_conformance.py", "test_model_conformance.py", "test_architecture.py", "test_blocks.py"}


@pytest.mark.parametrize("name", list_attention())
def test_every_mechanism_has_its_own_tests_and_docs(name):
    if not (ROOT / "tests").is_dir():
        pytest.skip("not a source checkout")
    cls = attention_class(name)
    tests = [
        p
        for d in ("tests/layers", "tests/models")
        for p in (ROOT / d).glob("test_*.py")
        if p.name not in SUITES
        and (cls.__name__ in p.read_text(encoding="utf-8") or f'"{name}"' in p.read_text(encoding="utf-8"))
    ]
    assert tests, (
        f"mechanism {name!r}: no test file under tests/layers or tests/models (besides the suites) uses "
        f"{cls.__name__} or creates {name!r}"
    )
    docs = [
        p
        for p in (ROOT / "docs").glob("*.md")
        if p.name != "models.md"
        and (f"`{name}`" in p.read_text(encoding="utf-8") or f'"{name}"' in p.read_text(encoding="utf-8"))
    ]
    assert docs, f"mechanism {name!r}: no docs page (docs/*.md) names it as `{name}`"
