"""Drive the real ``garage`` command in tmux, as a person over SSH would.

Open SmolLM2, walk to L10.attn.h3, ablate it, run, see diagnostics change, save the
session, quit, relaunch with ``--session`` and find the same part selected and the ablation
active. The screen is read with ``capture-pane -p`` and polled with timeouts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GARAGE = REPO / ".venv" / "bin" / "garage"
TMUX = shutil.which("tmux") or "/usr/bin/tmux"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(TMUX).exists() or not GARAGE.exists(), reason="needs tmux and the venv")]


class Tmux:
    def __init__(self, home: Path) -> None:
        self.socket = f"garage-test-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "GARAGE_HOME": str(home), "TERM": "xterm-256color"}
        self.env.pop("NO_COLOR", None)
        # shutil.get_terminal_size prefers these to the pane's size, and xdist workers have them set
        self.env.pop("COLUMNS", None)
        self.env.pop("LINES", None)

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, env=self.env,
                              check=check, timeout=20)

    def start(self, *garage_args: str) -> None:
        command = " ".join([str(GARAGE), *garage_args])
        self.tmux("new-session", "-d", "-s", "garage", "-x", "100", "-y", "40", command)

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "garage", check=False).returncode == 0

    def screen(self) -> str:
        done = self.tmux("capture-pane", "-p", "-t", "garage", check=False)
        return done.stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "garage", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "garage", "-l", text)

    def wait(self, condition, what: str, timeout: float = 40.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if condition(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; screen was:\n{self.screen()}")

    def wait_for_text(self, *fragments: str, timeout: float = 40.0) -> str:
        return self.wait(lambda text: all(f in text for f in fragments), " and ".join(fragments), timeout)

    def wait_exit(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError(f"garage did not quit; screen was:\n{self.screen()}")
            time.sleep(0.2)

    def kill(self) -> None:
        self.tmux("kill-server", check=False)


def _stat_row(screen: str, name: str) -> list[str]:
    for line in screen.splitlines():
        cells = line.replace("│", " ").split()
        if cells[:1] == [name]:
            return cells
    raise AssertionError(f"no '{name}' row on screen:\n{screen}")


def test_garage_in_tmux_ablate_save_quit_restore(tmp_path):
    home = tmp_path / "home"
    session_file = home / "sessions" / "workbench.json"
    term = Tmux(home)
    try:
        term.start()
        term.wait_for_text("smollm2-135m · llama", "ran “The Eiffel Tower", timeout=90)
        term.keys("/")
        term.wait_for_text("Go to part")
        term.type("L10.attn.h3")
        term.keys("Enter")
        term.wait_for_text("L10.attn.h3  head", "KV group 1")
        term.keys("a")
        # 40 rows: the detail's "active" line stays on screen once the edit's rerun adds "now  before"
        term.wait_for_text("[ablated]", "active  zero-ablate L10.attn.h3")
        term.keys("r")
        term.wait_for_text("now  before", timeout=60)
        term.keys("2")
        diagnostics = term.wait_for_text("L10.attn.h3.z", "zero-ablate L10.attn.h3", "absmax")
        absmax = _stat_row(diagnostics, "absmax")
        # the ablated head's output is zero now, and was not before the edit
        assert float(absmax[1]) == 0.0 and float(absmax[2]) > 0.1, absmax
        term.keys("1", "C-s")
        # the dialog offers GARAGE_HOME/sessions/workbench.json; Enter accepts it
        term.wait_for_text("Save session to:", "sessions/workbench.json")
        term.keys("Enter")
        deadline = time.monotonic() + 10
        while not session_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session_file.exists()
        term.keys("q")
        term.wait_exit()

        term.start("--session", str(session_file))
        restored = term.wait_for_text("active  zero-ablate L10.attn.h3", "L10.attn.h3  head", "[ablated]",
                                      timeout=90)
        assert "KV group 1" in restored
        term.wait_for_text("now  before", timeout=60)  # the restored edit is applied to the run
        term.keys("q")
        term.wait_exit()
    finally:
        term.kill()
