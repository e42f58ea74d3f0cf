"""Captures equal transformers' own hidden states; head contributions add up exactly."""

from __future__ import annotations

import pytest
import torch

from engine.heads import head_contributions, output_projection
from engine.hooks import hooked
from tests.tiny_models import tiny_configs, tiny_model

PROMPT = "The quick brown fox jumps over the lazy dog because it wants to"


def _ids(loaded, prompt=PROMPT):
    return loaded.tokenizer(prompt, return_tensors="pt").input_ids


@pytest.mark.parametrize("fixture", ["smollm2", "minilm"])
def test_layer_outputs_equal_output_hidden_states(fixture, request):
    loaded = request.getfixturevalue(fixture)
    ids = _ids(loaded)
    n = loaded.anatomy.n_layers
    with torch.no_grad():
        reference = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
        with hooked(loaded.model, loaded.anatomy, capture=[f"L{i}.out" for i in range(n)] + ["L0.in"]) as tap:
            loaded.model(input_ids=ids)
    assert tap.calls == {**{f"L{i}.out": 1 for i in range(n)}, "L0.in": 1}  # every hook fired once
    assert torch.equal(tap["L0.in"], reference[0])
    has_final_norm = "final_norm" in loaded.anatomy.by_address
    # transformers applies the final norm to its last hidden state; we keep the raw layer output.
    checked = n - 1 if has_final_norm else n
    for i in range(checked):
        assert (tap[f"L{i}.out"] - reference[i + 1]).abs().max().item() <= 1e-5, f"L{i}.out"
    if has_final_norm:
        final_norm = loaded.model.get_submodule(loaded.anatomy.part("final_norm").module_path)
        with torch.no_grad():
            assert (final_norm(tap[f"L{n - 1}.out"]) - reference[n]).abs().max().item() <= 1e-5


def _assert_heads_sum_to_attention(loaded, layer, ids):
    with torch.no_grad(), hooked(loaded.model, loaded.anatomy,
                                 capture=[f"L{layer}.attn.z", f"L{layer}.attn.out"]) as tap:
        loaded.model(input_ids=ids)
        per_head = head_contributions(loaded.model, loaded.anatomy, layer, tap[f"L{layer}.attn.z"])
        _, bias = output_projection(loaded.model, loaded.anatomy, layer)
    total = per_head.sum(dim=-2) + (bias if bias is not None else 0)
    assert per_head.shape[-2] == loaded.anatomy.geometry.n_heads
    assert (total - tap[f"L{layer}.attn.out"]).abs().max().item() <= 1e-4
    # Not trivially true: dropping one head breaks the identity.
    assert (per_head[..., 1:, :].sum(-2) - total).abs().max().item() > 1e-4


def test_head_decomposition_smollm2_gqa(smollm2):
    assert smollm2.anatomy.geometry.n_kv_heads == 3 and smollm2.anatomy.geometry.n_heads == 9
    _assert_heads_sum_to_attention(smollm2, 10, _ids(smollm2))


def test_head_decomposition_minilm_mha(minilm):
    _assert_heads_sum_to_attention(minilm, 2, _ids(minilm))


@pytest.mark.parametrize("family", sorted(tiny_configs()))
def test_head_decomposition_every_family(family):
    loaded = tiny_model(family)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25]])
    _assert_heads_sum_to_attention(loaded, 1, ids)


@pytest.mark.parametrize("family", sorted(tiny_configs()))
def test_every_family_layer_outputs_match_hidden_states(family):
    loaded = tiny_model(family)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        reference = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
        with hooked(loaded.model, loaded.anatomy, capture=["L0.out"]) as tap:
            loaded.model(input_ids=ids)
    assert (tap["L0.out"] - reference[1]).abs().max().item() <= 1e-5


def test_pattern_capture_is_a_distribution(smollm2_eager):
    loaded = smollm2_eager
    ids = _ids(loaded)
    points = ["L3.attn.pattern", "L3.attn.h2.pattern"]
    with torch.no_grad(), hooked(loaded.model, loaded.anatomy, capture=points) as tap:
        loaded.model(input_ids=ids)
    pattern = tap["L3.attn.pattern"]
    assert pattern.shape == (1, 9, ids.shape[1], ids.shape[1])
    assert torch.allclose(pattern.sum(-1), torch.ones_like(pattern.sum(-1)), atol=1e-5)
    assert torch.triu(pattern[0, 0], diagonal=1).abs().max().item() == 0  # causal
    assert torch.equal(tap["L3.attn.h2.pattern"], pattern[:, 2])


def test_pattern_capture_switches_sdpa_model_to_eager_and_back(smollm2):
    ids = _ids(smollm2)
    assert smollm2.model.config._attn_implementation == "sdpa"
    with torch.no_grad(), hooked(smollm2.model, smollm2.anatomy, capture=["L0.attn.pattern"]) as tap:
        smollm2.model(input_ids=ids)
    assert tap["L0.attn.pattern"].shape[-1] == ids.shape[1]
    assert smollm2.model.config._attn_implementation == "sdpa"
