"""SVG snapshots of every pane at 80×24 and 120×40 (pytest-textual-snapshot).

Frames are deterministic: the real SmolLM2 on a fixed prompt, one intra-op thread (the last
digit of a statistic follows the summation order, which follows the thread count), no timings,
no paths of the temp folders on screen (status lines and notifications are cleared before the shot).
Regenerate after an intended UI change with ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import pytest
from test_tui_support import goto, make_app, wait_for, wait_idle

pytestmark = pytest.mark.slow

SIZES = [(80, 24), (120, 40)]


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


async def settle(pilot) -> None:
    await wait_idle(pilot)
    pilot.app.clear_notifications()
    pilot.app.set_status("")
    await pilot.pause()


def bay_with_ablated_head():
    async def before(pilot):
        await wait_idle(pilot)
        await goto(pilot, "L10.attn.h3")
        await pilot.press("a", "r")
        await wait_for(pilot, lambda: pilot.app.last_report and pilot.app.last_report.interventions, 60, "run")
        await settle(pilot)

    return before


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_engine_bay(snap_compare, smollm2, tmp_path, size):
    app = make_app(smollm2, home=tmp_path)
    assert snap_compare(app, terminal_size=size, run_before=bay_with_ablated_head())


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_diagnostics(snap_compare, smollm2, tmp_path, size):
    app = make_app(smollm2, home=tmp_path)
    before = bay_with_ablated_head()

    async def run_before(pilot):
        await before(pilot)
        await pilot.press("2")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_parts_bin(snap_compare, smollm2, tmp_path, size):
    app = make_app(smollm2, home=tmp_path)

    async def run_before(pilot):
        await wait_idle(pilot)
        for address in ("L10.attn.h3", "L3.mlp"):
            await goto(pilot, address)
            await pilot.press("x")
            await wait_idle(pilot)
        await pilot.press("3")
        await wait_for(pilot, lambda: len(pilot.app.query_one("PartsPane").rows) == 2, 30, "two parts")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_build_bench(snap_compare, smollm2, tmp_path, size):
    app = make_app(smollm2, home=tmp_path)

    async def run_before(pilot):
        await wait_idle(pilot)
        bench = pilot.app.query_one("BenchPane")
        await pilot.press("4", "n")
        await wait_for(pilot, lambda: bench.validation is not None, 60, "validation")
        await pilot.press("t")
        await pilot.pause()
        await pilot.press("ctrl+a", "ctrl+k", *"src.L8-15", "enter")
        await wait_for(pilot, lambda: len(bench.recipe["layers"]) == 2 and bench.validation.layers == 38,
                       60, "the new step validated")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_help_screen(snap_compare, smollm2, tmp_path):
    app = make_app(smollm2, home=tmp_path)

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
