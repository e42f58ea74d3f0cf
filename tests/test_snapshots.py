"""Snapshots round-trip through safetensors and diff address by address."""

from __future__ import annotations

import json

import pytest
import torch

from engine.errors import GarageError, StorageError
from engine.interventions import ablate
from engine.snapshots import (
    all_points,
    diff_snapshots,
    load_snapshot,
    load_tensors,
    save_snapshot,
    save_tensors,
    take_snapshot,
)

PROMPT = "The mechanic rolled up the wide metal door"


@pytest.mark.parametrize("fixture, ablated_layer", [("smollm2", 12), ("minilm", 3)])
def test_self_diff_is_zero_and_ablation_diff_starts_at_the_ablated_layer(fixture, ablated_layer, request, tmp_path):
    loaded = request.getfixturevalue(fixture)
    clean = take_snapshot(loaded, PROMPT)
    path = save_snapshot(tmp_path / "clean.safetensors", clean)
    reread = load_snapshot(path)
    assert set(reread.tensors) == set(all_points(loaded.anatomy))
    self_diff = diff_snapshots(clean, reread)
    assert self_diff.changed() == []
    assert all(e.max_abs == 0 and e.relative_l2 == 0 and e.cosine == pytest.approx(1.0) for e in self_diff.entries)

    ablated_run = take_snapshot(loaded, PROMPT, interventions=[ablate(f"L{ablated_layer}.mlp")])
    ablated = load_snapshot(save_snapshot(tmp_path / "ablated.safetensors", ablated_run))
    report = diff_snapshots(reread, ablated)
    order = [e.address for e in report.entries]
    first_changed = order.index(f"L{ablated_layer}.mlp.out")
    assert report.changed() == order[first_changed:]  # zero before the ablated MLP, non-zero from it on
    assert f"L{ablated_layer}.attn.out" not in report.changed()
    assert all(e.relative_l2 > 0 and e.cosine < 1 for e in report.entries[first_changed:])
    expected = [{"kind": "ablate", "address": f"L{ablated_layer}.mlp", "mode": "zero"}]
    assert report.to_dict()["interventions_b"] == expected


def test_snapshot_metadata(smollm2, tmp_path):
    snapshot = take_snapshot(smollm2, PROMPT, ["L3", "L4.attn.h2.z"], [ablate("L2.attn.h1")])
    reread = load_snapshot(save_snapshot(tmp_path / "s.safetensors", snapshot))
    meta = reread.metadata
    assert meta["model"] == "smollm2-135m" and meta["config_hash"] == smollm2.config_hash
    assert meta["prompt"] == PROMPT and meta["token_ids"] == smollm2.tokenizer(PROMPT).input_ids
    assert meta["addresses"] == ["L3.out", "L4.attn.h2.z"] and meta["dtype"] == "float32"
    assert meta["interventions"] == [{"kind": "ablate", "address": "L2.attn.h1", "mode": "zero"}]
    assert meta["created_at"].endswith("+00:00")
    assert list(reread.tensors["L4.attn.h2.z"].shape) == [1, len(meta["token_ids"]), 64]
    assert torch.equal(reread.tensors["L3.out"], snapshot.tensors["L3.out"])
    json.dumps(reread.to_dict())


def test_diff_refuses_other_models_and_other_lengths(smollm2, minilm):
    a = take_snapshot(smollm2, PROMPT, ["L1"])
    with pytest.raises(GarageError, match="different models"):
        diff_snapshots(a, take_snapshot(minilm, PROMPT, ["L1"]))
    with pytest.raises(GarageError, match="same token length"):
        diff_snapshots(a, take_snapshot(smollm2, PROMPT + " and looked", ["L1"]))


def test_load_refuses_non_snapshots_and_writes_are_atomic(tmp_path):
    plain = save_tensors(tmp_path / "plain.safetensors", {"x": torch.ones(2)}, {"note": "not a snapshot"})
    assert load_tensors(plain)[1] == {"note": "not a snapshot"}
    with pytest.raises(StorageError, match="not a garage snapshot"):
        load_snapshot(plain)
    with pytest.raises(StorageError, match="no such file"):
        load_snapshot(tmp_path / "missing.safetensors")
    with pytest.raises(StorageError, match=".safetensors"):
        save_tensors(tmp_path / "x.bin", {"x": torch.ones(1)}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.safetensors"]
