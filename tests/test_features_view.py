"""Pilot tests of the features view: a real overview job on SmolLM2 (slow), Esc stopping a job,
and Enter posting the chosen feature."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from textual.app import App, ComposeResult

from garage_tui.widgets.features_view import FeaturesView


class ViewApp(App):
    def __init__(self) -> None:
        super().__init__()
        self.chosen: list[tuple[str, int]] = []

    def compose(self) -> ComposeResult:
        yield FeaturesView(id="features")

    def on_features_view_feature_chosen(self, message: FeaturesView.FeatureChosen) -> None:
        self.chosen.append((message.address, message.feature))


async def wait_for(pilot, condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def test_escape_stops_a_running_job():
    from engine.errors import Cancelled

    started = threading.Event()

    def job(cancel: threading.Event):
        started.set()
        cancel.wait(20)
        raise Cancelled("reading features was cancelled; no partial result was kept")

    async def scenario():
        app = ViewApp()
        async with app.run_test(size=(120, 36)) as pilot:
            view = app.query_one(FeaturesView)
            view.start(job, "L15.out")
            await wait_for(pilot, started.is_set, 10, "the job to start")
            assert "Esc stops" in view.status()
            view.query_one("#features-table").focus()
            await pilot.press("escape")
            await wait_for(pilot, lambda: not view.running, 10, "the job to stop")
            assert "cancelled" in view.status()

    asyncio.run(scenario())


@pytest.mark.slow
def test_real_overview_on_smollm2_draws_rows_detail_and_enter_chooses(smollm2):
    from engine.features.corpus import read_texts
    from engine.features.reading import features_overview
    from tests.test_features_smollm2 import _random_topk

    coder = _random_topk(d_sae=512)
    texts = read_texts(["sample"])

    def job(cancel: threading.Event):
        return features_overview(smollm2, coder, "L15.out", "The mechanic fixed the engine.", texts, k=4,
                                 max_tokens=256, cancel=cancel)

    async def scenario():
        app = ViewApp()
        async with app.run_test(size=(140, 40)) as pilot:
            view = app.query_one(FeaturesView)
            view.start(job, "L15.out")
            await wait_for(pilot, lambda: not view.running, 240, "the overview")
            overview = view.overview
            assert overview is not None and 1 <= len(overview.features) <= 4
            table = view.query_one("#features-table")
            assert table.row_count == len(overview.features)
            first = overview.features[0]
            assert f"feature #{first.feature}" in view.detail()
            assert first.top_tokens and first.top_tokens[0].token.replace("\n", "⏎") in view.detail()
            assert "active on the prompt" in view.status()
            table.focus()
            await pilot.press("enter")
            await pilot.pause()
            assert app.chosen == [("L15.out", first.feature)]

    asyncio.run(scenario())
