"""Whole-model recipe ops (``finish:``): ``widen`` and ``bake`` through the builder, the preview and
``recipe check``. Tiny random Llamas in the quick lane; SmolLM2 (the issue's oracle) in the slow lane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from engine.build import build, load_recipe, validate_recipe
from engine.build.model_ops import MODEL_OPS
from engine.build.preview import preview
from engine.features.directions import direction_edit
from engine.interventions import scale, steer
from engine.run import run
from garage_tui.cli import main
from tests.test_build_tiny import save_tiny

IDS = torch.tensor([[3, 17, 42, 9, 88, 5, 61, 23, 7, 100]])


def recipe_doc(source: Path, finish: list, layers: list | None = None) -> dict:
    return {"recipe_version": 1, "name": "finished", "sources": {"a": str(source)}, "embed": "a",
            "final_norm": "a", "lm_head": "a", "layers": layers or [{"take": "a.L0-3"}], "finish": finish}


def plain_logits(folder: Path, ids: torch.Tensor = IDS) -> torch.Tensor:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                                    output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("src") / "llama", "llama", seed=3)


@pytest.fixture()
def source_model(tiny_llama):
    from engine.loading import open_model

    return open_model(str(tiny_llama))


@pytest.fixture()
def direction_part(garage_home, source_model):
    """A direction part of the tiny Llama at L2.out, in this test's own parts bin."""
    from engine.features.parts import save_direction
    from engine.parts import PartsBin

    vector = torch.randn(64, generator=torch.Generator().manual_seed(7))
    record = save_direction(PartsBin(), source_model, vector, "L2.out", method="diffmean", provenance={},
                            name="tiny-dir")
    return record, vector


def test_model_ops_are_registered():
    assert {"widen", "bake"} <= set(MODEL_OPS.names())


@pytest.mark.parametrize(("width", "model_type"), [(96, "llama"), (90, "mistral")])  # 90: not a multiple of 4 heads
def test_widen_build_keeps_the_function(tiny_llama, source_model, tmp_path, width, model_type):
    doc = recipe_doc(tiny_llama, [{"op": "widen", "width": width, "seed": 5}])
    report = validate_recipe(load_recipe(doc))
    assert report.ok, report.problems
    out = build(load_recipe(doc), tmp_path / "wide").out_dir
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == width and config["head_dim"] == 16 and config["tie_word_embeddings"] is False
    assert config["model_type"] == model_type and config.get("sliding_window") is None
    reference = run(source_model, IDS).logits
    built = plain_logits(out)
    assert (built - reference).abs().max() <= 1e-4 * max(1.0, float(reference.abs().max()))
    provenance = json.loads((out / "provenance.json").read_text())
    step = provenance["finish"][0]
    assert step["op"] == "widen" and step["width_from"] == 64 and step["width_to"] == width and step["seed"] == 5
    assert set(provenance["weights"]) == {"model.safetensors"}
    assert "finish" in (out / "recipe.yaml").read_text()
    # the in-memory preview applies the same op
    shown = preview(load_recipe(doc), {"a": source_model})
    assert int(shown.config.hidden_size) == width
    assert (run(shown, IDS).logits - built).abs().max() <= 1e-5


def test_bake_ablate_direction_build_matches_runtime(tiny_llama, source_model, direction_part, tmp_path):
    record, vector = direction_part
    doc = recipe_doc(tiny_llama, [{"op": "bake", "kind": "ablate-direction", "part": record.sha256[:12]}])
    out = build(load_recipe(doc), tmp_path / "baked").out_dir
    runtime = run(source_model, IDS, interventions=[direction_edit(vector, "writers")]).logits
    untouched = run(source_model, IDS).logits
    assert (runtime - untouched).abs().max() > 1e-3  # the edit matters, so the equality below means something
    assert (plain_logits(out) - runtime).abs().max() <= 1e-4
    provenance = json.loads((out / "provenance.json").read_text())
    step = provenance["finish"][0]
    assert step["direction_part"] == "tiny-dir" and step["direction_sha256"] == record.sha256
    assert step["params"] == {"op": "bake", "kind": "ablate-direction", "part": record.sha256[:12]}


def test_bake_steer_and_head_scale_then_widen(tiny_llama, source_model, direction_part, tmp_path):
    record, vector = direction_part
    finish = [{"op": "bake", "kind": "steer", "part": "tiny-dir", "strength": 2.0},  # layer from the part: L2
              {"op": "bake", "kind": "head-scale", "head": "L1.H3", "factor": 0.25},
              {"op": "widen", "width": 80}]
    doc = recipe_doc(tiny_llama, finish)
    assert validate_recipe(load_recipe(doc)).ok
    out = build(load_recipe(doc), tmp_path / "steered").out_dir
    runtime = run(source_model, IDS, interventions=[steer("L2", vector, 2.0), scale("L1.attn.h3", 0.25)]).logits
    assert (plain_logits(out) - runtime).abs().max() <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["mlp_bias"] is True and config["hidden_size"] == 80


@pytest.mark.parametrize(("finish", "path", "words"), [
    ([{"op": "shrink"}], "finish[0].op", "unknown model op"),
    ([{"op": "widen"}], "finish[0].width", "needs a target"),
    ([{"op": "widen", "width": 32}], "finish[0].width", "narrower"),
    ([{"op": "widen", "width": 96, "colour": 1}], "finish[0].colour", "no field"),
    ([{"op": "widen", "width": 65536 * 2}], "finish[0].width", "limit"),
    ([{"op": "bake", "kind": "melt"}], "finish[0].kind", "bake kind must be"),
    ([{"op": "bake", "kind": "ablate-direction", "part": "tiny-dir", "factor": 2}], "finish[0].factor", "takes part"),
    ([{"op": "bake", "kind": "ablate-direction", "part": "no-such-part"}], "finish[0].part", "no part named"),
    ([{"op": "bake", "kind": "head-scale", "head": "L1.H9", "factor": 0.5}], "finish[0].head", "h0-h3"),
    ([{"op": "bake", "kind": "head-scale", "head": "three", "factor": 0.5}], "finish[0].head", "L3.H2"),
    ([{"op": "bake", "kind": "steer", "part": "tiny-dir", "layer": 9, "strength": 1}], "finish[0].layer", "L0-L3"),
    ([{"op": "widen", "width": 96}, {"op": "bake", "kind": "ablate-direction", "part": "tiny-dir"}],
     "finish[1].part", "64 wide"),
    ("widen", "finish", "a list"),
])
def test_recipe_check_names_the_bad_field(tiny_llama, direction_part, tmp_path, capsys, finish, path, words):
    report = validate_recipe(load_recipe(recipe_doc(tiny_llama, finish)))
    assert not report.ok and len(report.problems) == 1
    problem = report.problems[0]
    assert problem.path == path and words in problem.message
    recipe_file = tmp_path / "bad.yaml"
    recipe_file.write_text(json.dumps(recipe_doc(tiny_llama, finish)))
    assert main(["recipe", "check", str(recipe_file)]) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem")]
    assert len(lines) == 1 and path in lines[0] and "Traceback" not in lines[0]


def test_a_new_model_op_is_one_registration(tiny_llama, source_model, tmp_path, monkeypatch):
    """What a plugin file in engine/plugins/ would hold: parse, check and apply, then recipes use it."""
    from engine.build.model_ops import ModelOp, register_model_op
    from engine.build.ops import OpFieldError

    monkeypatch.setattr(MODEL_OPS, "_entries", dict(MODEL_OPS._entries))

    def parse(entry):
        if not isinstance(entry.get("factor"), (int, float)):
            raise OpFieldError("factor", "scale-logits needs a number")
        return {"factor": float(entry["factor"])}

    def check(params, config):
        if config.get("tie_word_embeddings"):
            raise OpFieldError("op", "scale-logits needs an untied head")

    def apply(model, params):
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(params["factor"])
        return model, {"changed": ["lm_head.weight"]}

    register_model_op(ModelOp("scale-logits", ("factor",), parse, check, apply))
    out = build(load_recipe(recipe_doc(tiny_llama, [{"op": "scale-logits", "factor": 3.0}])), tmp_path / "x").out_dir
    assert torch.allclose(plain_logits(out), 3.0 * run(source_model, IDS).logits, atol=1e-5)
    bad = validate_recipe(load_recipe(recipe_doc(tiny_llama, [{"op": "scale-logits", "factor": "x"}])))
    assert [p.path for p in bad.problems] == ["finish[0].factor"]


def test_widen_refused_on_other_families(tmp_path):
    gpt2 = save_tiny(tmp_path / "gpt2", "gpt2", seed=0, layers=2)
    doc = recipe_doc(gpt2, [{"op": "widen", "width": 96}], layers=[{"take": "a.L0-1"}])
    problems = validate_recipe(load_recipe(doc)).problems
    assert [p.path for p in problems] == ["finish[0].op"] and "Llama" in problems[0].message


# ---- SmolLM2: the oracle -------------------------------------------------------------------

SMOL_RECIPE = {"recipe_version": 1, "name": "smol-finished", "sources": {"smol": "smollm2-135m"}, "embed": "smol",
               "final_norm": "smol", "lm_head": "smol", "layers": [{"take": "smol.L0-29"}]}


@pytest.mark.slow
def test_smollm2_widen_and_bake_builds(smollm2, garage_home, tmp_path):
    """SmolLM2 widened to 960 gives SmolLM2's logits; SmolLM2 with a direction part baked in gives the
    runtime projection's — each loaded from its built folder by plain transformers, in fp32."""
    import gc
    import shutil

    from engine.features.parts import save_direction
    from engine.parts import PartsBin

    ids = smollm2.tokenizer("The capital of France is Paris, and the capital of", return_tensors="pt").input_ids
    reference = run(smollm2, ids).logits
    out = build(load_recipe({**SMOL_RECIPE, "finish": [{"op": "widen", "width": 960, "seed": 0}]}),
                tmp_path / "wide").out_dir
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 960
    widened = plain_logits(out, ids)
    assert (widened - reference).abs().max() <= 1e-4
    shutil.rmtree(out)
    del widened
    gc.collect()

    vector = torch.randn(576, generator=torch.Generator().manual_seed(11))
    record = save_direction(PartsBin(), smollm2, vector, "L15.out", method="diffmean", provenance={}, name="smol-dir")
    out = build(load_recipe({**SMOL_RECIPE, "finish": [{"op": "bake", "kind": "ablate-direction",
                                                        "part": "smol-dir"}]}), tmp_path / "baked").out_dir
    runtime = run(smollm2, ids, interventions=[direction_edit(vector, "writers")]).logits
    assert (runtime - reference).abs().max() > 1e-2
    assert (plain_logits(out, ids) - runtime).abs().max() <= 1e-4
    step = json.loads((out / "provenance.json").read_text())["finish"][0]
    assert step["direction_sha256"] == record.sha256 and step["bake_op"] == "ablate_direction"


@pytest.mark.slow
def test_bench_adds_a_bake_step_that_validates(smollm2, garage_home):
    """Pane 4: `a` adds a bake of a direction part from the bin as a finish step; the recipe validates."""
    from engine.features.parts import save_direction
    from engine.parts import PartsBin
    from tests.test_tui_keyboard import _answer
    from tests.test_tui_support import make_app, run, wait_for, wait_idle

    garage_home.mkdir(parents=True, exist_ok=True)
    save_direction(PartsBin(), smollm2, torch.ones(576), "L15.out", method="diffmean", provenance={}, name="bench-dir")

    async def scenario():
        app = make_app(smollm2, home=garage_home)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            bench = app.query_one("BenchPane")
            await pilot.press("4", "n")
            await wait_for(pilot, lambda: bench.validation is not None and bench.validation.ok, 60, "identity")
            await pilot.press("a")
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "AskScreen", 10, "the bake question")
            assert app.screen.query_one("Input").value == "ablate-direction bench-dir"  # offered from the bin
            await pilot.press("enter")
            await wait_for(pilot, lambda: bool(bench.recipe.get("finish")), 10, "the bake step")
            await wait_for(pilot, lambda: bench.validation is not None and bench.validation.ok, 60, "a valid recipe")
            assert bench.recipe["finish"] == [{"op": "bake", "kind": "ablate-direction", "part": "bench-dir"}]
            table = app.query_one("#bench-steps")
            assert str(table.get_row_at(table.row_count - 1)[0]) == "finish 1"
            await pilot.press("a")
            await _answer(pilot, "head-scale L3.H99 0.5")  # a head SmolLM2 does not have: the check says so
            await wait_for(pilot, lambda: bench.validation is not None and not bench.validation.ok, 60, "refusal")
            problems = bench.validation.problems
            assert len(problems) == 1 and "finish[1].head" in problems[0] and "h0-h8" in problems[0], problems
            await pilot.press("d")  # the highlighted (new) finish step goes again
            await wait_for(pilot, lambda: len(bench.recipe["finish"]) == 1 and bench.validation is not None
                           and bench.validation.ok, 60, "valid again")

    run(scenario())


def test_bench_bake_answers_become_finish_steps():
    from garage_tui.recipe_steps import bake_step

    assert bake_step("ablate-direction d1") == {"op": "bake", "kind": "ablate-direction", "part": "d1"}
    assert bake_step("steer d1 2.5 L15") == {"op": "bake", "kind": "steer", "part": "d1", "strength": 2.5, "layer": 15}
    assert bake_step("head-scale L3.H2 0.5") == {"op": "bake", "kind": "head-scale", "head": "L3.H2", "factor": 0.5}
    for bad in ("", "melt d1", "steer d1", "head-scale L3.H2"):
        with pytest.raises(ValueError, match="write one of"):
            bake_step(bad)
