"""Diagnostics pane: attention on demand, head importance with progress and Esc to cancel."""

from __future__ import annotations

import pytest
from test_tui_support import goto, hold, make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow


def test_attention_charts_match_the_engine(smollm2, tmp_path):
    from engine.analyzers.attention import attention_report

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            await goto(pilot, "L10.attn.h3")
            await pilot.press("2")
            await wait_idle(pilot)  # entering the pane re-runs the prompt for the new selection
            await pilot.press("A")
            pane = app.query_one("DiagnosticsPane")
            await wait_for(pilot, lambda: pane.attention is not None, 120, "the attention report")
            engine_report = attention_report(smollm2, app.prompt_text)
            assert pane.attention.entropy == pytest.approx(engine_report.entropy_grid()[10], rel=1e-5)
            assert [sum(row) for row in pane.attention.pattern] == pytest.approx([1.0] * len(engine_report.tokens))
            assert app.query_one("#chart-switcher").current == "entropy-plot"
            await pilot.press("c")
            assert app.query_one("#chart-switcher").current == "pattern-plot"

    run(scenario())


def test_head_importance_shows_progress_and_cancels(smollm2, tmp_path, monkeypatch):
    import engine.analyzers.importance

    hold(monkeypatch, engine.analyzers.importance, "head_importance")

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        notes = []
        original = app.notify
        app.notify = lambda message, **kw: (notes.append(message), original(message, **kw))[1]
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await goto(pilot, "L10.attn.h3")
            await pilot.press("2")
            await wait_idle(pilot)  # entering the pane re-runs the prompt for the new selection
            await pilot.press("I")
            await pilot.pause()
            assert app.job == "importance" and app.query_one("#progress").display, notes
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.job is None, 60, "the cancel")
            assert "importance cancelled" in notes
            assert app.query_one("DiagnosticsPane").importance is None

    run(scenario())
