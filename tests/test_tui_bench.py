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
    from engine.build.evaluate import evaluate

    direct = evaluate(str(out), [str(tiny_folder)]).to_dict()["models"]
    # the pane shows the engine's own numbers for the hybrid and its source
    assert [m["perplexity"] for m in models] == pytest.approx([m["perplexity"] for m in direct], rel=1e-6)


@pytest.fixture()
def tiny_with_parts(tmp_path):
    """A tiny random Llama (character tokenizer) and a bin in ``tmp_path`` with two directions and a head."""
    import torch
    from test_tui_search import tiny_llama_folder

    from engine.features.parts import save_direction
    from engine.loading import open_model
    from engine.parts import PartsBin

    tiny = open_model(str(tiny_llama_folder(tmp_path / "tiny-llama", layers=3)))
    bin_ = PartsBin(tmp_path)
    for name in ("dir-a", "dir-b"):
        save_direction(bin_, tiny, torch.randn(64), "L1.out", method="diffmean", provenance={}, name=name)
    head = bin_.add_from_model(tiny, "L1.attn.h1", name="head-1")
    return tiny, bin_, head.name


async def _question(app, pilot) -> str:
    from garage_tui.screens.ask import AskScreen

    await wait_for(pilot, lambda: isinstance(app.screen, AskScreen), 30, "the question")
    return app.screen.question


def test_bake_reads_the_bin_in_a_worker_and_lists_its_directions(tiny_with_parts, tmp_path, monkeypatch):
    from test_tui_support import hold

    from engine.parts import PartsBin
    from garage_tui.screens.ask import AskScreen

    tiny, _, head = tiny_with_parts
    gate = hold(monkeypatch, PartsBin, "list")  # a slow catalog (a network home): held until the test lets go

    async def scenario():
        app = make_app(tiny, home=tmp_path, model=tiny.name)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            await pilot.press("4", "n")
            await wait_for(pilot, lambda: app.query_one("BenchPane").recipe is not None, 10, "the recipe")
            steps = app.query_one("#bench-steps")
            assert steps.cursor_row == 1
            await pilot.press("a", "up")  # keys still work while the catalog is read
            await pilot.pause()
            assert steps.cursor_row == 0 and not isinstance(app.screen, AskScreen)
            assert any(w.name == "_bake_directions" and w.is_running for w in app.query_one("BenchPane").workers)
            gate.set()
            question = await _question(app, pilot)
            assert "directions in the bin: dir-a, dir-b" in question and head not in question
            assert app.screen.value == "ablate-direction dir-a"

    run(scenario())


def test_a_corrupt_catalog_is_one_notification_for_bake_and_part_to_head(tiny_with_parts, tmp_path):
    from garage_tui.screens.ask import AskScreen

    tiny, bin_, head = tiny_with_parts

    async def scenario():
        app = make_app(tiny, home=tmp_path, model=tiny.name)
        notes = _notes(app)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            await pilot.press("4", "n")
            await wait_for(pilot, lambda: app.query_one("BenchPane").recipe is not None, 10, "the recipe")
            # a good catalog first: p offers the head that fits
            await pilot.press("p")
            await _question(app, pilot)
            await pilot.press("ctrl+a", "ctrl+k", *"L1.attn.h1", "enter")
            assert head in await _question(app, pilot), notes
            await pilot.press("escape")
            notes.clear()

            bin_.catalog_path.write_text("{not json", encoding="utf-8")
            await pilot.press("a")
            await wait_for(pilot, lambda: notes, 30, "the notification")
            assert len(notes) == 1 and notes[0][1] == "error" and "corrupted" in notes[0][0]
            assert "Traceback" not in notes[0][0] and not isinstance(app.screen, AskScreen)

            bin_.catalog_path.write_text("{not json", encoding="utf-8")  # the first one was kept aside
            notes.clear()
            await pilot.press("p")
            await _question(app, pilot)
            await pilot.press("ctrl+a", "ctrl+k", *"L1.attn.h1", "enter")
            await wait_for(pilot, lambda: notes, 30, "the notification")
            assert notes[0][1] == "error" and "corrupted" in notes[0][0]
            await wait_idle(pilot)
            assert len(notes) == 1 and not isinstance(app.screen, AskScreen)

            # the app is alive: the bin starts afresh and a still asks
            await pilot.press("a")
            assert "the bin has no direction yet" in await _question(app, pilot)

    run(scenario())
