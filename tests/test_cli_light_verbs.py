"""Verbs that touch no tensor answer without importing torch or transformers.

Each verb runs in a fresh interpreter (the only honest way to see what it imports); the
interpreter writes its exit code and the heavy modules it ended up with to a report file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")
RUN_VERB = """
import json, os, sys
from garage_tui.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:  # argparse's --help
    code = stop.code
heavy = sorted({name.split('.')[0] for name in sys.modules} & set(os.environ['HEAVY'].split(',')))
with open(os.environ['VERB_REPORT'], 'w') as report:
    json.dump({'code': code, 'heavy': heavy}, report)
"""


def run_verb(home: Path, tmp_path: Path, *argv: str) -> tuple[int, list[str], str]:
    report = tmp_path / "verb-report.json"
    env = {**os.environ, "GARAGE_HOME": str(home), "VERB_REPORT": str(report), "HEAVY": ",".join(HEAVY),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", RUN_VERB, *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    result = json.loads(report.read_text())
    return result["code"], result["heavy"], done.stdout + done.stderr


@pytest.fixture()
def stocked_home(tmp_path):
    """A parts bin holding one small part (a MiniLM LayerNorm read straight from its checkpoint)."""
    from engine.parts import PartsBin

    home = tmp_path / "home"
    PartsBin(home).add_from_checkpoint("minilm-l6", "L0.norm1", name="keep")
    return home


@pytest.mark.slow  # starts a process per verb
def test_catalog_verbs_do_not_import_torch_or_transformers(stocked_home, tmp_path):
    verbs = [
        ("--help",), ("parts", "--help"), ("parts", "list"), ("parts", "list", "--json", "--kind", "norm"),
        ("parts", "show", "keep"), ("parts", "tag", "keep", "mine", "norms"), ("parts", "note", "keep", "first"),
        ("parts", "rename", "keep", "kept"), ("parts", "show", "kept", "--json"),
    ]
    for argv in verbs:
        code, heavy, output = run_verb(stocked_home, tmp_path, *argv)
        assert code == 0, (argv, output)
        assert heavy == [], f"garage {' '.join(argv)} imported {heavy}"
    shown = json.loads(output)
    assert shown["name"] == "kept" and shown["tags"] == ["mine", "norms"] and shown["notes"] == "first"
    code, heavy, output = run_verb(stocked_home, tmp_path, "parts", "rm", "kept")
    assert code == 0 and heavy == [], output
    assert not list((stocked_home / "parts").glob("*.safetensors"))


@pytest.mark.slow  # starts a process per verb
def test_errors_of_light_verbs_do_not_import_torch(stocked_home, tmp_path):
    for argv, needle in [(("parts", "show", "nope"), "no part named 'nope'"),
                         (("parts", "rm", "keep", "nope"), "no part named 'nope'"),
                         (("parts", "tag", "nope", "x"), "no part named 'nope'")]:
        code, heavy, output = run_verb(stocked_home, tmp_path, *argv)
        assert code == 2 and needle in output, (argv, output)
        assert heavy == [], f"garage {' '.join(argv)} imported {heavy}"


RECIPES = REPO / "recipes"


def _report_view(report) -> dict:
    """Everything a validation report says, the plan tensor by tensor."""
    view = report.to_dict()
    view["problems_text"] = [str(p) for p in report.problems]
    if report.plan is not None:
        view["plan_tensors"] = [(t.name, tuple(t.shape), t.dtype, t.op, t.inputs, t.params, t.part,
                                 [x.to_dict() for x in t.transplants]) for t in report.plan.tensors]
        view["output_config"] = {k: v for k, v in report.plan.config.to_dict().items()
                                 if k not in ("transformers_version", "_name_or_path", "id2label", "label2id")}
    return view


def _assert_light_equals_full(recipe, expect_light: bool = True) -> None:
    from engine.build import validate_recipe
    from engine.build.headers import ConfigView

    full, light = validate_recipe(recipe), validate_recipe(recipe, light=True)
    full_view, light_view = _report_view(full), _report_view(light)
    full_config, light_config = full_view.pop("output_config", {}), light_view.pop("output_config", {})
    assert light_view == full_view
    # the light plan's config agrees with transformers' on every key it states
    assert {k: full_config.get(k) for k in light_config} == light_config
    if light.plan is not None and expect_light:
        assert isinstance(light.plan.config, ConfigView), "the light path fell back to transformers"


@pytest.mark.slow  # validates each bundled recipe twice, once through transformers
@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_light_validation_equals_transformers_validation(name):
    _assert_light_equals_full(str(RECIPES / f"{name}.yaml"))


@pytest.mark.slow  # saves tiny llamas through transformers
@pytest.mark.parametrize("changes", [
    {}, {"attention_bias": True, "mlp_bias": True}, {"tie_word_embeddings": True, "num_key_value_heads": 4},
])
def test_light_validation_equals_transformers_on_tiny_llamas(tmp_path, changes):
    from engine.build import load_recipe
    from tests.test_build_tiny import recipe_text, save_tiny

    a = save_tiny(tmp_path / "a", "llama", 0, **changes)
    b = save_tiny(tmp_path / "b", "llama", 1, **changes)
    cases = {
        "mix": recipe_text({"a": a, "b": b}, [{"take": "a.L0-1"}, {"blend": ["a.L2", "b.L2"], "method": "slerp",
                                                                    "t": 0.5}, {"take": "b.L3", "mlp": "a.L0"}]),
        "untie": recipe_text({"a": a, "b": b}, [{"take": "a.L0-3"}], lm_head="b", dtype="bfloat16"),
        "heads": recipe_text({"a": a, "b": b}, [{"take": "a.L0", "heads": [{"head": 1, "from": "b.L1.h1",
                                                                           "kv": "keep"}]}]),
        "bad": recipe_text({"a": a, "b": b}, [{"take": "a.L7"}, {"take": "b.L0", "heads": [{"head": 9,
                                                                                          "from": "b.L0.h0"}]}]),
        "override": recipe_text({"a": a, "b": b}, [{"take": "a.L0-3"}], config={"rms_norm_eps": 1e-5}),
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        _assert_light_equals_full(load_recipe(str(path)))


def test_light_defaults_are_transformers_defaults():
    import transformers

    from engine.build.headers import LIGHT_DEFAULTS

    for model_type, defaults in LIGHT_DEFAULTS.items():
        config = transformers.AutoConfig.for_model(model_type)
        assert {key: getattr(config, key) for key in defaults} == defaults, model_type


@pytest.mark.slow  # starts a process per verb
# blend and finish ops load engine.plugins: the blade plugin must not pull torch in with them
@pytest.mark.parametrize("name, code", [("smollm2-head-transplant", 0), ("smollm2-blend", 0), ("smollm2-widened", 0),
                                        ("invalid-mixed-architectures", 2)])
def test_recipe_check_imports_neither_torch_nor_transformers(tmp_path, name, code):
    from rich.console import Console

    from engine.build import validate_recipe
    from garage_tui.commands.recipe_cmd import print_report

    got, heavy, output = run_verb(tmp_path / "home", tmp_path, "recipe", "check", str(RECIPES / f"{name}.yaml"))
    assert heavy == [], f"garage recipe check {name} imported {heavy}"
    expected = Console(record=True, width=100_000, no_color=True)
    print_report(validate_recipe(str(RECIPES / f"{name}.yaml")), expected)
    assert got == code
    assert " ".join(output.split()) == " ".join(expected.export_text().split())


@pytest.mark.slow  # saves tiny models through transformers
@pytest.mark.parametrize("broken", [
    {"hidden_act": "bogus_act"}, {"rope_parameters": {"rope_type": "bogus", "rope_theta": 10000.0}},
    {"pad_token_id": 100000}, {"num_key_value_heads": 0}, {"use_cache": "yes"}, {"attention_dropout": "x"},
])
def test_light_check_refuses_what_transformers_refuses(tmp_path, broken):
    """A source config.json transformers would refuse is not waved through by the light path:
    it goes the heavy way and both checks report the same problem."""
    import json

    from engine.build import load_recipe
    from tests.test_build_tiny import recipe_text, save_tiny

    a = save_tiny(tmp_path / "a", "llama", 0)
    config = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**config, **broken}))
    path = tmp_path / "recipe.json"
    path.write_text(recipe_text({"a": a}, [{"take": "a.L0-3"}]))
    from engine.build import validate_recipe

    assert not validate_recipe(load_recipe(str(path))).ok
    _assert_light_equals_full(load_recipe(str(path)), expect_light=False)


@pytest.mark.slow  # saves tiny models through transformers
def test_light_check_of_a_bert_recipe_equals_transformers(tmp_path):
    from engine.build import load_recipe
    from tests.test_build_tiny import recipe_text, save_tiny

    a = save_tiny(tmp_path / "a", "bert", 0)
    path = tmp_path / "recipe.json"
    path.write_text(recipe_text({"a": a}, [{"take": "a.L0-3"}]))
    _assert_light_equals_full(load_recipe(str(path)), expect_light=False)
