"""Screenshots of every screen, taken with ``App.save_screenshot`` in one Pilot run.

The test checks each screen shows what the README says it shows; with
``GARAGE_UPDATE_DOCS=1`` it also writes them to ``docs/`` (the README's images).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_tui_support import goto, make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow
DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_screenshots_of_every_screen(smollm2, tmp_path):
    out = DOCS if os.environ.get("GARAGE_UPDATE_DOCS") == "1" else tmp_path / "docs"
    out.mkdir(parents=True, exist_ok=True)

    async def shoot(pilot, name: str) -> str:
        app = pilot.app
        app.clear_notifications()
        app.set_status("")
        await wait_for(pilot, lambda: not app.screen.query("Toast"), 10, "the notifications to clear")
        await pilot.wait_for_scheduled_animations()
        path = app.save_screenshot(filename=f"{name}.svg", path=str(out))
        return Path(path).read_text(encoding="utf-8")

    async def scenario():
        app = make_app(smollm2, home=tmp_path / "home")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_idle(pilot)
            await goto(pilot, "L10.attn.h3")
            await pilot.press("x")
            await wait_idle(pilot)
            await pilot.press("a", "r")
            await wait_for(pilot, lambda: app.last_report.interventions and app.job is None, 60, "the run")
            shots = {"engine-bay": await shoot(pilot, "engine-bay")}
            await pilot.press("2")
            await wait_idle(pilot)  # entering the pane re-runs the prompt for the new selection
            await pilot.press("A")
            await wait_for(pilot, lambda: app.query_one("DiagnosticsPane").attention is not None, 120, "attention")
            shots["diagnostics"] = await shoot(pilot, "diagnostics")
            await pilot.press("c", "c")  # entropy → pattern → residual norms
            shots["diagnostics-norms"] = await shoot(pilot, "diagnostics-norms")
            await pilot.press("3")
            await wait_for(pilot, lambda: app.query_one("PartsPane").rows, 30, "the parts table")
            shots["parts-bin"] = await shoot(pilot, "parts-bin")
            bench = app.query_one("BenchPane")
            await pilot.press("4")
            await pilot.pause()
            await pilot.press("n")
            await wait_for(pilot, lambda: bench.validation is not None, 60, "validation")
            shots["build-bench"] = await shoot(pilot, "build-bench")
            await pilot.press("question_mark")
            shots["help"] = await shoot(pilot, "help")
        return shots

    shots = run(scenario())
    # SVG text replaces spaces with non-breaking ones; compare on plain words
    words = {name: svg.replace("\xa0", " ").replace("&#160;", " ") for name, svg in shots.items()}
    assert "KV group 1" in words["engine-bay"] and "ablated" in words["engine-bay"]
    assert "entropy" in words["diagnostics"] and "absmax" in words["diagnostics"]
    assert "residual norm" in words["diagnostics-norms"]
    assert "L10.attn.h3" in words["parts-bin"] and "sha256" in words["parts-bin"]
    assert "valid" in words["build-bench"] and "src.L0-29" in words["build-bench"]
    assert "bay.ablate" in words["help"]
    assert sorted(p.name for p in out.glob("*.svg")) == sorted(f"{name}.svg" for name in shots)
