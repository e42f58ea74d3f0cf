"""kill -9 at several points of every small write: sessions, settings, and cache folders.

Class: a write killed part-way. Each real writer (``save_session``, ``Settings.save``, and
``atomic_output_dir`` — the GGUF cache's and the builder's folder writer) is run in a child
that holds at a chosen point (mid-write before fsync, staged but not renamed, renamed) and is
killed there with SIGKILL. The target must then read as the old version or the new one,
never a mix; the staging the kill left is named recognisably and the next write of the same
target removes it. (Parts and catalog: tests/test_robust_parts.py; builds and ``--force``:
tests/test_robust_build_out.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.storage import atomic_output_dir, is_staging, sweep_stale_staging
from tests.robust_harness import REPO

CHILD = """
import os, sys, time
from pathlib import Path
from engine import storage

kind, target, point, marker = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])

def hold():
    marker.write_text(point)
    time.sleep(600)

real_fsync, real_replace = os.fsync, os.replace
if point == "mid-write":
    storage.os.fsync = lambda fd: hold()
if point == "staged":
    def replace(src, dst):
        if storage.is_staging(Path(src)):
            hold()
        real_replace(src, dst)
    storage.os.replace = replace
if point == "renamed":
    def replace(src, dst):
        real_replace(src, dst)
        hold()
    storage.os.replace = replace

if kind == "session":
    from engine.sessions import load_session, save_session
    session = load_session(Path(sys.argv[5]))
    session.title = "new version"
    session.notes = ["x" * 100_000]
    save_session(target, session)
elif kind == "settings":
    from garage_tui.settings import Settings
    Settings(theme="new-theme", path=target).save()
elif kind == "cache":
    storage._exchange = lambda a, b: False  # exercise the rename-aside path too
    with storage.atomic_output_dir(target) as staging:
        for i in range(5):
            (staging / f"part{i}.bin").write_bytes(b"new" * 100_000)
        (staging / "garage-conversion.json").write_text('{"version": "new"}')
marker.write_text("finished")
"""


def _old_state(kind: str, target: Path, example: Path) -> None:
    if kind == "session":
        from engine.sessions import load_session, save_session

        session = load_session(example)
        session.title = "old version"
        save_session(target, session)
    elif kind == "settings":
        from garage_tui.settings import Settings

        Settings(theme="old-theme", path=target).save()
    else:
        with atomic_output_dir(target) as staging:
            for i in range(5):
                (staging / f"part{i}.bin").write_bytes(b"old" * 100_000)
            (staging / "garage-conversion.json").write_text('{"version": "old"}')


def _version(kind: str, target: Path) -> str:
    if kind == "session":
        from engine.sessions import load_session

        return load_session(target).title.split()[0]
    if kind == "settings":
        from garage_tui.settings import load_settings

        return load_settings(target).theme.split("-")[0]
    version = json.loads((target / "garage-conversion.json").read_text())["version"]
    files = sorted(target.iterdir())
    assert [p.name for p in files] == ["garage-conversion.json"] + [f"part{i}.bin" for i in range(5)]
    assert all(p.read_bytes() == version.encode() * 100_000 for p in files if p.suffix == ".bin")  # never a mix
    return version


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid-write", "staged", "renamed"])
@pytest.mark.parametrize("kind", ["session", "settings", "cache"])
def test_kill_9_leaves_the_old_or_the_new_and_the_next_write_sweeps(tmp_path, kind, point):
    if kind == "cache" and point == "mid-write":
        point = "staged"  # a folder has no fsync of its own; staged covers a half-made folder
    example = REPO / "sessions" / "smollm2-tour.json"
    target = tmp_path / {"session": "mine.json", "settings": "settings.yaml", "cache": "cached-model"}[kind]
    _old_state(kind, target, example)
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(target), point, str(marker), str(example)],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text() in (point, "finished")):
            assert child.poll() is None, "the writer ended before the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert marker.read_text() == point
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    staged = [p for p in tmp_path.iterdir() if is_staging(p)]
    if point != "renamed" or kind == "cache":
        assert staged, "the kill left no recognisable staging"  # a half-made write, named as such
    sweep_stale_staging(tmp_path, target.name)  # what the next write of this target does first
    assert not [p for p in tmp_path.iterdir() if is_staging(p)]
    # Files: renamed means the new version is in. A cache folder being replaced without an atomic swap
    # was killed with the old folder aside; the sweep put it back.
    expected = "new" if point == "renamed" and kind != "cache" else "old"
    assert _version(kind, target) == expected
    for stale in staged:  # and the next real write also sweeps on its own
        stale.mkdir() if kind == "cache" else stale.write_text("half")
    _old_state(kind, target, example)
    assert not [p for p in tmp_path.iterdir() if is_staging(p)]
    assert _version(kind, target) == "old"
