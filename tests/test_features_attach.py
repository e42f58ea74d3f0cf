"""Splicing on a tiny random Llama: a transcoder from L0.mlp.in to L0.mlp.out, exact and lossy,
checked against the MLP input and output captured by hand; feature edits in cached generation."""

from __future__ import annotations

import torch

from engine.features.attach import FeatureEdit, splice
from engine.features.coder import CoderConfig, SparseCoder
from engine.run import run
from tests.tiny_models import tiny_model

IDS = torch.tensor([[3, 7, 11, 19, 23, 42]])


def _transcoder(d: int = 64, d_sae: int = 128, skip: bool = True) -> SparseCoder:
    g = torch.Generator().manual_seed(2)
    tensors = {"W_enc": torch.randn(d, d_sae, generator=g) * 0.2, "b_enc": torch.zeros(d_sae),
               "W_dec": torch.randn(d_sae, d, generator=g) * 0.2, "b_dec": torch.randn(d, generator=g) * 0.01}
    if skip:
        tensors["W_skip"] = torch.randn(d, d, generator=g) * 0.05
    arch = "skip_transcoder" if skip else "transcoder"
    return SparseCoder(CoderConfig(arch, d, d_sae, d, apply_b_dec_to_input=False), tensors)


def test_transcoder_splice_exact_and_lossy():
    llama = tiny_model("llama", seed=3)
    coder = _transcoder()
    plain = run(llama, IDS, capture=["L0.mlp.in", "L0.mlp.out", "L1.out"])
    exact = run(llama, IDS, capture=["L0.mlp.out", "L1.out"],
                interventions=[splice(coder, "L0.mlp.in", address_out="L0.mlp.out")])
    assert (exact.tap["L1.out"] - plain.tap["L1.out"]).abs().max() <= 1e-5
    lossy = run(llama, IDS, capture=["L0.mlp.out"],
                interventions=[splice(coder, "L0.mlp.in", address_out="L0.mlp.out", exact=False)])
    x = plain.tap["L0.mlp.in"]
    hand = torch.relu(x @ coder.W_enc + coder.b_enc) @ coder.W_dec + coder.b_dec + x @ coder.W_skip.T
    assert (lossy.tap["L0.mlp.out"] - hand).abs().max() <= 1e-5
    edited = run(llama, IDS, capture=["L0.mlp.out"],
                 interventions=[splice(coder, "L0.mlp.in", address_out="L0.mlp.out",
                                       edits=[FeatureEdit("scale", [0, 1, 2], 3.0)])])
    acts = torch.relu(x @ coder.W_enc + coder.b_enc)
    want = plain.tap["L0.mlp.out"] + 2.0 * acts[..., :3] @ coder.W_dec[:3]
    assert (edited.tap["L0.mlp.out"] - want).abs().max() <= 1e-5


def test_feature_splice_is_registered_and_describes_itself():
    from engine.interventions import INTERVENTIONS

    coder = _transcoder(skip=False)
    item = splice(coder, "L0.mlp.in", address_out="L0.mlp.out", edits=[FeatureEdit("ablate", [4])], part="tc")
    assert "features" in INTERVENTIONS and item.position_independent()
    assert item.describe() == "splice tc at L0.mlp.in (exact, ablate 4)"
    assert item.to_dict()["edits"] == [{"op": "ablate", "features": [4], "value": 0.0}]
