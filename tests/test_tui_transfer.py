"""The transfer view on two tiny random Llamas sharing a character tokenizer (A: 4 layers × 64 wide,
the app's open model; B: 3 layers × 48, picked by path): pick B and the addresses, fit a stitch,
Esc stops a sweep, the R² heat map, the bay's steer moved into B with guesses beside A's, the judge
with its controls, and a blade whose loss is drawn as it trains. Each number is checked against
the engine called directly."""

from __future__ import annotations

import pytest
from test_tui_search import tiny_llama_folder
from test_tui_support import hold, make_app, run, wait_for, wait_idle

from garage_tui.screens.transfer import blade_step, heat_cells, top_guesses

TEXT_CHARS = 6_000


def test_helpers():
    assert blade_step("training the blade at L1.out: step 3/10, loss 2.125") == (3, 10, 2.125)
    assert blade_step("reading the task") is None
    assert heat_cells([[1.0, -0.5], [0.5, float("nan")]]) == [[255, 0], [128, 0]]

    class G:
        def __init__(self, text, prob, before):
            self.text, self.prob, self.prob_before = text, prob, before

    guesses = [G("a", 0.1, 0.5), G("b", 0.7, None), G("c", 0.2, 0.3)]
    assert top_guesses(guesses, False) == [("b", 0.7), ("c", 0.2), ("a", 0.1)]
    assert top_guesses(guesses, True) == [("a", 0.5), ("c", 0.3)]


@pytest.fixture()
def pair(tmp_path):
    from engine.loading import open_model

    folder_a = tiny_llama_folder(tmp_path / "tiny-a", layers=4, width=64, seed=0)
    folder_b = tiny_llama_folder(tmp_path / "tiny-b", layers=3, width=48, seed=1)
    return open_model(str(folder_a)), folder_b


@pytest.fixture()
def fitted_pair(pair):
    """(A, B open, the ridge stitch A L2.out → B L1.out)."""
    from engine.loading import open_model
    from engine.transfer.fitting import fit_stitch
    from engine.transfer.pairs import stitch_text

    loaded_a, folder_b = pair
    loaded_b = open_model(str(folder_b))
    return loaded_a, loaded_b, fit_stitch(loaded_a, loaded_b, "L2.out", "L1.out", stitch_text(max_chars=TEXT_CHARS))


async def open_transfer(app, pilot, fitted_pair):
    """The transfer view over an already fitted pair, as if A, B and the stitch had been set up there."""
    from garage_tui.screens.transfer import TransferScreen

    loaded_a, loaded_b, fitted = fitted_pair
    app.workbench.transfer.update(a=loaded_a, b=loaded_b, address_a="L2.out", address_b="L1.out",
                                  kind="ridge", stitch=fitted)
    await pilot.press("X")
    screen = app.screen
    assert isinstance(screen, TransferScreen) and screen.stitch_report is fitted
    return screen


async def _answer(app, pilot, line: str | None) -> str:
    """Answer the open question with ``line`` (None keeps the offered value); returns the question."""
    from textual.widgets import Input

    from garage_tui.screens.ask import AskScreen

    await wait_for(pilot, lambda: isinstance(app.screen, AskScreen), 30, "the question")
    question = app.screen.question
    if line is not None:
        app.screen.query_one(Input).value = line
    await pilot.press("enter")
    await pilot.pause()
    return question


async def finish(pilot, screen, result, what: str) -> None:
    """Until the screen's job ends; then its result must be there (else the status line says why)."""
    await wait_for(pilot, lambda: screen.job is None, 300, what)
    assert result(), f"{what}: {screen.query_one('#transfer-status').render()}"


@pytest.mark.slow  # a Pilot walk with real workers (tens of seconds): not for the quick lane
def test_transfer_view_fit_sweep_steer_judge_blade(pair, garage_home, tmp_path, monkeypatch):
    import engine.transfer.sweep as sweep_module
    import garage_tui.screens.transfer as transfer_screen
    from engine.analyzers.steering import steer_from_prompts
    from engine.interventions import steer
    from engine.prompt_report import prompt_report
    from engine.transfer.fitting import fit_stitch
    from engine.transfer.judge import judge_transfer
    from engine.transfer.pairs import stitch_text
    from engine.transfer.prompts import load_task
    from garage_tui.screens.transfer import TransferScreen

    loaded_a, folder_b = pair
    monkeypatch.setattr(transfer_screen, "TEXT_CHARS", TEXT_CHARS)
    item = steer_from_prompts(loaded_a, "L2", ["I love this, it is great"], ["I hate this, it is awful"], 4.0)

    async def scenario():
        app = make_app(loaded_a, home=tmp_path / "bin", model=loaded_a.name)
        async with app.run_test(size=(150, 46)) as pilot:
            await wait_idle(pilot, 180)
            app.workbench.toggle(item)  # the bay's steer (what v makes), carried across by t
            await pilot.press("X")
            screen = app.screen
            assert isinstance(screen, TransferScreen) and screen.loaded_b is None
            await pilot.press("b")
            await _answer(app, pilot, str(folder_b))
            await finish(pilot, screen, lambda: screen.loaded_b, "model B")
            assert screen.loaded_b.anatomy.n_layers == 3
            await pilot.press("a")
            await _answer(app, pilot, "L2.out L1.out ridge")
            await pilot.press("f")
            await finish(pilot, screen, lambda: screen.stitch_report, "the stitch")
            fitted = screen.stitch_report
            loaded_b = screen.loaded_b
            direct = fit_stitch(loaded_a, loaded_b, "L2.out", "L1.out", stitch_text(max_chars=TEXT_CHARS))
            assert fitted.held_out.r2 == pytest.approx(direct.held_out.r2, abs=1e-9)
            assert fitted.loss is not None and fitted.loss.loss_stitched == pytest.approx(direct.loss.loss_stitched)
            metrics = str(screen.query_one("#transfer-metrics").render())
            assert f"{direct.held_out.r2:.4f}" in metrics and "loss recovered" in metrics

            # Esc stops a sweep held in flight; the next one runs to its heat map
            gate = hold(monkeypatch, sweep_module, "sweep_layers")
            await pilot.press("w")
            await wait_for(pilot, lambda: screen.job == "sweep", 10, "the sweep to start")
            await pilot.press("escape")
            await wait_for(pilot, lambda: screen.job is None, 180, "the stopped sweep")
            assert "cancelled" in str(screen.query_one("#transfer-status").render()) and screen.sweep is None
            gate.set()
            await pilot.press("w")
            await finish(pilot, screen, lambda: screen.sweep, "the sweep")
            assert len(screen.sweep.r2) == 4 and len(screen.sweep.r2[0]) == 3  # every layer of both (k = 1)
            assert screen.sweep.r2[2][1] == pytest.approx(direct.held_out.r2, abs=1e-6)  # A L2 → B L1 as fitted

            await pilot.press("t")
            await finish(pilot, screen, lambda: screen.columns, "the transfer")
            prompt = app.workbench.prompt
            on_b = prompt_report(loaded_b, prompt, [steer("L1.out", fitted.stitch.map_direction(item.vector), 4.0)],
                                 None, top_k=5)
            mapped_top = max(on_b.guesses, key=lambda g: g.prob)
            assert screen.columns["B mapped"][0] == (mapped_top.text, pytest.approx(mapped_top.prob))
            assert screen.columns["A steered"] != screen.columns["A before"]
            assert set(screen.columns) == {"A before", "A steered", "B before", "B mapped", "B native"}

            await pilot.press("J")
            await _answer(app, pilot, "sentiment")
            await finish(pilot, screen, lambda: screen.judgement, "the judge")
            judged = judge_transfer(loaded_a, loaded_b, "L2.out", "L1.out", fitted.stitch, load_task("sentiment"))
            assert [s.mapped for s in screen.judgement.strengths] == pytest.approx([s.mapped for s in judged.strengths])
            assert [s.random for s in screen.judgement.strengths] == pytest.approx([s.random for s in judged.strengths])
            assert screen.query_one("#transfer-table").row_count == 4

            await pilot.press("l")
            await _answer(app, pilot, "antonyms 4")
            await finish(pilot, screen, lambda: screen.blade_report, "the blade")
            report = screen.blade_report
            assert len(report.log.losses) == 4 and screen.losses == report.log.losses
            assert screen.query_one("#transfer-table").row_count == 3
            # the view keeps B and the stitch for the next visit
            await pilot.press("q", "X")
            again = app.screen
            assert isinstance(again, TransferScreen) and again.loaded_b is loaded_b
            assert again.stitch_report is fitted

    run(scenario())


@pytest.mark.slow  # real blade training in a Pilot walk
def test_blade_loss_is_drawn_against_the_training_step_when_posts_are_throttled(fitted_pair, garage_home, tmp_path,
                                                                                monkeypatch):
    """Progress posts are throttled (most steps never reach the screen), yet every point of the loss
    chart sits at the step the trainer was at, and the x-axis spans the whole run."""
    import threading

    import engine.transfer.blade_train as blade_train
    import garage_tui.jobs as jobs

    loaded_a = fitted_pair[0]
    steps = 40
    monkeypatch.setattr(jobs, "PROGRESS_INTERVAL", 1.0)  # far longer than 40 steps of these tiny models
    trained, gate = threading.Event(), threading.Event()
    real_train = blade_train.train_blade

    def train_then_wait(*args, **kwargs):  # hold the job after the last step, before its result replaces the points
        log = real_train(*args, **kwargs)
        trained.set()
        gate.wait(60)
        return log

    monkeypatch.setattr(blade_train, "train_blade", train_then_wait)

    async def scenario():
        app = make_app(loaded_a, home=tmp_path / "bin", model=loaded_a.name)
        async with app.run_test(size=(150, 46)) as pilot:
            await wait_idle(pilot, 180)
            screen = await open_transfer(app, pilot, fitted_pair)
            await pilot.press("l")
            await _answer(app, pilot, f"antonyms {steps}")
            await wait_for(pilot, trained.is_set, 120, "the blade's training steps")
            # the throttle's timer still posts the last step it folded away
            await wait_for(pilot, lambda: screen.loss_steps and screen.loss_steps[-1] == steps, 10, "the last step")
            live = list(zip(screen.loss_steps, screen.losses, strict=True))
            chart = screen.query_one("#transfer-loss").plt.monitor
            assert chart.x[-1] == screen.loss_steps and chart.y[-1] == screen.losses
            assert chart.xlim[0] == [0, steps]
            gate.set()
            await finish(pilot, screen, lambda: screen.blade_report, "the blade")
            chart = screen.query_one("#transfer-loss").plt.monitor
            assert chart.x[-1] == list(range(1, steps + 1)) and chart.y[-1] == screen.blade_report.log.losses
            return live, screen.blade_report.log.losses

    live, losses = run(scenario())
    assert len(live) < steps / 2, "the throttle should have folded most steps away"
    assert [step for step, _ in live] == sorted({step for step, _ in live})
    for step, loss in live:  # the progress line rounds the loss to 3 decimals
        assert loss == pytest.approx(losses[step - 1], abs=5e-4), step
