"""The CLI's one progress bar (stderr, terminals only) and tables printed in full when piped."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from garage_tui.commands.common import console, progress_bar, wants_progress

REPO = Path(__file__).resolve().parent.parent


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_draws_stage_and_fraction_on_a_terminal():
    screen = FakeTerminal()
    with progress_bar(argparse.Namespace(json=False), "opening", stream=screen) as progress:
        assert progress is not None
        progress("dequantising blk.0", 0.25)
        progress("dequantising blk.1", 0.5)
    drawn = screen.getvalue()
    assert "dequantising blk.1" in drawn and "50%" in drawn


def test_no_bar_when_piped_or_json():
    piped = io.StringIO()
    with progress_bar(argparse.Namespace(json=False), stream=piped) as progress:
        assert progress is None
    screen = FakeTerminal()
    with progress_bar(argparse.Namespace(json=True), stream=screen) as progress:
        assert progress is None
    assert piped.getvalue() == "" and screen.getvalue() == ""
    assert wants_progress(argparse.Namespace(json=False), FakeTerminal())
    assert not wants_progress(argparse.Namespace(json=True), FakeTerminal())


def test_an_unknown_fraction_and_a_restarting_job_keep_the_bar_alive():
    screen = FakeTerminal()
    with progress_bar(argparse.Namespace(json=False), stream=screen) as progress:
        progress("evaluating a", 0.9)
        progress("reading config", None)
        progress("evaluating b", 0.1)  # went backwards: a new model, the clock restarts
    assert "evaluating b" in screen.getvalue() and "10%" in screen.getvalue()


def test_piped_tables_are_not_cut_at_80_columns(garage_home, capsys, monkeypatch):
    from engine.parts import PartsBin
    from garage_tui.cli import main

    monkeypatch.delenv("COLUMNS", raising=False)
    tags = ["a-rather-long-tag-number-one", "another-long-tag-number-two", "and-a-third-long-tag"]
    PartsBin(garage_home).add_from_checkpoint("minilm-l6", "L0.norm1", name="a-part-with-a-long-name-to-widen-it",
                                              tags=tags)
    assert main(["parts", "list"]) == 0
    out = capsys.readouterr().out
    assert ", ".join(sorted(tags)) in out and "a-part-with-a-long-name-to-widen-it" in out and "…" not in out
    assert max(len(line) for line in out.splitlines()) > 80
    assert console(io.StringIO()).width > 200


def _tiny_recipe(tmp_path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=64, vocab_size=128)).save_pretrained(folder)
    recipe = tmp_path / "stack.yaml"
    recipe.write_text(f"recipe_version: 1\nname: tiny-stack\nsources:\n  a: {folder}\nembed: a\nfinal_norm: a\n"
                      "lm_head: a\nlayers:\n  - take: a.L0-1\n  - take: a.L1\n")
    return recipe


def _garage_with_terminal_stderr(*argv: str, cwd: Path) -> tuple[int, str, str]:
    """Run garage with stdout piped and stderr on a pseudo-terminal, as a person at a shell sees it."""
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    child = subprocess.Popen([sys.executable, "-m", "garage_tui.cli", *argv], stdout=subprocess.PIPE,
                             stderr=follower, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(follower)
    screen = b""
    while True:  # read the terminal until the child closes it (EOF/EIO), not for a fixed time
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    out = child.stdout.read().decode()
    child.wait(timeout=120)
    os.close(leader)
    return child.returncode, out, screen.decode(errors="replace")


@pytest.mark.slow  # starts garage processes
def test_build_shows_a_bar_on_a_terminal_and_none_with_json(tmp_path):
    recipe = _tiny_recipe(tmp_path)
    code, out, screen = _garage_with_terminal_stderr("build", str(recipe), "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert code == 0, screen
    assert "built" in out and "%" not in out  # the bar never lands in stdout
    assert "100%" in screen or "writing" in screen, screen
    code, out, screen = _garage_with_terminal_stderr("build", str(recipe), "--out", str(tmp_path / "b"), "--json",
                                                     cwd=tmp_path)
    assert code == 0 and json.loads(out)["layers"] == 3
    assert screen.strip() == ""
