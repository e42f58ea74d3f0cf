"""Habits: help lists every binding and every binding fires; panes, palette, quit, themes, keymap."""

from __future__ import annotations

import json

import pytest
import yaml
from test_tui_support import goto, hold, make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow


def _spy_actions(monkeypatch, fired):
    """Wrap every garage action so a test sees which ones a key press ran."""
    from garage_tui.app import GarageApp
    from garage_tui.keymap import _binding_sources

    seen = set()
    for _, owner in _binding_sources(GarageApp):
        for binding in owner.BINDINGS:
            name = binding.action.removeprefix("app.").split("(")[0]
            owner_cls = owner
            if binding.action.startswith("app."):
                from garage_tui.app import GarageApp

                owner_cls = GarageApp
            key = (owner_cls, name)
            if key in seen:
                continue
            seen.add(key)
            original = getattr(owner_cls, f"action_{name}", None)
            if original is None:
                original = getattr(owner_cls.__mro__[1], f"action_{name}")

            def wrapper(self, *args, _original=original, _name=name):
                fired.append(_name)
                return _original(self, *args)

            monkeypatch.setattr(owner_cls, f"action_{name}", wrapper)


def test_every_binding_in_help_fires(smollm2, tmp_path, monkeypatch):
    fired: list[str] = []
    _spy_actions(monkeypatch, fired)

    async def press(pilot, key, action):
        fired.clear()
        await pilot.press(key)
        await pilot.pause()
        assert action in fired, f"key {key!r} did not run {action} (ran {fired})"

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            from garage_tui.keymap import binding_rows

            rows = binding_rows(app)
            ids = {row[3] for row in rows}
            # help shows each binding (by id) exactly once
            assert len(ids) == len(rows)
            await press(pilot, "question_mark", "show_help")
            assert app.screen.query_one("#help-table").row_count == len(rows)
            await press(pilot, "escape", "dismiss")
            await press(pilot, "f1", "show_help")
            await press(pilot, "q", "dismiss")
            # the part tree
            from garage_tui.widgets.part_tree import PartTree

            app.query_one(PartTree).focus()
            for key, action in (("home", "scroll_home"), ("g", "scroll_home"), ("j", "cursor_down"),
                                ("k", "cursor_up"), ("j", "cursor_down"), ("l", "expand_part"),
                                ("right", "expand_part"), ("h", "collapse_part"), ("left", "collapse_part"),
                                ("G", "scroll_end"), ("end", "scroll_end")):
                await press(pilot, key, action)
            # the bay, on a head
            await goto(pilot, "L10.attn.h3")
            for key, action in (("a", "toggle_intervention"), ("m", "toggle_intervention"),
                                ("s", "toggle_intervention"), ("c", "clear_interventions"),
                                ("x", "extract_part")):
                await press(pilot, key, action)
            await wait_idle(pilot)
            assert not app.check_action("steer_part", ())  # a head cannot be steered: v is off
            await goto(pilot, "L10")
            await press(pilot, "v", "steer_part")  # a layer: the steer dialog
            assert app.screen.__class__.__name__ == "SteerScreen"
            await press(pilot, "escape", "cancel")
            await goto(pilot, "L10.attn.h3")
            await press(pilot, "slash", "goto_part")
            await press(pilot, "escape", "cancel")  # the question screen
            # app-wide keys
            await press(pilot, "y", "copy_selection")
            await press(pilot, "ctrl+t", "next_theme")
            await press(pilot, "ctrl+o", "open_session")
            await press(pilot, "escape", "cancel")
            await press(pilot, "ctrl+s", "save_session")
            await press(pilot, "escape", "cancel")
            await press(pilot, "i", "focus_prompt")
            await press(pilot, "escape", "leave_prompt")
            import engine.prompt_report

            gate = hold(monkeypatch, engine.prompt_report, "prompt_report")
            await press(pilot, "r", "run_prompt")
            await press(pilot, "escape", "cancel_job")
            gate.set()
            await wait_for(pilot, lambda: app.job is None, 60, "the cancelled run")
            # diagnostics
            await press(pilot, "2", "show_pane")
            await wait_idle(pilot)
            await press(pilot, "j", "cursor_down")  # the stats table has the keys: one set of list keys
            await press(pilot, "k", "cursor_up")
            await press(pilot, "c", "next_chart")
            await press(pilot, "A", "attention")
            await wait_idle(pilot)
            import engine.analyzers.importance

            hold(monkeypatch, engine.analyzers.importance, "head_importance")
            await press(pilot, "I", "importance")
            await press(pilot, "escape", "cancel_job")
            await wait_for(pilot, lambda: app.job is None, 60, "the cancelled importance job")
            # parts bin (one part was extracted above)
            await press(pilot, "3", "show_pane")
            await wait_for(pilot, lambda: app.query_one("PartsPane").rows, what="the parts table")
            await press(pilot, "ctrl+r", "reload")
            await wait_idle(pilot)
            await press(pilot, "v", "verify")
            await wait_idle(pilot)
            await press(pilot, "t", "tag")
            await press(pilot, "escape", "cancel")
            await press(pilot, "n", "note")
            await press(pilot, "escape", "cancel")
            await press(pilot, "slash", "filter")
            await press(pilot, "escape", "clear_filter")
            await press(pilot, "slash", "filter")
            await pilot.press("enter")
            await press(pilot, "d", "remove")
            await press(pilot, "n", "answer")  # confirm screen: no
            await press(pilot, "delete", "remove")
            await press(pilot, "escape", "answer")
            await press(pilot, "4", "show_pane")
            bench = app.query_one("BenchPane")
            await press(pilot, "n", "new_recipe")
            await wait_for(pilot, lambda: bench.validation is not None, 60, "validation")
            for key, action, answer in (("t", "add_take", "enter"), ("b", "add_blend", "escape"),
                                        ("e", "edit_step", "escape"), ("p", "pick_part", "escape"),
                                        ("w", "write_recipe", "escape"), ("o", "open_recipe", "escape"),
                                        ("J", "move_step", None), ("K", "move_step", None),
                                        ("d", "delete_step", None)):
                await press(pilot, key, action)
                if answer:
                    await pilot.press(answer)
                await wait_idle(pilot)
            await wait_for(pilot, lambda: bench.validation and bench.validation.ok, 60, "a valid recipe")
            await press(pilot, "B", "build")
            await pilot.press("escape")
            await press(pilot, "1", "show_pane")
            await press(pilot, "q", "quit_garage")
        # every binding the help lists was pressed above, except ctrl+p which Textual owns
        pressed = {name for name in fired}
        assert pressed  # the app exited through q

    run(scenario())


def test_panes_have_numbered_titles_and_jump(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            for key, pane, title in (("2", "diagnostics", "2 Diagnostics"), ("3", "parts", "3 Parts bin"),
                                     ("4", "bench", "4 Build bench"), ("1", "bay", "1 Engine bay")):
                await pilot.press(key)
                assert app.query_one("#panes").current == pane
                assert app.query_one(f"#{pane}").border_title == title
                assert app.focused is not None and pane in [a.id for a in app.focused.ancestors_with_self]

    run(scenario())


def test_footer_shows_only_keys_that_work(smollm2, tmp_path, monkeypatch):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_idle(pilot)

            def footer_keys():
                return {binding.action for _, binding, enabled, *_ in app.screen.active_bindings.values() if enabled}

            assert "cancel_job" not in {a.split("(")[0] for a in footer_keys()}
            assert not app.check_action("clear_interventions", ())
            await goto(pilot, "L10.attn.h3")
            assert app.check_action("toggle_intervention", ("ablate",))
            await pilot.press("a")
            assert app.check_action("clear_interventions", ())
            import engine.prompt_report

            gate = hold(monkeypatch, engine.prompt_report, "prompt_report")
            await pilot.press("r")
            assert app.job == "run" and app.check_action("cancel_job", ())
            assert "cancel_job" in {a.split("(")[0] for a in footer_keys()}
            gate.set()
            await wait_idle(pilot)
            assert not app.check_action("cancel_job", ())

    run(scenario())


def test_palette_offers_every_action(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_idle(pilot)
            titles = [command.title for command in app.get_system_commands(app.screen)]
            for expected in ("Ablate (engine bay)", "Save (everywhere)", "Open session (everywhere)",
                             "Extract (engine bay)", "Steer (engine bay)", "Verify (parts bin)",
                             "Theme: garage-light", "Run (everywhere)"):
                assert expected in titles
            await pilot.press("ctrl+p")
            await pilot.pause()
            assert app.screen.__class__.__name__ == "CommandPalette"
            for char in "Theme: garage-contrast":
                await pilot.press(char)

            def offered() -> bool:
                # the palette searches in a worker; Enter picks the top hit once the search is done
                commands = app.screen.query_one("CommandList")
                searching = any(w.is_running and w.group == "--textual-command-palette-gather-commands"
                                for w in app.workers)
                return (not searching and commands.highlighted is not None
                        and "garage-contrast" in str(commands.get_option_at_index(commands.highlighted).prompt))

            await wait_for(pilot, offered, 10, "the palette to offer the theme")
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.theme == "garage-contrast", 10, "the palette's theme command")

    run(scenario())


def test_quit_confirms_while_a_job_runs(smollm2, tmp_path, monkeypatch):
    import threading

    import engine.prompt_report

    gate = threading.Event()
    real_norms = engine.prompt_report.prompt_report

    def held_norms(*args, **kwargs):
        gate.wait(30)  # keeps the run going until the test has asked to quit
        return real_norms(*args, **kwargs)

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            monkeypatch.setattr(engine.prompt_report, "prompt_report", held_norms)
            await pilot.press("r", "q")
            await pilot.pause()
            assert app.job == "run" and app.screen.__class__.__name__ == "ConfirmScreen"
            await pilot.press("n")
            await pilot.pause()
            assert app.is_running and app.screen.__class__.__name__ == "Screen"
            gate.set()
            await wait_idle(pilot)
            await pilot.press("q")
            await pilot.pause()
        assert not app.is_running

    run(scenario())


def test_theme_switch_is_remembered_and_copy_uses_osc52(smollm2, garage_home):
    async def scenario():
        app = make_app(smollm2, home=garage_home)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            assert app.theme == "garage"
            assert {"garage", "garage-light", "garage-contrast", "garage-ansi"} <= set(app.theme_names)
            await pilot.press("ctrl+t")
            changed = app.theme
            assert changed != "garage"
            await goto(pilot, "L10.attn.h3")
            await pilot.press("y")
            assert app.clipboard.startswith("L10.attn.h3")
        saved = yaml.safe_load((garage_home / "settings.yaml").read_text())
        assert saved["theme"] == changed
        again = make_app(smollm2, home=garage_home)
        async with again.run_test(size=(80, 24)):
            assert again.theme == changed

    run(scenario())


def test_keymap_file_rebinds_keys(smollm2, tmp_path, garage_home):
    garage_home.mkdir(parents=True)
    (garage_home / "keymap.yaml").write_text("bay.ablate: b\napp.run: f5\n")

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            await goto(pilot, "L10.attn.h3")
            await pilot.press("a")
            assert app.garage.interventions == []
            await pilot.press("b")
            assert [i.describe() for i in app.garage.interventions] == ["zero-ablate L10.attn.h3"]
            from garage_tui.keymap import binding_rows

            assert ("engine bay", "b", "Ablate", "bay.ablate") in binding_rows(app)
            first = app.last_report
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.last_report is not first and app.job is None, 60, "the f5 run")
            assert app.last_report.interventions == ["zero-ablate L10.attn.h3"]

    run(scenario())


def test_no_color_and_ansi_theme(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")

    async def scenario():
        app = make_app(smollm2, home=tmp_path, theme="garage-ansi")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            assert app.no_color and app.theme == "garage-ansi"
            await goto(pilot, "L10.attn.h3")
            await pilot.press("a")
            assert len(app.garage.interventions) == 1

    run(scenario())


def test_failing_model_load_is_one_notification(tmp_path):
    from garage_tui.factory import build_app

    async def scenario():
        app = build_app(None, None, None, model=str(tmp_path / "no-such-model"))
        notes = []
        original = app.notify
        app.notify = lambda message, **kw: (notes.append((message, kw.get("severity"))), original(message, **kw))[1]
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.job is None and notes, 120, "the load to fail")
            # every worker has ended, so a second notification could no longer come
            await wait_for(pilot, lambda: not any(w.is_running for w in app.workers), 30, "the workers to end")
            assert app.is_running
        assert len(notes) == 1
        message, severity = notes[0]
        assert severity == "error" and "no such model" in message and "Traceback" not in message

    run(scenario())


def test_settings_file_broken_is_ignored(garage_home):
    from garage_tui.settings import load_settings

    garage_home.mkdir(parents=True)
    (garage_home / "settings.yaml").write_text("theme: [unclosed\n")
    assert load_settings().theme == "garage"
    (garage_home / "settings.yaml").write_text(json.dumps({"theme": "garage-light"}))
    assert load_settings().theme == "garage-light"
