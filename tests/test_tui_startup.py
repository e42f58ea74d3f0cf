"""The first frame is the chrome only: no torch, no pane modules, no PyYAML; the panes follow.

What made ``garage``'s first frame ~2× a bare Textual app was work done before it: importing
the panes (plotext charts, tables), composing them, parsing their CSS, reading every theme with
PyYAML. The properties below are what keeps it near bare Textual (``bench/bench_tui.py`` times
it); each fails if that work moves back before the first frame.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

FIRST_FRAME = """
import asyncio, json, sys
from garage_tui.factory import build_app
from garage_tui.app import GarageApp

seen = {}
first_frame, start = GarageApp._first_frame, GarageApp._start
DEFERRED = ("torch", "transformers", "yaml", "plotext", "textual_plotext",
            "garage_tui.widgets.bay_pane", "garage_tui.widgets.part_tree", "garage_tui.widgets.diagnostics_pane",
            "garage_tui.widgets.parts_pane", "garage_tui.widgets.bench_pane", "garage_tui.screens.ask")

def at_first_frame(self):
    seen["first"] = {
        "loaded": sorted(m for m in DEFERRED if m in sys.modules),
        "widgets": sorted(type(w).__name__ for w in self.screen.walk_children()),
        "placeholder": str(self.query_one("#first-frame").render()),
        "prompt": str(self.query_one("#prompt-text").render()),
        "theme": self.theme,
        "width": self.screen.size.width,
    }
    return first_frame(self)

def at_start(self):
    seen["panes"] = {
        "trees": len(self.screen.query("PartTree")),
        "panes": [w.id for w in self.query_one("#panes").children],
        "placeholder_gone": not self.query("#first-frame"),
        "prompt_input": type(self.query_one("#prompt")).__name__,
        "focused": type(self.focused).__name__ if self.focused else None,
        "themes": len(self.theme_names),
    }
    return start(self)

GarageApp._first_frame, GarageApp._start = at_first_frame, at_start

async def main():
    app = build_app(None, None, None, model="/nonexistent/model/for/startup")
    async with app.run_test(size=(80, 24)) as pilot:
        while "panes" not in seen:
            await pilot.pause(0.05)
        seen["prompt_text"] = app.prompt_text
        app.exit()

asyncio.run(main())
print(json.dumps(seen))
"""


@pytest.mark.slow  # a fresh interpreter starts the app
def test_first_frame_is_the_chrome_and_the_panes_follow(tmp_path):
    env = {"GARAGE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", FIRST_FRAME], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    first, panes = seen["first"], seen["panes"]
    assert first["loaded"] == [], f"imported before the first frame: {first['loaded']}"
    assert "PartTree" not in first["widgets"] and "DataTable" not in first["widgets"]
    assert "Footer" in " ".join(first["widgets"]) and first["width"] == 80
    assert first["placeholder"] == "Opening /nonexistent/model/for/startup…"
    assert first["prompt"] == "The Eiffel Tower is in the city of" and first["theme"] == "garage"
    assert panes["trees"] == 1 and panes["panes"] == ["bay", "diagnostics", "parts", "bench"]
    assert panes["placeholder_gone"] and panes["prompt_input"] == "PromptInput"
    assert panes["focused"] == "PartTree" and panes["themes"] >= 4  # every shipped theme, read after the frame
    assert seen["prompt_text"] == "The Eiffel Tower is in the city of"


def test_shipped_themes_read_the_same_without_pyyaml():
    """The first frame reads its theme with the plain-subset reader; it must agree with PyYAML."""
    import yaml

    from garage_tui.themes import SHIPPED_THEMES, find_theme, simple_yaml, theme_from_yaml

    files = sorted(SHIPPED_THEMES.glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert simple_yaml(text) == yaml.safe_load(text), path.name
        assert find_theme(path.stem) == theme_from_yaml(path), path.name


@pytest.mark.parametrize("text", [
    "primary: yes\n",  # YAML 1.1 boolean
    "primary: '#fff' # trailing comment\n",
    "primary: \"a\\tb\"\n",  # an escape
    "primary: [1, 2]\n",
    "  indented: 1\n",  # nested without a parent
    "variables:\n",  # an empty mapping is null in YAML
    "a: 1\na: 2\n",  # a repeated key
    "primary: null\n",
])
def test_anything_beyond_the_subset_goes_to_pyyaml(text):
    from garage_tui.themes import simple_yaml

    assert simple_yaml(text) is None


def test_a_user_theme_file_overrides_the_shipped_one(tmp_path):
    from garage_tui.themes import find_theme

    shipped = tmp_path / "shipped"
    user = tmp_path / "user"
    shipped.mkdir()
    user.mkdir()
    (shipped / "garage.yaml").write_text('name: garage\nprimary: "#E0A030"\n')
    (user / "garage.yaml").write_text('name: garage\nprimary: "#102030"\n')
    assert find_theme("garage", [shipped, user]).primary == "#102030"
    (user / "garage.yaml").write_text('name: other\nprimary: "#102030"\n')
    assert find_theme("garage", [shipped, user]) is None  # the name does not match: load_themes decides
    assert find_theme("missing", [shipped, user]) is None


def test_opening_the_tui_skips_registering_the_verbs():
    """``garage`` with no verb goes straight to the TUI; the verbs' modules stay unimported."""
    code = """
import sys
import garage_tui.launch
seen = {}
def launch(args):
    seen['args'] = vars(args)
    seen['verbs'] = sorted(m for m in sys.modules if m.startswith('garage_tui.commands.'))
    return 0
garage_tui.launch.launch_tui = launch
from garage_tui.cli import main
assert main(['--model', 'minilm-l6', '--theme', 'garage-light']) == 0
print(seen['verbs'], seen['args']['model'], seen['args']['theme'], seen['args']['tui_device'])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "minilm-l6", "garage-light", "cpu"]


@pytest.mark.parametrize("argv", [["parts", "list", "--help"], ["--help"], ["--model"], ["--bogus"]])
def test_verbs_help_and_errors_still_use_the_full_parser(argv):
    from garage_tui.cli import tui_args

    assert tui_args(argv) is None


def test_quit_while_the_panes_mount_waits_for_them(tmp_path, monkeypatch):
    """``q`` a moment after the first frame: the garage quits once the panes are in, without an error."""
    import asyncio

    from garage_tui.app import GarageApp
    from garage_tui.factory import build_app
    from garage_tui.settings import load_settings

    started = []
    real_first_frame = GarageApp._first_frame

    def quit_at_first_frame(self):
        real_first_frame(self)  # schedules the panes' mount
        self.exit()  # as q or ctrl+q would, before the panes are in

    monkeypatch.setattr(GarageApp, "_first_frame", quit_at_first_frame)
    monkeypatch.setattr(GarageApp, "_start", lambda self: started.append(True))
    app = build_app(None, None, None, settings=load_settings(tmp_path / "settings.yaml"),
                    model=str(tmp_path / "no-such-model"))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(400):
                if not app.is_running:
                    break
                await pilot.pause(0.05)
            return app._panes_ready, app.is_running

    panes_ready, still_running = asyncio.run(scenario())
    assert panes_ready and not still_running and started == []  # quit after the mount, before the model open
