"""`garage build --out DIR --force` never deletes what is not an earlier build, and replaces atomically.

Class: data loss by the build's output folder. Each refusal is exit 2, one line naming the
folder and what to do, and the user's files keep every byte. The kill -9 harness kills a
build replacing an earlier one at several points and checks the folder is then the old build
or the new one, and that the next build removes every leftover.
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

from engine.storage import sweep_stale_staging
from tests.forked import forked
from tests.robust_harness import assert_one_error, cli, recipe_file, tiny_llama, tree_state


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("src")
    tiny_llama(folder / "a", layers=2)
    return recipe_file(folder, {"a": str(folder / "a")}, [{"take": "a.L0-1"}])


@pytest.fixture(scope="module")
def other_recipe(tiny_recipe) -> Path:
    """A second recipe over the same source: a different build (layers reversed)."""
    doc = json.loads(tiny_recipe.read_text())
    doc["layers"] = [{"take": "a.L1"}, {"take": "a.L0"}]
    path = tiny_recipe.with_name("reversed.json")
    path.write_text(json.dumps(doc))
    return path


def user_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("three years of work\n")
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "results.csv").write_text("a,b\n1,2\n")
    return folder


def test_force_into_the_current_folder_is_refused_and_keeps_every_file(capsys, tmp_path, tiny_recipe):
    work = user_files(tmp_path / "work")
    before = tree_state(work)
    assert_one_error(cli(capsys, "build", tiny_recipe, "--out", ".", "--force", cwd=work),
                     "current folder", "--out")
    assert tree_state(work) == before


def test_force_into_a_parent_of_the_current_folder_is_refused(capsys, tmp_path, tiny_recipe):
    parent = user_files(tmp_path / "parent")
    inner = parent / "inner"
    inner.mkdir()
    before = tree_state(parent)
    assert_one_error(cli(capsys, "build", tiny_recipe, "--out", "..", "--force", cwd=inner),
                     "holds the current folder")
    assert_one_error(cli(capsys, "build", tiny_recipe, "--out", str(parent), "--force", cwd=inner),
                     str(parent))
    assert tree_state(parent) == before


def test_force_into_the_home_folder_is_refused(capsys, tmp_path, tiny_recipe, monkeypatch):
    home = user_files(tmp_path / "fakehome")
    monkeypatch.setenv("HOME", str(home))
    before = tree_state(home)
    assert_one_error(cli(capsys, "build", tiny_recipe, "--out", str(home), "--force"), "home folder")
    assert_one_error(cli(capsys, "build", tiny_recipe, "--out", "~", "--force"), "home folder")
    assert tree_state(home) == before


def test_force_over_a_folder_of_unrelated_files_is_refused(capsys, tmp_path, tiny_recipe):
    docs = user_files(tmp_path / "docs")
    before = tree_state(docs)
    line = assert_one_error(cli(capsys, "build", tiny_recipe, "--out", docs, "--force"),
                            "not an earlier garage build", str(docs))
    assert "provenance.json" in line
    # A fake provenance file does not make the folder a build: it still holds the user's files.
    (docs / "provenance.json").write_text(json.dumps({"recipe": "x", "tensors": []}))
    before = tree_state(docs)
    assert_one_error(cli(capsys, "build", tiny_recipe, "--out", docs, "--force"), "thesis.tex")
    assert tree_state(docs) == before


def test_force_over_a_build_the_user_added_files_to_is_refused(capsys, tmp_path, tiny_recipe):
    out = tmp_path / "hybrid"
    assert cli(capsys, "build", tiny_recipe, "--out", out).code == 0
    (out / "my-notes.md").write_text("eval results I wrote by hand\n")
    before = tree_state(out)
    assert_one_error(cli(capsys, "build", tiny_recipe, "--out", out, "--force"), "my-notes.md", "move them away")
    assert tree_state(out) == before


def test_a_symlink_or_a_file_as_out_is_refused(capsys, tmp_path, tiny_recipe):
    real = user_files(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    before = tree_state(real, a_file.parent)
    assert_one_error(cli(capsys, "build", tiny_recipe, "--out", link, "--force"), "symlink")
    assert_one_error(cli(capsys, "build", tiny_recipe, "--out", a_file, "--force"), "not a folder")
    assert tree_state(real, a_file.parent) == before


def test_force_replaces_an_earlier_build_and_leaves_nothing_beside_it(capsys, tmp_path, tiny_recipe, other_recipe):
    out = tmp_path / "hybrid"
    assert cli(capsys, "build", tiny_recipe, "--out", out).code == 0
    first = tree_state(out)
    assert cli(capsys, "build", other_recipe, "--out", out, "--force").code == 0
    second = tree_state(out)
    assert second != first and json.loads((out / "provenance.json").read_text())["recipe"] != ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hybrid"]  # no staging, no old folder left


CHILD = """
import os, signal, sys, time
from pathlib import Path
from engine import storage
from engine.build import build, load_recipe

point, marker = sys.argv[3], Path(sys.argv[4])

def hold(label):
    marker.write_text(label)
    time.sleep(600)

if point == "writing":
    def progress(stage, fraction):
        if fraction and fraction > 0.3:
            hold("writing")
else:
    progress = None
if point == "swap":
    real_exchange = storage._exchange
    def exchange(a, b):
        hold("swap")
    storage._exchange = exchange
if point == "remove-old":
    real_remove = storage._remove
    def remove(path):
        hold("remove-old")
    storage._remove = remove
if point == "between-renames":  # a system without an atomic swap: old renamed aside, new not yet in
    storage._exchange = lambda a, b: False
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".garage.old"):
            hold("between-renames")
    storage.os.replace = replace
build(load_recipe(sys.argv[1]), sys.argv[2], progress=progress, overwrite=True)
marker.write_text("finished")
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["writing", "swap", "remove-old", "between-renames"])
def test_kill_9_during_a_forced_replacement_leaves_the_old_build_or_the_new(capsys, tmp_path, tiny_recipe,
                                                                            other_recipe, point):
    out = tmp_path / "hybrid"
    assert cli(capsys, "build", tiny_recipe, "--out", out).code == 0
    old = {Path(k).name: v for k, v in tree_state(out).items()}
    marker = tmp_path / "marker.txt"
    child = forked(CHILD, other_recipe, out, point, marker)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text() == point):
            assert child.poll() is None, f"the build ended before reaching {point}"
            assert time.monotonic() < deadline, f"the build never reached {point}"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    # The next run of the same job cleans up: leftovers removed, an old folder moved aside is put back.
    sweep_stale_staging(tmp_path, "hybrid")
    now = {Path(k).name: v for k, v in tree_state(out).items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hybrid", "marker.txt"]
    if point in ("writing", "swap", "between-renames"):
        assert now == old  # killed before the new build was in place: the old one, every byte
    else:
        assert now != old and (out / "provenance.json").is_file()  # the new one, complete
        assert json.loads((out / "provenance.json").read_text())["tensors"]
    # And a later forced build over it works and leaves nothing beside it.
    assert cli(capsys, "build", other_recipe, "--out", out, "--force").code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hybrid", "marker.txt"]


def test_a_killed_builds_staging_is_removed_by_the_next_build(capsys, tmp_path, tiny_recipe):
    out = tmp_path / "hybrid"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".hybrid.{dead.pid}.abc123.garage.tmp"  # what a killed build leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 4096)
    live = tmp_path / f".hybrid.{os.getpid()}.zzz999.garage.tmp"  # a build still running here: not touched
    live.mkdir()
    unrelated = tmp_path / ".hybrid.notes.tmp"
    unrelated.write_text("not ours")
    assert cli(capsys, "build", tiny_recipe, "--out", out).code == 0
    assert not stale.exists() and live.is_dir() and unrelated.read_text() == "not ours"
