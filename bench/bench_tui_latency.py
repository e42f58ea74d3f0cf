"""Key-to-screen latency of the garage while the machine is busy (median and 95th percentile).

The real app on SmolLM2-135M (pressed keys are posted as the terminal driver posts them):

- ``j``/``k`` in the bay tree with nothing running (the baseline);
- the same while (a) a prompt run (forward passes, stats, lens on a 400-word prompt) is always in
  flight in its thread worker, and (b) other processes saturate every core;
- ``q`` while a run is in flight: until the quit question is on screen (then ``n``).

``--no-throttle`` posts every progress report of a job (the behaviour before
``jobs.ProgressThrottle``) to show what the throttle buys.

Run: ``.venv/bin/python bench/bench_tui_latency.py [--presses N] [--no-throttle]`` (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
os.environ.setdefault("GARAGE_HOME", tempfile.mkdtemp(prefix="garage-bench-home-"))


class Frames:
    """Records when the app hands a frame to the terminal."""

    def __init__(self, app: Any) -> None:
        self.app, self.times = app, []
        self.original = app._display

    def __enter__(self) -> Frames:
        def display(*args: Any, **kwargs: Any) -> Any:
            self.times.append(time.perf_counter())
            return self.original(*args, **kwargs)

        self.app._display = display
        return self

    def __exit__(self, *exc: object) -> None:
        self.app._display = self.original

    async def after(self, moment: float, timeout: float = 120.0) -> float:
        deadline = time.perf_counter() + timeout
        while not self.times or self.times[-1] < moment:
            if time.perf_counter() > deadline:
                raise TimeoutError("no frame drawn")
            await asyncio.sleep(0.0005)
        return self.times[-1]


def keep_running(app: Any) -> None:
    if app.job is None:
        app.action_run_prompt()


async def tree_latencies(app: Any, presses: int, busy: bool) -> list[float]:
    """Seconds from a ``j``/``k`` key event to the moved cursor's frame."""
    from textual.events import Key

    tree = app.part_tree()
    latencies: list[float] = []
    with Frames(app) as frames:
        index = 0
        while len(latencies) < presses:
            if busy:
                keep_running(app)
                await asyncio.sleep(0.05)
            key = "j" if index % 2 == 0 else "k"
            index += 1
            running = app.job == "run"
            before = tree.cursor_line
            started = time.perf_counter()
            app.post_message(Key(key, key))  # what the terminal driver does for a key press
            while tree.cursor_line == before:
                await asyncio.sleep(0.0005)
            drawn = await frames.after(time.perf_counter())
            if not busy or (running and app.job == "run"):  # only presses made and answered during a run
                latencies.append(drawn - started)
            await asyncio.sleep(0.03)
    return latencies


async def quit_latencies(app: Any, pilot: Any, presses: int) -> list[float]:
    """Seconds from ``q`` (a run in flight) to the quit question's frame."""
    from textual.events import Key

    from garage_tui.screens.ask import ConfirmScreen

    latencies: list[float] = []
    with Frames(app) as frames:
        while len(latencies) < presses:
            keep_running(app)
            await asyncio.sleep(0.3)  # into the run, its progress reports flowing
            if app.job != "run":
                continue
            started = time.perf_counter()
            app.post_message(Key("q", "q"))
            while not isinstance(app.screen, ConfirmScreen):
                await asyncio.sleep(0.0005)
            latencies.append(await frames.after(time.perf_counter()) - started)
            app.post_message(Key("n", "n"))
            while isinstance(app.screen, ConfirmScreen):
                await asyncio.sleep(0.005)
    return latencies


def saturate() -> list[subprocess.Popen[bytes]]:
    """One pure-Python busy loop per core, in other processes."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]


def report(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(values) * 1000:7.1f} ms, p95 {p95 * 1000:7.1f} ms (n={len(values)})"


async def bench(presses: int) -> dict[str, list[float]]:
    sys.path.insert(0, str(REPO / "tests"))
    from test_tui_support import goto, make_app, wait_for, wait_idle

    from engine.build.evaluate import sample_text
    from engine.loading import open_model

    results: dict[str, list[float]] = {}
    app = make_app(open_model("smollm2-135m"))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_idle(pilot, timeout=300)
        await goto(pilot, "L10.attn.h3")
        await pilot.press("h", "h")  # back on L10, a long way from either end of the tree
        results["idle"] = await tree_latencies(app, presses, busy=False)
        # a long prompt keeps each run busy for a while
        app.query_one("#prompt").value = " ".join(sample_text().split()[:400])
        results["(a) a run in its worker"] = await tree_latencies(app, presses, busy=True)
        results["q during a run"] = await quit_latencies(app, pilot, max(3, presses // 4))
        app.action_cancel_job()
        await wait_for(pilot, lambda: app.job is None, 120, "the cancel")
        hogs = saturate()
        try:
            results["(b) other processes on every core"] = await tree_latencies(app, presses, busy=False)
            results["(a)+(b) both"] = await tree_latencies(app, presses, busy=True)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        app.action_cancel_job()
        await wait_for(pilot, lambda: app.job is None, 120, "the cancel")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=20)
    parser.add_argument("--no-throttle", action="store_true", help="post every progress report (the old way)")
    args = parser.parse_args()
    if args.no_throttle:
        from garage_tui import jobs

        jobs.PROGRESS_INTERVAL = 0.0
    load = os.getloadavg()[0]
    results = asyncio.run(bench(args.presses))
    print(f"key→screen latency (load {load:.1f} at start, {os.cpu_count()} cores, "
          f"progress throttle {'off' if args.no_throttle else 'on'}):")
    for label, values in results.items():
        print(f"  {label:<36} {report(values)}")


if __name__ == "__main__":
    main()
