"""Issue 15 in the TUI: the transfer screen's ``J`` takes ``TASK [stratified|random]`` and its table shows the
split control beside the isotropic one; the build bench's ``l`` adds a ``blade`` finish op from the bin,
after every op that changes the weights. On tiny random Llamas with a character tokenizer."""

from __future__ import annotations

import math

import pytest
from test_tui_support import make_app, run, wait_for, wait_idle
from test_tui_transfer import _answer, fitted_pair, open_transfer, pair  # noqa: F401 (fixtures this module's tests take)

from garage_tui.screens.transfer import JUDGED_COLUMNS, SPLITS, judge_request, judged_rows
from garage_tui.widgets.bench_pane import blade_op, with_weight_op


def _notes(app):
    notes = []
    original = app.notify
    app.notify = lambda message, **kw: (notes.append((message, kw.get("severity"))), original(message, **kw))[1]
    return notes


def test_the_screen_offers_the_engines_splits_and_parses_the_answer():
    from engine.transfer.judge import SPLITS as ENGINE_SPLITS

    assert SPLITS == ENGINE_SPLITS  # the default is the first of each
    assert judge_request("sentiment random") == ("sentiment", "random")
    assert judge_request("  capitals  ") == ("capitals", "stratified")
    assert judge_request("antonyms stratified") == ("antonyms", "stratified")
    for bad in ("sentiment shuffled", "sentiment random 3"):
        with pytest.raises(ValueError) as caught:
            judge_request(bad)
        assert "stratified" in str(caught.value) and "random" in str(caught.value) and "\n" not in str(caught.value)


def test_the_judged_rows_put_the_split_control_beside_the_isotropic_one():
    from engine.transfer.judge import StrengthJudgement

    # beats 3× the isotropic control (0.5 ≥ 0.3) but not 3× the split one (0.5 < 0.9)
    strength = StrengthJudgement(2.0, native=0.6, mapped=0.5, random=0.1, kl_native=0.2, kl_mapped=0.3, kl_random=2.0,
                                 ppl_native=10.0, ppl_mapped=11.0, ppl_random=30.0, split=0.3, kl_split=0.25,
                                 ppl_split=10.5)
    assert strength.works and not strength.works_in_distribution
    row = dict(zip(JUDGED_COLUMNS, judged_rows([strength])[0], strict=True))
    assert row["random"] == "0.1000" and row["vs random"] == "5.0×" and row["works (random)"] == "yes"
    assert row["split"] == "0.3000" and row["vs split"] == "1.7×" and row["works (split)"] == "no"
    assert row["mapped/native"] == "83%" and row["damage×"] == "1.50"
    unrun = StrengthJudgement(1.0, 0.6, 0.5, 0.1, 0.2, 0.3, 2.0, 10.0, 11.0, 30.0)  # no split control: NaN, not 0
    assert math.isnan(unrun.split)
    assert dict(zip(JUDGED_COLUMNS, judged_rows([unrun])[0], strict=True))["vs split"] == "nan×"


@pytest.mark.slow  # a real judge on the tiny pair inside the app: ~15 s, too much for the quick lane
def test_judge_takes_the_split_word_and_shows_the_split_control(fitted_pair, garage_home, tmp_path,  # noqa: F811
                                                                 monkeypatch):
    import engine.transfer.judge as judge_module

    loaded_a = fitted_pair[0]
    calls = []
    real = judge_module.judge_transfer

    def spy(*args, **kwargs):
        calls.append(kwargs.get("split"))
        return real(*args, **kwargs)

    monkeypatch.setattr(judge_module, "judge_transfer", spy)

    async def scenario():
        app = make_app(loaded_a, home=tmp_path / "bin", model=loaded_a.name)
        notes = _notes(app)
        async with app.run_test(size=(150, 46)) as pilot:
            await wait_idle(pilot, 120)
            screen = await open_transfer(app, pilot, fitted_pair)
            notes.clear()
            await pilot.press("J")
            question = await _answer(app, pilot, "sentiment shuffled")
            assert "stratified, random" in question
            await pilot.pause(0.2)
            # one error naming the allowed words, and no job
            assert len(notes) == 1 and notes[0][1] == "error", notes
            assert "stratified" in notes[0][0] and "random" in notes[0][0] and "Traceback" not in notes[0][0]
            assert screen.job is None and calls == [] and screen.judgement is None

            await pilot.press("J")
            await _answer(app, pilot, "sentiment random")
            await wait_for(pilot, lambda: screen.job is None and screen.judgement is not None, 180, "the judge")
            judged = screen.judgement
            assert calls == ["random"]
            assert judged.split_kind == "random" and {c.kind for c in judged.splits} == {"random"}
            table = screen.query_one("#transfer-table")
            assert [str(c.label) for c in table.columns.values()] == JUDGED_COLUMNS
            assert table.row_count == len(judged.strengths)
            for index, strength in enumerate(judged.strengths):
                row = dict(zip(JUDGED_COLUMNS, [str(cell) for cell in table.get_row_at(index)], strict=True))
                assert row["split"] == f"{strength.split:.4f}" and row["random"] == f"{strength.random:.4f}"
                assert row["vs split"] == f"{strength.over_split:.1f}×"
                assert row["works (split)"] == ("yes" if strength.works_in_distribution else "no")
            status = str(screen.query_one("#transfer-status").render())
            assert "(random split)" in status and f"{judged.over_split:.1f}× split" in status

            # the default answer is the engine's default cut
            await pilot.press("J")
            await _answer(app, pilot, None)
            await wait_for(pilot, lambda: screen.job is None and screen.judgement is not judged, 180, "the 2nd judge")
            assert calls == ["random", "stratified"] and screen.judgement.split_kind == "stratified"

    run(scenario())


def test_weight_ops_go_before_trailing_blades_and_a_blade_answer_is_one_name():
    bake = {"op": "bake", "kind": "head-scale", "head": "L1.H0", "factor": 0.5}
    blade = {"op": "blade", "part": "x"}
    widen = {"op": "widen", "width": 96}
    assert with_weight_op([], bake) == ([bake], 0)
    assert with_weight_op([widen, blade], bake) == ([widen, bake, blade], 1)
    assert with_weight_op([widen], bake) == ([widen, bake], 1)
    assert blade_op(" a-into-b ") == {"op": "blade", "part": "a-into-b"}
    with pytest.raises(ValueError, match="one blade part"):
        blade_op("a b")


@pytest.fixture()
def with_blade(garage_home, tmp_path):
    """Tiny B open, and a blade from tiny A's L2 into it in the bin at GARAGE_HOME (where the recipe check looks)."""
    from test_transfer_blade_recipe import tiny_folder, train_part

    from engine.loading import open_model

    folder_a, folder_b = tiny_folder(tmp_path / "tiny-a", 0), tiny_folder(tmp_path / "tiny-b", 1)
    part = train_part(folder_a, folder_b, "a-into-b")
    return open_model(str(folder_b)), part


def test_bench_blade_key_appends_the_op_last_and_the_recipe_is_checked(with_blade, garage_home):
    loaded_b, part = with_blade

    async def scenario():
        app = make_app(loaded_b, home=garage_home, model=loaded_b.name)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            await pilot.press("4", "n")
            bench = app.query_one("BenchPane")
            await wait_for(pilot, lambda: bench.validation is not None and bench.validation.ok, 60, "the identity")

            async def checked(what: str) -> None:
                recipe = bench.recipe
                await wait_for(pilot, lambda: bench.recipe is recipe and bench.validation is not None
                               and bench.validation is not before, 60, what)

            before = bench.validation
            await pilot.press("l")
            question = await _answer(app, pilot, None)  # the bin's blade is offered first
            assert f"blades in the bin: {part}" in question
            assert bench.recipe["finish"] == [{"op": "blade", "part": part}]
            await checked("the blade's check")
            assert bench.validation.ok, bench.validation.problems

            # a bake added after it goes before it: a blade must follow every op that changes the weights
            before = bench.validation
            await pilot.press("a")
            await _answer(app, pilot, "head-scale L1.H0 0.5")
            assert bench.recipe["finish"] == [{"op": "bake", "kind": "head-scale", "head": "L1.H0", "factor": 0.5},
                                              {"op": "blade", "part": part}]
            await checked("the bake's check")
            assert bench.validation.ok, bench.validation.problems
            steps = app.query_one("#bench-steps")
            assert steps.cursor_row == 1 + len(bench.recipe["layers"])  # the new bake row (row 0 is the sources)

            # a name the bin does not hold: the check says so about the blade's part
            before = bench.validation
            await pilot.press("l")
            await _answer(app, pilot, "no-such-blade")
            assert bench.recipe["finish"][-1] == {"op": "blade", "part": "no-such-blade"}
            await checked("the bad blade's check")
            assert not bench.validation.ok and any("finish" in p and "part" in p for p in bench.validation.problems)

    run(scenario())
