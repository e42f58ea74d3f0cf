"""Pilot tests of the attribution view, driven by a real attribution job on a small linear model."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import torch
from textual.app import App, ComposeResult

from engine.attribution import Attributor
from garage_tui.widgets.attribution_view import (
    FAITH_WAITING,
    PENDING,
    AttributionView,
    faithfulness_cells,
    heat_cells,
    part_of,
)
from tests.test_attribution import LinearLM, linear_graph, random_groups


def linear_job() -> Attributor:
    torch.manual_seed(0)
    model = LinearLM().double().eval()
    return Attributor(model, linear_graph(), lambda m, ids: m(ids)[:, -1], random_groups(), name="linear")


class ViewApp(App):
    def __init__(self) -> None:
        super().__init__()
        self.selected: list[str] = []

    def compose(self) -> ComposeResult:
        yield AttributionView(top=6, id="attribution")

    def on_attribution_view_node_selected(self, message: AttributionView.NodeSelected) -> None:
        self.selected.append(message.address)


async def wait_for(pilot, condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def status_of(view: AttributionView) -> str:
    return str(view.query_one("#attribution-status").render())


def shown_faithfulness(view: AttributionView) -> list[tuple[int, str]]:
    return [(int(n), value) for n, value in re.findall(r"n=(\d+): (-?[0-9.]+)", view.faithfulness_shown())]


def test_scores_show_then_the_exact_column_fills_in_and_enter_jumps():
    async def scenario():
        app = ViewApp()
        async with app.run_test(size=(120, 36)) as pilot:
            view = app.query_one(AttributionView)
            lock = threading.Lock()
            held: list[bool] = []

            def job_under_lock() -> Attributor:
                held.append(lock.locked())
                return linear_job()

            view.start(job_under_lock, "eap", lock=lock)
            await wait_for(pilot, lambda: not view.running, 60, "the job")
            assert held == [True] and not lock.locked()
            assert view.report is not None and view.report.method == "eap"
            exact = view.exact_column()
            assert len(exact) == 6 and PENDING not in exact
            # on a linear model the exact patching equals the estimate, digit for digit
            scores = [f"{entry.score:.4f}" for entry in view.report.top_nodes(6)]
            assert exact == scores
            assert "Spearman ρ 1.000" in status_of(view)
            # the faithfulness line is the engine's, for the same inputs run again outside the view
            again = linear_job()
            expected = again.faithfulness(again.score("eap"))
            assert view.faithfulness is not None and view.faithfulness.recovered == expected.recovered
            shown = shown_faithfulness(view)
            assert shown == faithfulness_cells(expected) and [n for n, _ in shown] == [1, 2, 5, 9]
            assert shown[-1][1] == "1.000"  # all 9 heads and MLPs kept clean: the clean run itself
            assert "faithfulness of eap's top-n heads and MLPs" in view.faithfulness_shown()
            view.query_one("#attribution-nodes").focus()
            await pilot.press("enter")
            await pilot.pause()
            assert app.selected == [part_of(view.report.nodes[0].address)]

    asyncio.run(scenario())


def test_escape_stops_the_job():
    gate = threading.Event()

    def slow_job() -> Attributor:
        gate.wait(10)
        return linear_job()

    async def scenario():
        app = ViewApp()
        async with app.run_test(size=(120, 36)) as pilot:
            view = app.query_one(AttributionView)
            view.start(slow_job, "atp")
            view.query_one("#attribution-nodes").focus()
            await pilot.press("escape")
            assert "stopping" in status_of(view)
            gate.set()
            await wait_for(pilot, lambda: not view.running, 30, "the cancelled job")
            assert "cancelled" in status_of(view) and view.report is None
            assert view.faithfulness_shown() == FAITH_WAITING and view.faithfulness is None

    asyncio.run(scenario())


def test_helpers():
    assert part_of("L3.out@4") == "L3" and part_of("L3.attn.h2") == "L3.attn.h2"
    assert heat_cells([[1.0, -2.0], [0.0, 0.5]]) == [[128, 255], [0, 64]]
