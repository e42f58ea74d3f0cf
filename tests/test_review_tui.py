"""The TUI as a keyboard user over SSH meets it (80x24, no mouse): each test a bug a review found, now fixed."""

from __future__ import annotations

import json
import threading

import pytest
from test_tui_support import hold, make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow

SIZE = (80, 24)


def _session(tmp_path, name="review.json", **extra):
    document = {"kind": "model-garage-session", "version": 1,
                "models": [{"name": "smollm2-135m", "spec": "smollm2-135m"}], "active": "smollm2-135m",
                "prompt": "The Eiffel Tower is in the city of", "selected": "L10", "interventions": [],
                "pane": "bay"}
    document.update(extra)
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


async def _type(pilot, text):
    for char in text:
        await pilot.press("space" if char == " " else char)


async def _answer(pilot, text):
    """Replace the open question's text with ``text`` and press Enter."""
    await pilot.pause()
    await pilot.press("ctrl+a", "ctrl+k")
    await _type(pilot, text)
    await pilot.press("enter")
    await pilot.pause()


def _record_notes(app):
    """Every notification the app sends, as ``(message, severity)``."""
    notes = []
    original = app.notify

    def record(message, **options):
        notes.append((message, options.get("severity", "information")))
        return original(message, **options)

    app.notify = record
    return notes


def _record_ends(app):
    """The cancel and failure messages the app's workers post, as they are posted."""
    from garage_tui.messages import JobCancelled, JobFailed

    ended = []
    original = app.post_message

    def record(message):
        if isinstance(message, (JobCancelled, JobFailed)):
            ended.append(message)
        return original(message)

    app.post_message = record
    return ended


def _errors(app):
    return [n.message for n in app._notifications if n.severity == "error"]


def test_session_pane_receives_the_keys(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path, session=_session(tmp_path, pane="parts"))
        async with app.run_test(size=SIZE) as pilot:
            await wait_idle(pilot)
            assert app.pane == "parts"
            await pilot.press("slash")
            await pilot.pause()
            from garage_tui.screens.ask import AskScreen

            assert not isinstance(app.screen, AskScreen), "/ on the parts bin opened the bay's Go to box"
            assert app.query_one("#parts-filter").display, "/ on the parts bin did not open its filter"

    run(scenario())


def test_blend_without_refs_is_a_notification_and_numbers_are_not_refs(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_idle(pilot)
            await pilot.press("4", "n")
            await pilot.pause()
            from garage_tui.widgets.bench_pane import BenchPane

            bench = app.query_one(BenchPane)
            alias = next(iter(bench.recipe["sources"]))
            await pilot.press("b")
            await _answer(pilot, "L12 L13")  # forgot the alias: no ref has a dot
            await pilot.pause()
            assert app.is_running
            assert len(_errors(app)) == 1, "a blend without refs should be refused with one notification"
            await pilot.press("b")
            await _answer(pilot, f"{alias}.L12 {alias}.L13 slerp 0.25")
            assert bench.recipe["layers"][1] == {"blend": [f"{alias}.L12", f"{alias}.L13"], "method": "slerp",
                                                 "t": 0.25}

    run(scenario())


def test_malformed_session_recipe_is_refused(tmp_path):
    from engine.sessions import SessionError, load_session

    path = _session(tmp_path, recipe={"name": "broken", "sources": {"src": "smollm2-135m"}, "layers": 5})
    with pytest.raises(SessionError, match="'layers' must be a list"):
        load_session(path)
    path = _session(tmp_path, recipe={"name": "broken", "sources": ["smollm2-135m"], "layers": []})
    with pytest.raises(SessionError, match="'sources' must map an alias"):
        load_session(path)


def test_session_edit_on_a_missing_part_is_one_notification(smollm2, tmp_path):
    edits = [{"kind": "ablate", "address": "L99.mlp", "mode": "zero"},
             {"kind": "ablate", "address": "L10.attn.h3", "mode": "zero"}]
    path = _session(tmp_path, interventions=edits)

    async def scenario():
        app = make_app(smollm2, home=tmp_path, session=path)
        notes = _record_notes(app)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.loaded is not None and app.pending_session is None, 60, "restore")
            await wait_idle(pilot)
            assert [i.describe() for i in app.garage.interventions] == ["zero-ablate L10.attn.h3"]
            assert any("L99.mlp" in message for message, _ in notes), "an edit that fits no part went silently"

    run(scenario())


def test_keymap_entries_that_rebind_nothing_are_named(smollm2, tmp_path, garage_home):
    garage_home.mkdir(parents=True)
    (garage_home / "keymap.yaml").write_text("bay.ablatee: b\napp.help: ''\napp.run: f5\n")

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        notes = _record_notes(app)
        async with app.run_test(size=SIZE) as pilot:
            await wait_idle(pilot)
            # recorded as sent: a busy machine may outlast a notification's on-screen timeout
            warnings = [message for message, severity in notes if severity == "warning"]
            assert any("bay.ablatee" in w for w in warnings) and any("app.help" in w for w in warnings)
            from garage_tui.keymap import binding_rows

            rows = binding_rows(app)
            assert ("everywhere", "?,f1", "Help", "app.help") in rows, "an empty key must not unbind help"
            assert ("everywhere", "f5", "Run", "app.run") in rows

    run(scenario())


def test_open_recipe_with_bad_sources_is_a_notification(smollm2, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\nsources: [smollm2-135m]\nlayers: []\n", encoding="utf-8")

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_idle(pilot)
            await pilot.press("4", "o")
            await _answer(pilot, str(recipe))
            await wait_for(pilot, lambda: _errors(app) or not app.is_running, 10, "the recipe to be refused")
            assert app.is_running
            assert _errors(app), "a recipe whose sources are not a mapping should be one error line"

    run(scenario())


def test_rerun_keeps_the_running_job(smollm2, tmp_path, monkeypatch):
    import engine.prompt_report

    real = engine.prompt_report.prompt_report
    gates = [threading.Event(), threading.Event()]
    calls: list[int] = []

    def held(*args, **kwargs):
        gate = gates[min(len(calls), 1)]
        calls.append(1)
        gate.wait(30)
        return real(*args, **kwargs)

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_idle(pilot)
            ended = _record_ends(app)
            monkeypatch.setattr(engine.prompt_report, "prompt_report", held)
            try:
                await pilot.press("r")
                await wait_for(pilot, lambda: len(calls) == 1, 30, "the first run")
                await pilot.press("r")  # changed my mind: run again
                # the second run waits for the model the first still holds: let the first go on, so
                # it notices its cancel and ends; its worker posts what it posts and the app handles it
                gates[0].set()
                await wait_for(pilot, lambda: ended, 30, "the superseded run to end")
                await wait_for(pilot, lambda: len(calls) == 2, 30, "the second run")
                await pilot.pause()
                assert any(w.is_running and w.name == "_run_prompt" for w in app.workers)
                assert app.job == "run", f"a run is in flight but job is {app.job!r}"
                assert app.check_action("cancel_job", ()), "Esc cannot cancel the run in flight"
            finally:
                gates[0].set()
                gates[1].set()
            await wait_for(pilot, lambda: not any(w.is_running for w in app.workers), 60, "the second run")

    run(scenario())


def test_pick_part_during_build_keeps_building(smollm2, tmp_path, monkeypatch):
    import engine.build

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_idle(pilot)
            gate = hold(monkeypatch, engine.build, "build")
            try:
                await pilot.press("4", "n")
                bench = app.query_one("BenchPane")
                await wait_for(pilot, lambda: bench.validation is not None, 60, "the new recipe's check")
                await pilot.press("B")
                await _answer(pilot, str(tmp_path / "built"))
                await wait_for(pilot, lambda: app.job == "build", 10, "the build")
                notes = _record_notes(app)
                await pilot.press("p")  # meanwhile, look for a part to put in a head
                await _answer(pilot, "L10.attn.h3")
                # the parts lookup has answered: a note (no part fits) or the question which part to use
                await wait_for(pilot, lambda: notes or getattr(app.screen, "question", "").startswith("Parts that fit"),
                               30, "the parts lookup")
                building = [w for w in app.workers if w.name == "_build_and_evaluate" and w.is_running]
                assert building and app.job == "build", "looking up parts cancelled the build"
            finally:
                await pilot.press("escape")
                gate.set()
            await wait_for(pilot, lambda: app.job is None, 120, "the build to stop")

    run(scenario())


def test_open_session_without_recipe_clears_the_bench(smollm2, tmp_path):
    path = _session(tmp_path, selected="L3", recipe=None)

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_idle(pilot)
            await pilot.press("4", "n")  # a recipe on the bench
            await pilot.pause()
            await pilot.press("ctrl+o")
            await _answer(pilot, str(path))
            await wait_for(pilot, lambda: app.garage.selected == "L3", 30, "the restore")
            await wait_idle(pilot)
            from garage_tui.widgets.bench_pane import BenchPane

            assert app.query_one(BenchPane).recipe is None, "the restored session has no recipe"
            assert app.current_session().recipe is None

    run(scenario())


def test_parts_filter_escape_clears_and_leaves(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_idle(pilot)
            await pilot.press("3", "slash")
            await pilot.pause()
            await _type(pilot, "zzz")
            await pilot.press("escape")
            await pilot.pause()
            box = app.query_one("#parts-filter")
            assert box.value == "", "Esc did not clear the filter"
            await pilot.press("1")
            await pilot.pause()
            assert app.pane == "bay", "after Esc, 1 was typed into the filter instead of jumping to the bay"

    run(scenario())
