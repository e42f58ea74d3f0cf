"""A built wheel, installed outside the checkout, carries its data and starts the garage.

The wheel goes into a fresh venv whose only extra is a ``.pth`` line pointing at the test
venv's site-packages, so torch and friends are reused instead of reinstalled. A ``.pth`` line
does not run the ``.pth`` files of the folder it adds, so the checkout's editable install stays
out of the way; the test still checks that every import comes from the new venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("engine", "garage_tui", "themes", "recipes", "sessions")
TOP_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")

HEADLESS_START = """
import asyncio, json, sys
from garage_tui.factory import build_app
from garage_tui.shipped import shipped_folder
from garage_tui.widgets.bench_pane import RECIPES

async def main():
    # a model path that does not exist: the app must still draw its first frame and say so
    app = build_app(None, None, None, model='/nonexistent/model/for/packaging')
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(400):  # the panes are mounted just after the first frame
            await pilot.pause(0.05)
            if app._panes_ready:
                break
        painted = bool(app.screen.query('PartTree'))
        theme = app.theme
    return painted, theme

painted, theme = asyncio.run(main())
import garage_tui
print(json.dumps({"painted": painted, "theme": theme, "package": garage_tui.__file__,
                  "recipes": sorted(p.name for p in shipped_folder("recipes").glob("*.yaml")),
                  "sessions": sorted(p.name for p in shipped_folder("sessions").glob("*.json")),
                  "themes_folder": str(shipped_folder("themes")), "bench_recipes": str(RECIPES)}))
"""


def _copy_sources(target: Path) -> None:
    """Only what a clean clone holds: no build/ leftovers, no egg-info, no caches."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    for name in TOP_FILES:
        shutil.copy2(REPO / name, target / name)


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_opens(tmp_path):
    source = tmp_path / "src"
    _copy_sources(source)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
          "--disable-pip-version-check", "-w", str(wheels), str(source)], cwd=tmp_path)
    wheel = next(wheels.glob("model_garage-*.whl"))

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "reuse-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--quiet", "--disable-pip-version-check", str(wheel)], cwd=tmp_path)

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run_dir = tmp_path / "elsewhere"  # not the checkout: '' on sys.path must not find the sources
    run_dir.mkdir()
    garage = env_dir / "bin" / "garage"
    assert "inspect" in _run([str(garage), "--help"], cwd=run_dir, env=env).stdout

    started = json.loads(_run([str(python), "-c", HEADLESS_START], cwd=run_dir, env=env).stdout.splitlines()[-1])
    assert Path(started["package"]).is_relative_to(env_dir), started["package"]
    assert Path(started["themes_folder"]).is_relative_to(env_dir)
    assert Path(started["bench_recipes"]).is_relative_to(env_dir)  # the bench's "o" opens the wheel's recipes
    assert started["painted"] is True
    assert started["theme"] == "garage"  # the shipped default theme was found (was InvalidThemeError)
    assert started["recipes"] == sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
    assert started["sessions"] == sorted(p.name for p in (REPO / "sessions").glob("*.json"))

    inspected = json.loads(_run([str(garage), "inspect", "minilm-l6", "--structure-only", "--json"],
                                cwd=run_dir, env=env).stdout)
    assert inspected["model"] == "minilm-l6"
    assert inspected["tree"]["info"]["layers"] == 6
