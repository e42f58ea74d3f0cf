"""The features screen wired into the garage, driven by keys on the real SmolLM2 with an SAE part at L15.out."""

from __future__ import annotations

import pytest
from test_tui_support import goto, make_app, run, wait_for, wait_idle

pytestmark = pytest.mark.slow


def _save_random_sae(home, loaded) -> str:
    """A random-weight TopK SAE for SmolLM2's L15 residual, catalogued in the bin the app uses."""
    from engine.features.parts import save_coder
    from engine.parts import PartsBin
    from tests.test_features_smollm2 import _random_topk

    record = save_coder(PartsBin(home), loaded, _random_topk(d_sae=512), "L15.out", name="smollm2-l15-sae")
    return str(record.name)


def test_choosing_a_feature_ablates_it_and_the_run_changes(smollm2, tmp_path):
    name = _save_random_sae(tmp_path, smollm2)

    async def scenario():
        app = make_app(smollm2, home=tmp_path)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_idle(pilot)
            clean_prob = app.last_report.top[0][1]
            from garage_tui.screens.features import FeaturesScreen
            from garage_tui.widgets.features_view import FeaturesView

            await goto(pilot, "L14")
            await pilot.press("f")  # no SAE reads L14: one line says so
            assert isinstance(app.screen, FeaturesScreen)
            view = app.screen.query_one(FeaturesView)
            await wait_for(pilot, lambda: not view.running, 60, "the refusal")
            assert "no SAE part in the parts bin reads L14" in view.status() and view.overview is None
            await pilot.press("q")
            await goto(pilot, "L15")
            await pilot.press("f")
            view = app.screen.query_one(FeaturesView)
            await wait_for(pilot, lambda: not view.running, 240, "the features overview")
            overview = view.overview
            assert overview is not None and overview.address == "L15.out" and overview.coder
            assert 1 <= len(overview.features) <= 8 and "active on the prompt" in view.status()
            feature = overview.features[0].feature
            first = app.last_report
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.last_report is not first and app.job is None, 120, "the edited run")
            assert not isinstance(app.screen, FeaturesScreen) and app.pane == "bay"
            [item] = app.garage.interventions
            assert item.to_dict()["part"] == name and item.to_dict()["edits"] == [
                {"op": "ablate", "features": [feature], "value": 0.0}]
            report = app.last_report
            assert report.baseline_top[0][1] == pytest.approx(clean_prob, rel=1e-6)
            assert abs(report.top[0][1] - clean_prob) > 1e-6
            # choosing it again takes the edit off
            await pilot.press("f")
            view = app.screen.query_one(FeaturesView)
            await wait_for(pilot, lambda: not view.running, 240, "the features overview again")
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.job is None and not app.garage.interventions, 120, "the edit off")

    run(scenario())
