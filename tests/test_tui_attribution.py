"""The attribution screen wired into the garage, driven by keys on the real SmolLM2."""

from __future__ import annotations

import re

import pytest
from test_tui_support import make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow


def test_attribution_node_jumps_to_the_bay_and_ablating_it_changes_the_guess(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_idle(pilot)
            clean_prob = app.last_report.top[0][1]
            await pilot.press("T")
            from garage_tui.screens.attribution import AttributionScreen, shipped_tasks
            from garage_tui.widgets.attribution_view import PENDING, AttributionView, part_of

            assert isinstance(app.screen, AttributionScreen)
            assert shipped_tasks() == ["antonyms", "capitals", "ioi", "sentiment"]
            await pilot.press("down", "enter")  # the second task: capitals
            assert app.screen.task_name == "capitals"
            view = app.screen.query_one(AttributionView)
            await wait_for(pilot, lambda: not view.running, 240, "the attribution job")
            report = view.report
            assert report is not None and report.task == "capitals" and report.n_pairs == 4
            exact = view.exact_column()
            assert len(exact) == 10 and PENDING not in exact
            # the scored estimate and the exact patch are different numbers on a real model
            nodes = report.top_nodes(10)
            assert any(float(e) != pytest.approx(n.score, abs=1e-6) for e, n in zip(exact, nodes, strict=True))
            # the faithfulness line shows the engine's figures: the same pairs and method, run again here
            from engine.attribution import attribute, load_task
            from garage_tui.screens.attribution import ATTRIBUTION_PAIRS

            with app.screen.workbench.model_lock:
                again = attribute(smollm2, load_task("capitals", ATTRIBUTION_PAIRS), method="atp", top=10)
            assert again.faithfulness is not None and view.faithfulness is not None
            shown = [(int(n), float(v)) for n, v in re.findall(r"n=(\d+): (-?[0-9.]+)", view.faithfulness_shown())]
            assert [n for n, _ in shown] == again.faithfulness.sizes == [1, 2, 5, 10, 20, 50]
            assert [v for _, v in shown] == pytest.approx(again.faithfulness.recovered, abs=6e-4)
            assert view.faithfulness.recovered == pytest.approx(again.faithfulness.recovered, abs=1e-6)
            assert "faithfulness of atp's top-n heads and MLPs" in view.faithfulness_shown()
            top = part_of(report.top_nodes(10)[0].address)
            await pilot.press("enter")  # the highlighted (top) node
            await wait_for(pilot, lambda: not isinstance(app.screen, AttributionScreen), 10, "the bay")
            await pilot.pause()
            assert app.pane == "bay" and app.garage.selected == top
            first = app.last_report
            await pilot.press("a")
            await wait_for(pilot, lambda: app.last_report is not first and app.job is None, 120, "the ablated run")
            assert [i.address for i in app.garage.interventions] == [top]
            report = app.last_report
            assert report.baseline_top[0][1] == pytest.approx(clean_prob, rel=1e-6)
            assert abs(report.top[0][1] - clean_prob) > 1e-4

    run(scenario())


def test_attribution_q_goes_back_and_esc_stops(smollm2, tmp_path):
    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_idle(pilot)
            from garage_tui.screens.attribution import AttributionScreen
            from garage_tui.widgets.attribution_view import AttributionView

            await pilot.press("T", "m", "m")  # atp → eap → eap-ig
            assert app.screen.method == "eap-ig" and "with eap-ig" in str(app.screen.query_one(
                "#attribution-title").render())
            await pilot.press("enter")  # antonyms
            view = app.screen.query_one(AttributionView)
            # "eap-ig running", or already "eap-ig scored … re-check running" on an idle machine
            assert "eap-ig " in str(view.query_one("#attribution-status").render())
            await pilot.press("escape")
            await wait_for(pilot, lambda: not view.running, 120, "the stopped job")
            status = str(view.query_one("#attribution-status").render())
            assert "cancelled" in status or "Spearman" in status
            await pilot.press("q")
            await pilot.pause()
            assert not isinstance(app.screen, AttributionScreen)

    run(scenario())
