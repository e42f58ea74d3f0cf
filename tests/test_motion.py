"""Snapshots in motion: states recorded step by step during generation equal a full rerun."""

from __future__ import annotations

import json

import pytest
import torch

from engine.analyzers.generate import generate
from engine.errors import GarageError
from engine.hooks import count_garage_hooks
from engine.interventions import ablate
from engine.motion import take_motion_snapshot
from engine.runner import forward
from engine.snapshots import diff_snapshots, load_snapshot, save_snapshot

PROMPT = "The capital of France is"
POINTS = ["embed.out", "L0.out", "L10.attn.h3.z", "L17.mlp.out", "L29.out"]


def _close(stepwise: torch.Tensor, full: torch.Tensor) -> bool:
    # float32 over 30 layers: relative to the tensor's magnitude (L29's residual reaches ~2500).
    return (stepwise - full).abs().max().item() <= 1e-5 * full.abs().max().item() + 1e-5


def test_cached_steps_stitch_into_the_full_sequence_states(smollm2, tmp_path):
    snapshot = take_motion_snapshot(smollm2, PROMPT, POINTS, max_new_tokens=6)
    motion = snapshot.metadata["motion"]
    assert motion["mode"] == "kv-cache" and motion["prompt_tokens"] == 5
    assert motion["generated_ids"] == generate(smollm2, PROMPT, max_new_tokens=6).token_ids
    token_ids = snapshot.metadata["token_ids"]
    assert len(token_ids) == 5 + len(motion["generated_ids"])
    _, full = forward(smollm2, torch.tensor([token_ids]), capture=POINTS)
    for address in POINTS:
        assert snapshot.tensors[address].shape[1] == len(token_ids), address
        assert _close(snapshot.tensors[address], full[address]), address
    # A broken stitch (dropping the last step) would not line up with the rerun.
    assert not _close(snapshot.tensors["L29.out"][:, 1:], full["L29.out"][:, :-1])
    assert count_garage_hooks(smollm2.model) == 0
    path = save_snapshot(tmp_path / "motion.safetensors", snapshot)
    again = load_snapshot(path)
    assert again.metadata["motion"] == json.loads(json.dumps(motion))
    assert all(entry.max_abs == 0 for entry in diff_snapshots(snapshot, again).entries)


def test_sequence_wide_interventions_rerun_each_step(smollm2):
    clean = take_motion_snapshot(smollm2, PROMPT, ["L29.out"], max_new_tokens=3)
    ablated = take_motion_snapshot(smollm2, PROMPT, ["L29.out"], [ablate("L20.mlp", "mean")], max_new_tokens=3)
    assert ablated.metadata["motion"]["mode"] == "rerun"
    n = len(ablated.metadata["token_ids"])
    assert ablated.tensors["L29.out"].shape[1] == n
    assert not torch.allclose(ablated.tensors["L29.out"][:, :5], clean.tensors["L29.out"][:, :5], atol=1e-3)
    # Each step's last position equals a rerun of the sequence up to it under the same ablation.
    _, upto = forward(smollm2, torch.tensor([ablated.metadata["token_ids"][:7]]), capture=["L29.out"],
                      interventions=[ablate("L20.mlp", "mean")])
    assert _close(ablated.tensors["L29.out"][:, 6], upto["L29.out"][:, 6])


def test_motion_refuses_patterns_encoders_and_zero_tokens(smollm2, minilm):
    with pytest.raises(GarageError, match="attention pattern, which grows"):
        take_motion_snapshot(smollm2, PROMPT, ["L3.attn.h1.pattern"])
    with pytest.raises(GarageError, match="causal language model"):
        take_motion_snapshot(minilm, PROMPT)
    with pytest.raises(GarageError, match="at least 1"):
        take_motion_snapshot(smollm2, PROMPT, max_new_tokens=0)


def test_snapshot_verb_generates(smollm2, monkeypatch, tmp_path, capsys):
    from garage_tui.cli import main
    from garage_tui.commands import snapshot_cmd

    monkeypatch.setattr(snapshot_cmd, "open_from_args", lambda args, **kw: smollm2)
    out = tmp_path / "m.safetensors"
    assert main(["snapshot", "smollm2-135m", "--prompt", PROMPT, "--at", "L5.out", "--generate", "4",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 generated: ' Paris." in printed and "(9 tokens" in printed
    assert load_snapshot(out).tensors["L5.out"].shape == (1, 9, 576)
