"""ctrl+s saves the workbench; a session restores it exactly (CLI option and palette)."""

from __future__ import annotations

import pytest
from test_tui_support import goto, make_app, run, wait_for, wait_idle

from engine.sessions import load_session

pytestmark = pytest.mark.slow
# seconds to wait for the app to go idle: on a loaded 2-core machine a first run can take minutes
IDLE = 240


def test_save_then_restore_exactly(smollm2, tmp_path):
    path = tmp_path / "saved.json"

    async def save():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot, timeout=IDLE)
            await goto(pilot, "L10.attn.h3")
            await pilot.press("a", "m")  # zero-ablate toggled, then a mean-ablation added
            # the re-run must end first: Esc in the prompt cancels a job in flight and keeps the focus
            # there (so the "2" below would be typed), and under load the run outlasts the typing
            await wait_idle(pilot, timeout=IDLE)
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
            await wait_idle(pilot, timeout=IDLE)
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
            await wait_idle(pilot, timeout=IDLE)
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


def test_session_restores_the_tree_expansion_and_the_last_results(smollm2, tmp_path):
    """Open nodes and the last run come back with a session, not only the edits."""
    from engine.sessions import save_session

    path = tmp_path / "view.json"

    async def save():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot, timeout=IDLE)
            await goto(pilot, "L3.mlp")  # opens L3 on the way
            await goto(pilot, "L12.attn.h1")  # opens L12 and L12.attn
            await pilot.press("h", "h")  # cursor up to L12.attn, then closes it
            await goto(pilot, "L20")
            await pilot.press("l")  # opens L20
            await pilot.press("r")
            await wait_idle(pilot, timeout=IDLE)
            tree = app.part_tree()
            expanded = tree.expanded_addresses()
            save_session(path, app.current_session())
            return expanded, app.garage.selected, [(g.token, g.prob) for g in app.last_report.guesses]

    expanded, selected, guesses = run(save())
    assert expanded == ["L3", "L12", "L20"] and selected == "L20"
    saved = load_session(path)
    assert saved.ui["expanded"] == expanded
    assert [g["token"] for g in saved.ui["report"]["guesses"]] == [t for t, _ in guesses]
    assert len(saved.ui["report"]["norms"]) == 30

    async def restore():
        app = make_app(smollm2, home=tmp_path, session=path)
        notes = []
        original = app.notify
        app.notify = lambda message, **kw: (notes.append(message), original(message, **kw))[1]
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot, timeout=IDLE)
            tree = app.part_tree()
            assert tree.expanded_addresses() == expanded  # L12.attn stays closed, as it was left
            assert app.garage.selected == selected and tree.cursor_node.data == selected
            restored = [(g.token, g.prob) for g in app.last_report.guesses]
            assert [t for t, _ in restored] == [t for t, _ in guesses]
            assert all(abs(p - q) < 1e-4 for (_, p), (_, q) in zip(restored, guesses, strict=True))
            assert not [n for n in notes if "differs from the saved session" in n]

    run(restore())


def test_saved_run_differences_are_named():
    from types import SimpleNamespace

    from garage_tui.ui_state import differences, expanded_of, report_summary

    def report(*guesses):
        return SimpleNamespace(prompt="p", model="m", interventions=[], norms=[1.0],
                               guesses=[SimpleNamespace(token=t, prob=p, before=None) for t, p in guesses])

    saved = report_summary(report((" Paris", 0.5), (" London", 0.2)))
    assert differences(saved, report((" Paris", 0.5), (" London", 0.2))) == []
    assert differences(saved, report((" Paris", 0.5), (" London", 0.3))) == ["guess probabilities moved"]
    assert "now [' London', ' Paris']" in differences(saved, report((" London", 0.5), (" Paris", 0.2)))[0]
    other = report((" Rome", 0.9))
    other.prompt = "another prompt"
    assert differences(saved, other) == []  # not the same run: nothing to compare
    assert expanded_of({"expanded": ["L3", 4, None]}) == ["L3"] and expanded_of(None) == []


def test_old_session_files_load_without_view_state(tmp_path):
    import json

    from engine.sessions import SessionError, parse_session

    old = {"kind": "model-garage-session", "version": 1, "pane": "bay", "prompt": "x"}
    assert parse_session(old).ui is None
    with pytest.raises(SessionError, match="'ui' must be null or an object"):
        parse_session({**old, "ui": ["L3"]})
    path = tmp_path / "new.json"
    path.write_text(json.dumps({**old, "ui": {"expanded": ["L3"], "report": None}}))
    assert load_session(path).ui == {"expanded": ["L3"], "report": None}
