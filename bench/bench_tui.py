"""TUI start-up speed, measured in one run (ratios, not absolute targets).

Time to first frame: ``garage``'s app (the real one, from the shared factory) vs a bare Textual
app (a Static and a Footer), each started in a fresh interpreter, interleaved, median of
several starts. The first frame is the garage's chrome (pane strip, a placeholder pane, prompt,
status, footer); the panes are mounted right after it and the model opens in a worker after
that, so a second row times "panes mounted" (``_start``, where the model open begins).

Key-to-screen latency while the machine is busy is in ``bench_tui_latency.py``.

Run: ``.venv/bin/python bench/bench_tui.py [--repeats N]`` (about half a minute on 2 cores).
"""

from __future__ import annotations

import argparse
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

GARAGE = """
import time, sys
from garage_tui.factory import build_app
from garage_tui.app import GarageApp
from textual.app import App
def mark(self):
    print(f"FRAME {time.time():.6f} {time.process_time():.6f} torch={'torch' in sys.modules}", flush=True)
    App.exit(self)  # GarageApp.exit waits for the panes, which this stand-in hook never mounts
GarageApp.{hook} = mark
build_app(None, None, None).run(headless=True, size=(80, 24))
"""
# called once the first frame is painted / once the panes are mounted and the model open starts
FIRST_FRAME_GARAGE = GARAGE.replace("{hook}", "_first_frame")
PANES_GARAGE = GARAGE.replace("{hook}", "_start")

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
        print(f"FRAME {time.time():.6f} {time.process_time():.6f}", flush=True)
        self.exit()
Bare().run(headless=True, size=(80, 24))
"""


# Bytecode as an installed garage has it: pip compiles a wheel's modules, and a checkout writes
# __pycache__ on its first run. Here it goes to a scratch folder (nothing written into the repo),
# and works even where PYTHONDONTWRITEBYTECODE is set; without it every start recompiled our
# modules (~60 ms for app.py alone) while Textual's came compiled from site-packages.
CHILD_ENV = {**os.environ, "PYTHONPYCACHEPREFIX": tempfile.mkdtemp(prefix="garage-bench-pyc-")}
CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)


def first_frame_seconds(code: str) -> tuple[float, float]:
    """(wall seconds from spawning the interpreter to its first frame, its CPU seconds by then)."""
    started = time.time()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=CHILD_ENV)
    line = next((line for line in done.stdout.splitlines() if line.startswith("FRAME")), None)
    if line is None:
        raise SystemExit(f"no frame reported:\n{done.stdout}\n{done.stderr[-2000:]}")
    if "torch=True" in line:
        raise SystemExit("torch was imported before the garage's first frame")
    return float(line.split()[1]) - started, float(line.split()[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    codes = {"bare": FIRST_FRAME_BARE, "garage": FIRST_FRAME_GARAGE, "panes": PANES_GARAGE}
    wall: dict[str, list[float]] = {kind: [] for kind in codes}
    cpu: dict[str, list[float]] = {kind: [] for kind in codes}
    for code in codes.values():  # compile once, as any second start of an installed garage finds it
        first_frame_seconds(code)
    for _ in range(args.repeats):  # interleaved, so a load spike hits every kind alike
        for kind, code in codes.items():
            seconds, cpu_seconds = first_frame_seconds(code)
            wall[kind].append(seconds)
            cpu[kind].append(cpu_seconds)
    median = statistics.median
    load = os.getloadavg()[0]
    print(f"first frame (median of {args.repeats}, load {load:.1f}):")
    for kind, label in (("garage", "garage first frame"), ("panes", "garage panes mounted")):
        print(f"  {label:<22} wall {median(wall[kind]):.3f} s = {median(wall[kind]) / median(wall['bare']):.2f}x bare "
              f"({median(wall['bare']):.3f} s); CPU {median(cpu[kind]):.3f} s = "
              f"{median(cpu[kind]) / median(cpu['bare']):.2f}x bare ({median(cpu['bare']):.3f} s)")


if __name__ == "__main__":
    main()
