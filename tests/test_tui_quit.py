"""``q`` while a job runs asks at once, even when the job floods progress and burns the CPU.

Engines report progress at every layer of every pass; each report used to become one message
on the UI thread's queue, so a busy job buried the ``q`` key behind thousands of them and the
question appeared only once the job ended. ``jobs.ProgressThrottle`` folds the reports.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from test_tui_support import run, wait_for
from textual.events import Key

from garage_tui import jobs
from garage_tui.jobs import ProgressThrottle, start_job

BURN = 0.00002  # seconds of pure-Python work between two reports


def _flooding_job(stop: threading.Event, seconds: float, ran: dict[str, float]):
    """A job that burns the CPU and reports progress every ~0.2 ms (a layer of a small model on a
    fast machine) until ``stop`` or a deadline."""

    def compute(ctx):
        started = time.monotonic()
        step = 0
        while not stop.is_set() and not ctx.cancel.is_set() and time.monotonic() - started < seconds:
            step += 1
            ctx.progress(f"layer {step % 30}", (step % 1000) / 1000)
            burn_until = time.perf_counter() + BURN
            while time.perf_counter() < burn_until:  # pure Python: holds the GIL like a hook does
                pass
        ran["seconds"] = time.monotonic() - started
        return None  # ends as "cancelled": the app's job line clears either way

    return compute


async def _ask_while_running(tmp_path, seconds: float) -> tuple[float, dict[str, float]]:
    """Start the flooding job, press ``q``; how long the question took, and how long the job ran."""
    from garage_tui.factory import build_app
    from garage_tui.screens.ask import ConfirmScreen
    from garage_tui.settings import load_settings

    # a model that cannot open: the load fails at once and no weights are needed
    app = build_app(None, None, None, settings=load_settings(tmp_path / "settings.yaml"),
                    model=str(tmp_path / "no-such-model"))
    stop, ran = threading.Event(), {}
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app._panes_ready and app.job is None, 60, "the failed load to settle")
        app.begin_job("flood", "flooding the queue…")
        start_job(app, "flood", _flooding_job(stop, seconds, ran), group="flood", name="_flood")
        await pilot.pause(0.3)  # let the reports pile up first
        pressed = time.monotonic()
        # as the terminal driver delivers a key; pilot.press would wait for the queue to drain
        app.post_message(Key("q", "q"))
        while time.monotonic() - pressed < seconds and not isinstance(app.screen, ConfirmScreen):
            await asyncio.sleep(0.02)
        waited = time.monotonic() - pressed
        job_was_running = "seconds" not in ran
        stop.set()
        # without the fix the queue holds minutes of reports here: fail now, not after draining it
        assert isinstance(app.screen, ConfirmScreen) and job_was_running, (
            f"no quit question within {waited:.1f} s while the job ran")
        await pilot.press("n")  # keep the garage open
        await wait_for(pilot, lambda: app.job is None, 60, "the job to end")
        assert app.is_running  # "n" kept it open
    return waited, ran


@pytest.mark.slow  # starts the app and a CPU-bound worker for a few seconds
def test_q_asks_while_a_flooding_job_runs(tmp_path):
    # measured here: 0.13 s with the throttle; none within 30 s without it (an 8 s job, load ~20)
    waited, ran = run(_ask_while_running(tmp_path, seconds=8.0))
    assert waited < 8.0 and ran["seconds"] < 8.0  # the test stopped the job, after the question


def test_progress_throttle_folds_a_flood_and_keeps_the_last_report():
    posted: list[tuple[str, float | None]] = []
    throttle = ProgressThrottle(lambda stage, fraction: posted.append((stage, fraction)), interval=0.05)
    started = time.monotonic()
    for step in range(20000):
        throttle(f"layer {step}", step / 20000)
    elapsed = time.monotonic() - started
    time.sleep(0.2)  # the trailing timer posts the latest report
    assert posted[0] == ("layer 0", 0.0)
    assert posted[-1] == ("layer 19999", 19999 / 20000)  # the bar ends on the last stage, not a stale one
    assert len(posted) <= 2 + elapsed / 0.05 + 1
    assert throttle.posted == len(posted)


def test_progress_throttle_posts_nothing_after_close():
    posted: list[tuple[str, float | None]] = []
    throttle = ProgressThrottle(lambda stage, fraction: posted.append((stage, fraction)), interval=0.05)
    throttle("a", 0.1)
    throttle("b", 0.2)  # folded, waiting for its timer
    throttle.close()  # the job's result is posted next: a late "b" would overwrite its status line
    throttle("c", 0.3)
    time.sleep(0.15)
    assert posted == [("a", 0.1)]


def test_the_default_interval_is_what_the_app_uses():
    throttle = ProgressThrottle(lambda stage, fraction: None)
    assert throttle.interval == jobs.PROGRESS_INTERVAL > 0
