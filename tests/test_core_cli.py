"""The headless `garage` verbs of the engine core: inspect, run, capture, and their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.bundled import bundled_path
from engine.snapshots import load_tensors
from garage_tui.cli import main

REPO = Path(__file__).resolve().parent.parent
GARAGE = [sys.executable, "-m", "garage_tui.cli"]


def _garage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GARAGE, *args], capture_output=True, text=True, cwd=REPO, env=os.environ.copy(),
                          timeout=300)


@pytest.mark.slow
def test_run_predicts_paris_as_a_real_command():
    done = _garage("run", "smollm2-135m", "--prompt", "The capital of France is", "--json", "--top-k", "3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["top"][0]["token"] == " Paris"
    assert report["top"][0]["prob"] > report["top"][1]["prob"]


@pytest.mark.slow
def test_run_ablation_changes_logits_and_saves_them(tmp_path, capsys):
    plain, ablated = tmp_path / "plain.safetensors", tmp_path / "ablated.safetensors"
    assert main(["run", "smollm2-135m", "--prompt", "The capital of France is", "--logits-out", str(plain)]) == 0
    assert main(["run", "smollm2-135m", "--prompt", "The capital of France is", "--ablate", "L10.attn.h3",
                 "--scale", "L3.mlp=0.5", "--logits-out", str(ablated), "--json"]) == 0
    plain_logits, plain_meta = load_tensors(plain)
    ablated_logits, ablated_meta = load_tensors(ablated)
    assert plain_logits["logits"].shape == (49152,)
    assert plain_meta["prompt"] == "The capital of France is" and plain_meta["token_ids"]
    assert ablated_meta["interventions"] == [
        {"kind": "ablate", "address": "L10.attn.h3", "mode": "zero"},
        {"kind": "scale", "address": "L3.mlp", "factor": 0.5},
    ]
    assert not torch.equal(plain_logits["logits"], ablated_logits["logits"])


def test_capture_saves_one_tensor_per_address_with_metadata(tmp_path, smollm2):
    out = tmp_path / "cap.safetensors"
    assert main(["capture", "smollm2-135m", "--prompt", "Hello there", "--at", "L3", "--at", "L10.attn.h3.z",
                 "--at", "blocks.5.hook_mlp_out", "--out", str(out)]) == 0
    tensors, meta = load_tensors(out)
    assert set(tensors) == {"L3.out", "L10.attn.h3.z", "L5.mlp.out"}
    assert meta["model"] == "smollm2-135m" and meta["prompt"] == "Hello there"
    ids = torch.tensor([meta["token_ids"]])
    with torch.no_grad():
        hidden = smollm2.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert (tensors["L3.out"] - hidden[4]).abs().max().item() <= 1e-5
    assert tensors["L10.attn.h3.z"].shape == (1, ids.shape[1], 64)


@pytest.mark.slow
def test_inspect_json_lists_heads_and_kv_groups(capsys):
    assert main(["inspect", "smollm2-135m", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    layer10 = next(c for c in doc["tree"]["children"] if c["address"] == "L10")
    attn = next(c for c in layer10["children"] if c["address"] == "L10.attn")
    heads = [c for c in attn["children"] if c["kind"] == "head"]
    assert len(heads) == 9 and heads[4]["info"]["kv_group"] == 1
    assert "L10.attn.h3.z" in heads[3]["points"]
    assert doc["tree"]["params"] == 134_515_008


@pytest.mark.slow
def test_inspect_depth_limits_the_tree(capsys):
    assert main(["inspect", "minilm-l6", "--json", "--depth", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    layer = next(c for c in doc["tree"]["children"] if c["address"] == "L0")
    assert "children" not in layer


@pytest.mark.slow
def test_inspect_prints_a_tree(capsys):
    assert main(["inspect", "minilm-l6", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "L5.attn" in out and "12 heads" in out


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    no_config = tmp / "empty"
    no_config.mkdir()
    truncated_dir = tmp / "trunc"
    truncated_dir.mkdir()
    (truncated_dir / "config.json").write_text((bundled_path("minilm-l6") / "config.json").read_text())
    (truncated_dir / "model.safetensors").write_bytes(
        (bundled_path("minilm-l6") / "model.safetensors").read_bytes()[:1_000_000])
    garbage = tmp / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    return {
        "missing path": (["inspect", str(tmp / "nope" / "model")], "no such model"),
        "folder without config.json": (["inspect", str(no_config)], "has no config.json"),
        "truncated safetensors": (["inspect", str(truncated_dir / "model.safetensors")], "truncated"),
        "garbage gguf": (["inspect", str(garbage)], "not a GGUF file"),
        "unknown address": (["run", "smollm2-135m", "--prompt", "x", "--ablate", "L10.atn"], "unknown address"),
        "head out of range": (["run", "smollm2-135m", "--prompt", "x", "--ablate", "L10.attn.h9"], "out of range"),
    }


@pytest.mark.parametrize("case", ["missing path", "folder without config.json", "truncated safetensors",
                                  "garbage gguf", pytest.param("unknown address", marks=pytest.mark.slow),
                                  pytest.param("head out of range", marks=pytest.mark.slow)])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    argv, expected = _bad_inputs(tmp_path)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("garage: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_bad_input_from_the_real_command(tmp_path):
    done = _garage("run", "smollm2-135m", "--prompt", "hi", "--ablate", "L10.attn.h9")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "garage: error: head 9 is out of range in 'L10.attn.h9': L10.attn has heads h0–h8"]
