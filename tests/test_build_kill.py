"""A build that is killed or cancelled leaves no folder at the output path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from engine.build import build, load_recipe
from engine.loading import Cancelled
from tests.forked import forked

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import sys
from pathlib import Path
from engine.build import build, load_recipe

marker = Path(sys.argv[2])

def progress(stage, fraction):
    if fraction:
        marker.write_text(str(fraction))

build(load_recipe(sys.argv[1]), sys.argv[3], progress=progress)
marker.write_text("finished")
"""


@pytest.mark.slow  # a child process building from the bundled SmolLM2
def test_sigkill_mid_build_leaves_no_output_folder(tmp_path):
    out = tmp_path / "hybrid"
    marker = tmp_path / "progress.txt"
    child = forked(CHILD, REPO / "recipes" / "smollm2-identity.yaml", marker, out)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = marker.read_text() if marker.exists() else ""
            if text and text != "finished" and float(text) >= 0.05:
                break
            assert child.poll() is None, "the build ended before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("the build never started writing")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert marker.read_text() != "finished"
    assert not out.exists()
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".hybrid.")]
    assert len(staging) == 1 and staging[0].name.endswith(".tmp")  # the half-made build is hidden beside it
    assert (staging[0] / "model.safetensors").stat().st_size < 538_090_408
    shutil.rmtree(staging[0])  # half a SmolLM2; pytest keeps old temp folders around


def test_cancel_event_stops_build_and_leaves_nothing(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    source = tmp_path / "src"
    LlamaForCausalLM(LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=48, vocab_size=64)).save_pretrained(source)
    recipe = load_recipe(json.dumps({"recipe_version": 1, "sources": {"a": str(source)}, "embed": "a",
                                     "final_norm": "a", "lm_head": "a", "layers": [{"take": "a.L0-2"}]}))
    cancel = threading.Event()
    seen = []

    def progress(stage: str, fraction: float | None) -> None:
        seen.append(stage)
        if len(seen) == 4:
            cancel.set()

    out = tmp_path / "out"
    with pytest.raises(Cancelled, match="cancelled"):
        build(recipe, out, progress=progress, cancel=cancel)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    from engine.errors import StorageError

    with pytest.raises(StorageError, match="already exists and is not empty"):
        build(recipe, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
