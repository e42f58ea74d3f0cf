"""Issue 13 as a demanding keyboard user finds it, on the real SmolLM2: user text never read as
markup, `p` builds recipes that validate and build, one set of list keys, the filter as you
type, `y` copies the focused pane, before/after as a union, edits re-run, 80×24 keeps the
essential keys and the guesses, sessions keep their title and notes, charts say what they show."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_tui_support import goto, make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


async def _type(pilot, text):
    for char in text:
        await pilot.press("space" if char == " " else char)


async def _answer(pilot, text):
    await pilot.pause()
    await pilot.press("ctrl+a", "ctrl+k")
    await _type(pilot, text)
    await pilot.press("enter")
    await pilot.pause()


def _cells(table) -> list[str]:
    return [str(cell) for index in range(table.row_count) for cell in table.get_row_at(index)]


def test_markup_in_recipes_and_prompts_is_shown_as_written(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            await pilot.press("4", "o")
            await _answer(pilot, str(REPO / "recipes" / "smollm2-blend.yaml"))
            bench = app.query_one("BenchPane")
            await wait_for(pilot, lambda: bench.validation is not None, 60, "validation")
            cells = _cells(app.query_one("#bench-steps"))
            assert any("[smol.L12, smol.L13]" in cell for cell in cells), cells
            # steps are named by position, as the validator's lines are
            assert "step 2" in cells and "step 1" in cells
            prompt = app.query_one("#prompt")
            prompt.value = "The [bold] Eiffel Tower is in"
            await pilot.press("r")
            await wait_for(pilot, lambda: app.last_report.prompt.startswith("The [bold]") and app.job is None,
                           60, "the run")
            assert "[bold]" in str(app.query_one("#status").render())
            assert "[bold]" in str(app.query_one("#guesses").render())

    run(scenario())


def test_fill_a_head_builds_a_recipe_that_validates_and_builds(smollm2, tmp_path, garage_home):
    out = tmp_path / "filled"
    garage_home.mkdir(parents=True)

    async def scenario():
        # the validator and the builder read parts from GARAGE_HOME's bin: the app's bin is that one
        app = make_app(smollm2, home=garage_home)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            await goto(pilot, "L11.attn.h4")
            await pilot.press("x")
            await wait_idle(pilot)
            bench = app.query_one("BenchPane")
            await pilot.press("4", "n")
            await wait_for(pilot, lambda: bench.validation is not None and bench.validation.ok, 60, "identity")
            # L2-3 left out: the hybrid's L10 is the source's L12, so the numbering matters
            bench.set_recipe({**bench.recipe, "layers": [{"take": "src.L0-1"}, {"take": "src.L4-29"}]}, 1)
            await wait_for(pilot, lambda: bench.validation is not None and bench.validation.layers == 28, 60, "28")
            await pilot.press("p")
            await _answer(pilot, "L10.attn.h4")
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "AskScreen", 30, "the parts that fit")
            name = app.screen.query_one("Input").value
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(bench.recipe["layers"]) == 4, 30, "the split recipe")
            await wait_for(pilot, lambda: bench.validation is not None and bench.validation.layers == 28, 60, "check")
            assert bench.recipe["layers"] == [
                {"take": "src.L0-1"}, {"take": "src.L4-11"},
                {"take": "src.L12", "heads": [{"head": 4, "part": name, "kv": "keep"}]}, {"take": "src.L13-29"}]
            assert bench.validation.ok, bench.validation.problems
            return bench.recipe

    recipe = run(scenario())
    import torch
    from safetensors import safe_open

    from engine.build import build, load_recipe

    build(load_recipe(recipe), out)
    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as handle:
        q = handle.get_tensor("model.layers.10.self_attn.q_proj.weight")
    layers = smollm2.model.model.layers
    head_dim = q.shape[0] // 9
    rows = slice(4 * head_dim, 5 * head_dim)
    # hybrid L10 is source L12, except head 4, which is the part (source L11's head 4)
    assert torch.equal(q[rows], layers[11].self_attn.q_proj.weight.detach()[rows].to(q.dtype))
    assert torch.equal(q[:4 * head_dim], layers[12].self_attn.q_proj.weight.detach()[:4 * head_dim].to(q.dtype))


def test_list_keys_filter_copy_and_highlighted_row(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            for address in ("L3.mlp", "L10.attn.h3", "L12.mlp"):
                await goto(pilot, address)
                await pilot.press("x")
                await wait_idle(pilot)
            await pilot.press("3")
            pane = app.query_one("PartsPane")
            await wait_for(pilot, lambda: len(pane.rows) == 3, 30, "three parts")
            table = app.query_one("#parts-table")
            await pilot.press("G")
            assert table.cursor_row == 2
            await pilot.press("g")
            assert table.cursor_row == 0
            await pilot.press("j")
            seen = pane.rows[table.cursor_row]["name"]
            await pilot.press("d")
            await pilot.pause()
            assert seen in str(app.screen.query_one("Static").render()), "d offered another part than the one seen"
            await pilot.press("n")
            # y copies the highlighted part's record
            await pilot.press("y")
            assert json.loads(app.clipboard)["name"] == seen
            # the filter narrows as you type, on every column (kind here), Esc clears
            await pilot.press("slash")
            await _type(pilot, "head")
            await pilot.pause()
            assert [r["kind"] for r in pane.rows] == ["head"]
            await pilot.press("escape")
            await pilot.pause()
            assert len(pane.rows) == 3
            # the bench and help answer to the same keys
            await pilot.press("4", "n")
            await pilot.pause()
            steps = app.query_one("#bench-steps")
            await pilot.press("g")
            assert steps.cursor_row == 0
            await pilot.press("j")
            assert steps.cursor_row == 1
            await pilot.press("y")
            assert "src.L0-29" in app.clipboard
            await pilot.press("question_mark")
            await pilot.pause()
            help_table = app.screen.query_one("#help-table")
            await pilot.press("j", "j")
            assert help_table.cursor_row == 2
            await pilot.press("G")
            assert help_table.cursor_row == help_table.row_count - 1
            await pilot.press("escape")
            # y on the diagnostics copies the stats it shows
            await pilot.press("2")
            await wait_idle(pilot)
            await pilot.press("y")
            assert "absmax" in app.clipboard

    run(scenario())


def test_edits_rerun_show_the_union_and_keys_during_a_run_count(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            clean = dict(app.last_report.top)
            await goto(pilot, "L0")
            await pilot.press("a")  # no r: the edit re-runs the prompt, as v does
            await wait_for(pilot, lambda: app.last_report.interventions == ["zero-ablate L0"] and app.job is None,
                           60, "the re-run")
            report = app.last_report
            tokens = [g.token for g in report.guesses]
            # every token of either top list is shown, with both probabilities
            assert set(clean) <= set(tokens) and {t for t, _ in report.top} <= set(tokens)
            assert len(tokens) > 5, "zeroing L0 should change the top tokens"
            paris = next(g for g in report.guesses if g.token == " Paris")
            assert paris.before == pytest.approx(clean[" Paris"], rel=1e-5) and paris.prob is not None
            shown = str(app.query_one("#guesses").render())
            assert "' Paris'" in shown and f"{clean[' Paris']:.3f}" in shown
            # a key pressed while the re-run goes is not dropped: m toggles and runs again
            await pilot.press("m")
            await pilot.pause()
            assert [i.describe() for i in app.garage.interventions] == ["zero-ablate L0", "mean-ablate L0"]
            await wait_for(pilot, lambda: len(app.last_report.interventions) == 2 and app.job is None, 60, "")

    run(scenario())


def test_80x24_keeps_essential_keys_and_guesses(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            await goto(pilot, "L10.attn.h3")
            await pilot.pause()
            from textual.widgets._footer import FooterKey

            visible = {key.description for key in app.query(FooterKey)
                       if key.region.width and key.region.right <= 80}
            assert {"Help", "Quit", "Run", "Save"} <= visible, visible
            guesses = app.query_one("#guesses")
            assert guesses.region.height >= 6, "the bay shows fewer than 5 guesses at 80×24"
            assert guesses.region.bottom <= 24

    run(scenario())


def test_session_title_and_notes_are_shown_and_kept(smollm2, tmp_path):
    document = {"kind": "model-garage-session", "version": 1,
                "models": [{"name": "smollm2-135m", "spec": "smollm2-135m"}], "active": "smollm2-135m",
                "prompt": "The Eiffel Tower is in the city of", "selected": "L10", "interventions": [],
                "pane": "bay", "title": "A [short] tour", "notes": ["press a on a head", "then r"]}
    path = tmp_path / "tour.json"
    path.write_text(json.dumps(document), encoding="utf-8")

    async def scenario():
        app = make_app(smollm2, home=tmp_path, session=path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            assert "A [short] tour" in str(app.query_one("#pane-strip").render())
            await pilot.press("question_mark")
            await pilot.pause()
            shown = str(app.screen.query_one("#help-session").render())
            assert "A [short] tour" in shown and "press a on a head" in shown
            await pilot.press("escape")
            session = app.current_session()
            assert session.title == "A [short] tour" and session.notes == ["press a on a head", "then r"]

    run(scenario())


def test_charts_say_what_they_show(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            await goto(pilot, "L10.attn.h3")
            await pilot.press("a")
            await wait_for(pilot, lambda: app.last_report.interventions and app.job is None, 60, "the edited run")
            await pilot.press("2")
            await wait_idle(pilot)
            entropy = app.query_one("#entropy-plot").plt.build()
            assert "press A" in entropy, "the entropy chart is an empty frame"
            norms = app.query_one("#norm-plot").plt.build()
            # now and before are told apart by their markers, not only by colour
            assert "•" in norms and "x before" in norms
            histogram = app.query_one("#hist-plot").plt.build()
            assert not re.search(r"\d\.\d{6,}", histogram), "raw floats on the histogram's axes"
            assert "activation value" in histogram

    run(scenario())
