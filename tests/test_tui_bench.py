"""Build bench pane: live validation, a refused recipe is one notification, a real build
with progress and its evaluation next to the source's."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tui_support import make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smollm2):
    """A tiny random Llama that shares SmolLM2's tokenizer, saved as a plain HF folder."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("tiny-llama")
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96,
                                      vocab_size=len(smollm2.tokenizer), tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    smollm2.tokenizer.save_pretrained(folder)
    return folder


def _notes(app):
    notes = []
    original = app.notify
    app.notify = lambda message, **kw: (notes.append((message, kw.get("severity"))), original(message, **kw))[1]
    return notes


def test_invalid_recipe_is_shown_live_and_refused_with_one_notification(smollm2, tmp_path):
    recipe = REPO / "recipes" / "invalid-mixed-architectures.yaml"

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        notes = _notes(app)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            bench = app.query_one("BenchPane")
            await pilot.press("4", "o")
            await pilot.pause()
            await pilot.press("ctrl+a", "ctrl+k", *str(recipe), "enter")
            await wait_for(pilot, lambda: bench.validation is not None, 60, "validation")
            assert not bench.validation.ok and bench.validation.problems
            shown = str(app.query_one("#bench-validation").render())
            assert "✗" in shown and "hidden" in shown.lower()
            notes.clear()
            await pilot.press("B")
            await pilot.pause()
            await pilot.press("ctrl+a", "ctrl+k", *str(tmp_path / "never-built"), "enter")
            await wait_for(pilot, lambda: app.job is None and notes, 60, "the refusal")
            await wait_idle(pilot)  # every worker has ended, so no second note can still come
            assert len(notes) == 1 and notes[0][1] == "error"
            assert "refused" in notes[0][0] and "Traceback" not in notes[0][0]
            assert not (tmp_path / "never-built").exists()

    run(scenario())


def test_assemble_build_and_evaluate(smollm2, tmp_path, tiny_folder):
    out = tmp_path / "hybrid"

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        notes = _notes(app)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            bench = app.query_one("BenchPane")
            await pilot.press("4")
            # assemble by keyboard: start from a recipe over the tiny model, then repeat a layer
            bench.set_recipe({"recipe_version": 1, "name": "tiny-stack", "sources": {"t": str(tiny_folder)},
                              "embed": "t", "final_norm": "t", "lm_head": "t", "layers": [{"take": "t.L0-1"}]}, 0)
            await wait_for(pilot, lambda: bench.validation and bench.validation.ok, 60, "validation")
            await pilot.press("t")
            await pilot.pause()
            await pilot.press("ctrl+a", "ctrl+k", *"t.L1", "enter")
            await wait_for(pilot, lambda: bench.validation and bench.validation.layers == 3, 60, "3 layers")
            await pilot.press("B")
            await pilot.pause()
            await pilot.press("ctrl+a", "ctrl+k", *str(out), "enter")
            await wait_for(pilot, lambda: bench.evaluation is not None, 240, "build and evaluation")
            assert not [n for n in notes if n[1] == "error"], notes
            models = bench.evaluation["models"]
            assert [m["role"] for m in models] == ["model", "source"]
            table = app.query_one("#bench-eval")
            assert table.row_count >= 3 and len(table.columns) == 3
            return models

    models = run(scenario())
    assert (out / "config.json").exists() and (out / "provenance.json").exists()
    from engine.build import evaluate

    direct = evaluate(str(out), [str(tiny_folder)]).to_dict()["models"]
    # the pane shows the engine's own numbers for the hybrid and its source
    assert [m["perplexity"] for m in models] == pytest.approx([m["perplexity"] for m in direct], rel=1e-6)
