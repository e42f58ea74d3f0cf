"""Every supported family's parts load back and match the source module (tiny random models)."""

from __future__ import annotations

import pytest
import torch

FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gemma3", "gpt2", "gpt_neox", "phi", "phi3", "bert"]


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_attention_mlp_and_head_round_trip(family, tmp_path):
    from engine.heads import head_contributions
    from engine.hooks import hooked
    from engine.parts import PartsBin
    from tests.tiny_models import tiny_model

    loaded = tiny_model(family)
    bin_ = PartsBin(tmp_path)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    attn_is_block_output = loaded.anatomy.family.attention.out_module == loaded.anatomy.family.attention.module
    points = ["L1.in", "L1.out", "L1.attn.z", "L1.attn.in", "L1.mlp.in", "L1.mlp.out"]
    if attn_is_block_output:
        points.append("L1.attn.out")
    with torch.no_grad(), hooked(loaded.model, loaded.anatomy, capture=points) as tap:
        loaded.model(ids)
    with torch.no_grad():
        layer = bin_.load_module(bin_.add_from_model(loaded, "L1").name)
        assert torch.equal(layer(tap["L1.in"]), tap["L1.out"])
        mlp = bin_.load_module(bin_.add_from_model(loaded, "L1.mlp").name)
        assert torch.equal(mlp(tap["L1.mlp.in"]), tap["L1.mlp.out"])
        if attn_is_block_output:
            attn = bin_.load_module(bin_.add_from_model(loaded, "L1.attn").name)
            assert torch.equal(attn(tap["L1.attn.in"]), tap["L1.attn.out"])
        head = bin_.load_module(bin_.add_from_model(loaded, "L1.attn.h1").name)
        expected = head_contributions(loaded.model, loaded.anatomy, 1, tap["L1.attn.z"])[..., 1, :]
        torch.testing.assert_close(head(tap["L1.attn.in"]), expected, rtol=1e-5, atol=1e-6)
