"""Steering from the engine bay: ``v`` asks for prompts, the engine computes the vector, sessions keep it."""

from __future__ import annotations

import pytest
import torch
from test_tui_support import goto, make_app, run, wait_for, wait_idle

from engine.sessions import load_session

pytestmark = pytest.mark.slow


async def _type(pilot, text: str) -> None:
    await pilot.press("ctrl+a", "ctrl+k")
    for char in text:
        await pilot.press(char if char != " " else "space")


def test_steer_a_layer_by_key_then_save_and_restore(smollm2, tmp_path):
    from engine.analyzers.steering import steering_vector

    path = tmp_path / "steered.json"
    notes: list[tuple[str, str | None]] = []

    async def steer_and_save():
        app = make_app(smollm2, home=tmp_path)
        original = app.notify
        app.notify = lambda message, **kw: (notes.append((message, kw.get("severity"))), original(message, **kw))[1]
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            clean = app.last_report.top
            # a head cannot be steered: v is off there (not in the footer); called anyway, it says why
            await goto(pilot, "L10.attn.h3")
            assert not app.check_action("steer_part", ())
            await pilot.press("v")
            await pilot.pause()
            assert app.screen.__class__.__name__ == "Screen" and app.garage.interventions == []
            notes.clear()
            app.action_steer_part()
            assert len(notes) == 1 and "cannot steer L10.attn.h3" in notes[0][0]
            await goto(pilot, "L10")
            await pilot.press("v")
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "SteerScreen", 10, "the steer dialog")
            # the defaults: love vs hate at strength 4
            assert app.screen.query_one("#steer-positive").value == "I love you"
            assert app.screen.query_one("#steer-negative").value == "I hate you"
            assert app.screen.query_one("#steer-strength").value == "4"
            await pilot.press("enter", "enter")
            await _type(pilot, "lots")
            await pilot.press("enter")
            await pilot.pause()
            # a bad strength is refused in the dialog, which stays open
            assert app.screen.__class__.__name__ == "SteerScreen"
            assert "strength must be a number" in str(app.screen.query_one("#steer-problem").render())
            await _type(pilot, "4")
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.last_report.interventions == ["steer L10 (strength 4)"]
                           and app.job is None, 120, "the steered run")
            report = app.last_report
            assert [i.to_dict() for i in app.garage.interventions] == [
                {"kind": "steer", "address": "L10", "strength": 4.0,
                 "origin": {"positive": ["I love you"], "negative": ["I hate you"]}}]
            # before/after: the baseline is the clean run, the steered top tokens differ
            assert report.baseline_top == pytest.approx(clean)
            assert [t for t, _ in report.top] != [t for t, _ in clean]
            assert report.norms[:10] == pytest.approx(report.baseline_norms[:10], rel=1e-6)
            assert report.norms[10] != pytest.approx(report.baseline_norms[10], rel=1e-3)
            detail = str(app.query_one("#part-detail").render())
            assert "steer L10 (strength 4)" in detail
            assert "now  before" in str(app.query_one("#guesses").render())
            from garage_tui.widgets.part_tree import PartTree

            assert "steer +4" in app.query_one(PartTree).nodes_by_address["L10"].label.plain
            await pilot.press("ctrl+s")
            await pilot.pause()
            await _type(pilot, str(path))
            await pilot.press("enter")
            await wait_for(pilot, path.exists, 10, "the session file")
            # v again takes the steer off and re-runs clean
            await pilot.press("v")
            await wait_for(pilot, lambda: app.last_report.interventions == [] and app.job is None, 120,
                           "the unsteered run")
            assert app.garage.interventions == []
            assert [t for t, _ in app.last_report.top] == [t for t, _ in clean]

    run(steer_and_save())
    origin = {"positive": ["I love you"], "negative": ["I hate you"]}
    assert load_session(path).interventions == [{"kind": "steer", "address": "L10", "strength": 4.0, "origin": origin}]
    fresh = steering_vector(smollm2, 10, ["I love you"], ["I hate you"]).vector

    async def restore():
        app = make_app(smollm2, home=tmp_path, session=path)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.last_report is not None and app.job is None, 120, "the restored run")
            [item] = app.garage.interventions
            assert item.kind == "steer" and item.address == "L10" and item.strength == 4.0
            assert torch.equal(item.vector, fresh)
            assert app.last_report.interventions == ["steer L10 (strength 4)"]
            assert app.garage.selected == "L10"

    run(restore())
