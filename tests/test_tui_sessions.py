"""ctrl+s saves the workbench; a session restores it exactly (CLI option and palette)."""

from __future__ import annotations

import pytest
from test_tui_support import goto, make_app, run, wait_for, wait_idle

from engine.sessions import load_session

pytestmark = pytest.mark.slow


def test_save_then_restore_exactly(smollm2, tmp_path):
    path = tmp_path / "saved.json"

    async def save():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await goto(pilot, "L10.attn.h3")
            await pilot.press("a", "m")  # zero-ablate toggled, then a mean-ablation added
            await pilot.press("i", "ctrl+a", "ctrl+k")
            for char in "Hello world":
                await pilot.press(char if char != " " else "space")
            await pilot.press("escape", "2", "ctrl+t")
            theme = app.theme
            await pilot.press("ctrl+s")
            await pilot.pause()
            await pilot.press("ctrl+a", "ctrl+k")
            for char in str(path):
                await pilot.press(char)
            await pilot.press("enter")
            await wait_for(pilot, path.exists, 10, "the session file")
            return theme

    theme = run(save())
    saved = load_session(path)
    assert saved.selected == "L10.attn.h3" and saved.prompt == "Hello world"
    assert saved.view == "diagnostics" and saved.theme == theme
    assert [i["mode"] for i in saved.interventions] == ["zero", "mean"]

    async def restore():
        app = make_app(smollm2, home=tmp_path, session=path)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            assert app.garage.selected == "L10.attn.h3"
            from garage_tui.widgets.part_tree import PartTree

            assert app.query_one(PartTree).cursor_node.data == "L10.attn.h3"
            assert [i.describe() for i in app.garage.interventions] == [
                "zero-ablate L10.attn.h3", "mean-ablate L10.attn.h3"]
            assert app.query_one("#prompt").value == "Hello world"
            assert app.pane == "diagnostics" and app.query_one("#panes").current == "diagnostics"
            assert app.theme == theme
            # the restored edits are applied to the restored prompt's run
            assert app.last_report.prompt == "Hello world"
            assert app.last_report.interventions == ["zero-ablate L10.attn.h3", "mean-ablate L10.attn.h3"]

    run(restore())


def test_palette_open_session_and_bad_session_is_one_notification(smollm2, tmp_path):
    bad = tmp_path / "future.json"
    bad.write_text('{"kind": "model-garage-session", "version": 99}')
    from pathlib import Path

    tour = Path(__file__).resolve().parent.parent / "sessions" / "smollm2-tour.json"

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        notes = []
        original = app.notify
        app.notify = lambda message, **kw: (notes.append((message, kw.get("severity"))), original(message, **kw))[1]
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            notes.clear()
            app.restore_session_file(bad)
            await pilot.pause()
            assert len(notes) == 1 and notes[0][1] == "error" and "newer than this garage" in notes[0][0]
            await pilot.press("ctrl+o")
            await pilot.pause()
            await pilot.press("ctrl+a", "ctrl+k")
            for char in str(tour):
                await pilot.press(char)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.garage.selected == "L10.attn.h3" and app.garage.interventions, 30,
                           "the tour session")
            assert [i.describe() for i in app.garage.interventions] == ["zero-ablate L10.attn.h3"]

    run(scenario())
