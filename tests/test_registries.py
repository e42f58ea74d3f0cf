"""The four registries, driven by the README's own "Extending" examples as plugin files.

Each example block is written into a temporary plugin package, found by the registry's first
lookup, and used on a tiny random Llama: the clamp clamps, the analyzer equals the function it
wraps, the recipe op averages, the site rule captures the residual between attention and MLP.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import engine.registry
from engine.analyzers.registry import ANALYZERS, AnalyzeRequest, analyze
from engine.anatomy import POINTS_BY_KIND
from engine.build.ops import OPS, apply_op, blend_methods
from engine.errors import GarageError, InterventionError
from engine.interventions import INTERVENTIONS, Intervention, ablate
from engine.run import run
from engine.sites import SITE_RULES
from engine.stats import residual_norms
from tests.tiny_models import CharTokenizer, tiny_model

README = Path(__file__).resolve().parents[1] / "README.md"


def _extending_examples() -> dict[str, str]:
    """``{plugin file name: code}`` from the README's Extending section."""
    section = README.read_text(encoding="utf-8").split("## Extending", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"\(`engine/plugins/(\w+)\.py`\).*?```python\n(.*?)```", section, flags=re.S)
    return dict(found)


@pytest.fixture()
def plugins(tmp_path, monkeypatch):
    """The README's examples as a plugin package, registries restored afterwards."""
    package = tmp_path / "readme_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, code in _extending_examples().items():
        (package / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(engine.registry, "PLUGIN_PACKAGE", "readme_plugins")
    monkeypatch.setattr(engine.registry, "_plugins_loaded", False)
    for registry in (INTERVENTIONS, ANALYZERS, OPS, SITE_RULES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setitem(POINTS_BY_KIND, "layer", POINTS_BY_KIND["layer"])
    yield
    for name in [module for module in sys.modules if module.startswith("readme_plugins")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def tiny():
    loaded = tiny_model("llama")
    loaded.tokenizer = CharTokenizer()
    return loaded


def test_the_readme_has_one_example_per_registry() -> None:
    assert sorted(_extending_examples()) == ["clamp", "mean_blend", "mid_residual", "norms"]


def test_builtins_need_no_plugins_and_unknown_names_are_clear_errors() -> None:
    assert {"ablate", "scale", "steer", "patch", "replace"} <= set(INTERVENTIONS.names(plugins=False))
    assert ANALYZERS.names(plugins=False) == ["stats", "attention", "lens", "importance", "similarity", "patching"]
    with pytest.raises(InterventionError, match="unknown intervention 'melt'; use one of: ablate, scale"):
        Intervention("melt", "L0").describe()
    with pytest.raises(GarageError, match="unknown analyzer 'vibes'"):
        ANALYZERS.get("vibes")
    assert blend_methods() == ["linear", "slerp"]


def test_intervention_plugin_clamps_the_residual(plugins, tiny) -> None:
    ids = tiny.tokenizer("hello there").input_ids
    clean = run(tiny, ids, capture=["L0.out"]).tap["L0.out"]
    item = Intervention("clamp", "L0.out", factor=0.01)
    clamped = run(tiny, ids, capture=["L0.out"], interventions=[item]).tap["L0.out"]
    assert float(clean.abs().max()) > 0.01
    assert float(clamped.abs().max()) == pytest.approx(0.01)
    assert torch.equal(clamped, clean.clamp(-0.01, 0.01))
    assert item.describe() == "clamp L0.out to ±0.01" and item.to_dict()["factor"] == 0.01
    assert item.position_independent() and not ablate("L0", "mean").position_independent()


def test_analyzer_plugin_runs_by_name(plugins, tiny) -> None:
    report = analyze(tiny, "norms", AnalyzeRequest(prompt="hello"))
    assert report == pytest.approx(residual_norms(tiny, "hello"))
    assert "norms" in ANALYZERS.names()


def test_recipe_op_plugin_parses_and_averages(plugins) -> None:
    from engine.build.recipe_parse import load_recipe

    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(apply_op("mean", [a, b], {}), (a + b) / 2)
    recipe = load_recipe({"recipe_version": 1, "name": "m", "sources": {"a": "smollm2-135m", "b": "smollm2-135m"},
                          "layers": [{"blend": ["a.L0", "b.L1"], "method": "mean"}]})
    assert not [p for p in recipe.problems if "method" in p.path]
    assert recipe.layers[0].base.method == "mean"


def test_site_rule_plugin_adds_a_capture_point(plugins, tiny) -> None:
    ids = tiny.tokenizer("hello").input_ids
    with pytest.raises(GarageError):
        run(tiny, ids, capture=["L1.mid"])  # not a point until a rule is looked up
    assert "layer.mid" in SITE_RULES  # the first lookup loads the plugins
    tap = run(tiny, ids, capture=["L1.mid", "L1.in", "L1.attn.out"]).tap
    # in a pre-norm block the middle of the residual stream is the input plus attention's output
    assert torch.allclose(tap["L1.mid"], tap["L1.in"] + tap["L1.attn.out"], atol=1e-6)
    assert not torch.allclose(tap["L1.mid"], tap["L1.in"])
