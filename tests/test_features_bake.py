"""Baking interventions into weights: plain transformers on the built folder gives the runtime
intervention's logits (tiny random Llama here; SmolLM2 in test_features_smollm2.py)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from engine.features.bake import BakeOp, bake
from engine.features.directions import direction_edit
from engine.features.errors import FeatureError
from engine.interventions import scale, steer
from engine.run import run
from tests.tiny_models import tiny_model

IDS = torch.tensor([[1, 5, 9, 33, 17, 64, 2, 90]])


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", seed=1)


def _plain_logits(folder) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_bake_directional_ablation_matches_runtime(llama, tmp_path):
    direction = torch.randn(64, generator=torch.Generator().manual_seed(4))
    runtime = run(llama, IDS, interventions=[direction_edit(direction, "writers")]).logits
    untouched = run(llama, IDS).logits
    op = BakeOp("ablate_direction", vector=direction, direction_part="d1", direction_digest="ab" * 32)
    result = bake(llama, [op], tmp_path / "baked")
    baked = _plain_logits(result.output)
    assert (baked - runtime).abs().max() <= 1e-4
    assert (runtime - untouched).abs().max() > 1e-3  # the edit matters, so the equality means something
    provenance = json.loads((result.output / "garage_bake.json").read_text())
    assert provenance["ops"][0]["op"] == "ablate_direction" and provenance["ops"][0]["direction_digest"] == "ab" * 32
    assert provenance["source"]["config_hash"] == llama.config_hash


def test_bake_steer_bias_and_head_scale_match_runtime(llama, tmp_path):
    vector = torch.randn(64, generator=torch.Generator().manual_seed(5))
    runtime = run(llama, IDS, interventions=[steer("L0", vector, 2.5), scale("L1.attn.h2", 0.3)]).logits
    result = bake(llama, [BakeOp("steer_bias", vector=vector, layer=0, strength=2.5),
                          BakeOp("scale_head", layer=1, head=2, factor=0.3)], tmp_path / "steered")
    assert json.loads((result.output / "config.json").read_text())["mlp_bias"] is True
    assert (_plain_logits(result.output) - runtime).abs().max() <= 1e-4
    assert llama.model.config.mlp_bias is False  # the open model is untouched


def test_bake_refuses_families_without_mlp_bias(tmp_path):
    gpt2 = tiny_model("gpt2")
    with pytest.raises(FeatureError, match="no mlp_bias switch|not a Linear"):
        bake(gpt2, [BakeOp("steer_bias", vector=torch.ones(64), layer=0)], tmp_path / "x")
    assert not (tmp_path / "x").exists()
