"""TUI speed, measured in one run (ratios, not absolute targets).

1. Time to first frame: ``garage`` (the real app from the shared factory) vs a bare Textual
   app, each started in a fresh interpreter, median of several starts. The garage's model
   loads in a worker after the first frame, so the ratio shows what our shell costs.
2. Key-to-screen latency: pressing ``j`` in the part tree while head importance (a stream of
   forward passes) runs in a thread worker, vs the same presses with nothing running.

Run: ``.venv/bin/python bench/bench_tui.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
os.environ.setdefault("GARAGE_HOME", tempfile.mkdtemp(prefix="garage-bench-home-"))

FIRST_FRAME_GARAGE = """
import time, sys
from garage_tui.factory import build_app
from garage_tui.app import GarageApp
def start(self):
    # scheduled after the first refresh: the first frame is on screen
    print(f"FRAME {time.time():.6f} torch={'torch' in sys.modules}", flush=True)
    self.exit()
GarageApp._start = start
build_app(None, None, None).run(headless=True, size=(80, 24))
"""

FIRST_FRAME_BARE = """
import time
from textual.app import App
from textual.widgets import Footer, Static
class Bare(App):
    def compose(self):
        yield Static("hello")
        yield Footer()
    def on_mount(self):
        self.call_after_refresh(self.done)
    def done(self):
        print(f"FRAME {time.time():.6f}", flush=True)
        self.exit()
Bare().run(headless=True, size=(80, 24))
"""


def first_frame_seconds(code: str) -> float:
    started = time.time()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    line = next((line for line in done.stdout.splitlines() if line.startswith("FRAME")), None)
    if line is None:
        raise SystemExit(f"no frame reported:\n{done.stdout}\n{done.stderr[-2000:]}")
    if "torch=True" in line:
        raise SystemExit("torch was imported before the garage's first frame")
    return float(line.split()[1]) - started


async def key_latencies(app, presses: int, keep_busy: bool = False) -> list[float]:
    """Seconds from a key event reaching the app to the tree's cursor moving and a frame being drawn.

    With ``keep_busy`` a prompt run is always in flight in its worker; only presses that began
    and ended while it ran are counted.
    """
    from textual.events import Key

    from garage_tui.widgets.part_tree import PartTree

    tree = app.query_one(PartTree)
    frames: list[float] = []
    original_display = app._display

    def display(*args, **kwargs):
        frames.append(time.perf_counter())
        return original_display(*args, **kwargs)

    app._display = display
    latencies = []
    try:
        index = 0
        while len(latencies) < presses:
            if keep_busy and app.job is None:
                app.action_run_prompt()
                await asyncio.sleep(0.05)
            key = "j" if index % 2 == 0 else "k"
            index += 1
            busy_at_start = app.job == "run"
            before = tree.cursor_line
            started = time.perf_counter()
            app.post_message(Key(key, key))  # what the terminal driver does for a key press
            while tree.cursor_line == before:
                await asyncio.sleep(0.0005)
            moved = time.perf_counter()
            while not frames or frames[-1] < moved:
                await asyncio.sleep(0.0005)
            if not keep_busy or (busy_at_start and app.job == "run"):
                latencies.append(frames[-1] - started)
            await asyncio.sleep(0.03)
    finally:
        app._display = original_display
    return latencies


def latency_report(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(values) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"


async def latency_bench() -> tuple[list[float], list[float]]:
    sys.path.insert(0, str(REPO / "tests"))
    from test_tui_support import goto, make_app, wait_for, wait_idle

    from engine.loading import open_model

    loaded = open_model("smollm2-135m")
    app = make_app(loaded)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_idle(pilot, timeout=120)
        await goto(pilot, "L10.attn.h3")
        await pilot.press("h", "h")  # back on L10, a long way from either end of the tree
        idle = await key_latencies(app, 20)
        # a long prompt keeps each run (predict, residual norms, stats, logit lens) busy for a while
        from engine.build.evaluate import sample_text

        app.query_one("#prompt").value = " ".join(sample_text().split()[:400])
        busy = await key_latencies(app, 20, keep_busy=True)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.job is None, 60, "the cancel")
    return idle, busy


def main() -> None:
    runs = 3
    garage = [first_frame_seconds(FIRST_FRAME_GARAGE) for _ in range(runs)]
    bare = [first_frame_seconds(FIRST_FRAME_BARE) for _ in range(runs)]
    g, b = statistics.median(garage), statistics.median(bare)
    print(f"first frame: garage {g:.3f} s, bare Textual {b:.3f} s, ratio {g / b:.2f}x (median of {runs})")
    idle, busy = asyncio.run(latency_bench())
    print(f"key→screen idle: {latency_report(idle)}")
    print(f"key→screen during forward passes: {latency_report(busy)}, "
          f"ratio {statistics.median(busy) / statistics.median(idle):.2f}x")


if __name__ == "__main__":
    main()
