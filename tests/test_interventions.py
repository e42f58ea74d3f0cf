"""Interventions against hand-written references; hooks always leave the model as it was."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.errors import InterventionError
from engine.hooks import count_garage_hooks, hook_inventory, hooked
from engine.interventions import ablate, patch, replace, scale, steer
from tests.tiny_models import tiny_model

PROMPT = "The capital of France is"


def _logits(loaded, ids, interventions=(), capture=()):
    with torch.no_grad(), hooked(loaded.model, loaded.anatomy, capture, interventions):
        return loaded.model(input_ids=ids).logits


def _head_reference(loaded, ids, layer, head, factor):
    """Reference: scale head ``head``'s input columns of o_proj by ``factor`` (0 = ablate)."""
    model = copy.deepcopy(loaded.model)
    d = loaded.anatomy.geometry.head_dim
    o_proj = model.get_submodule(loaded.anatomy.module_path_of(layer, loaded.anatomy.family.attention.o))
    with torch.no_grad():
        if loaded.anatomy.family.attention.conv1d:
            o_proj.weight[head * d:(head + 1) * d, :] *= factor
        else:
            o_proj.weight[:, head * d:(head + 1) * d] *= factor
        return model(input_ids=ids).logits


def test_zero_ablate_head_matches_o_proj_reference_smollm2(smollm2):
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    clean = _logits(smollm2, ids)
    ablated = _logits(smollm2, ids, [ablate("L10.attn.h3")])
    reference = _head_reference(smollm2, ids, 10, 3, 0.0)
    assert (ablated - reference).abs().max().item() <= 1e-4
    assert (ablated - clean).abs().max().item() > 1e-3


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi3", "gemma", "gemma3"])
def test_head_scale_matches_reference_mha_and_gqa(family):
    loaded = tiny_model(family)
    ids = torch.tensor([[1, 7, 3, 9, 4, 2]])
    for head in range(loaded.anatomy.geometry.n_heads):
        got = _logits(loaded, ids, [scale(f"L1.attn.h{head}", 0.25)])
        assert torch.allclose(got, _head_reference(loaded, ids, 1, head, 0.25), atol=1e-5)


def test_hooks_leave_nothing_behind(smollm2):
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    before = hook_inventory(smollm2.model)
    clean = _logits(smollm2, ids)
    _logits(smollm2, ids, [ablate("L10.attn.h3"), scale("L4.mlp", 0.5), ablate("L7", "mean")],
            capture=["L3.out", "L10.attn.h3.z"])
    assert count_garage_hooks(smollm2.model) == 0
    assert hook_inventory(smollm2.model) == before
    assert torch.equal(_logits(smollm2, ids), clean)


def test_hooks_removed_when_the_block_raises(smollm2):
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    clean = _logits(smollm2, ids)
    original_mlp = smollm2.model.model.layers[2].mlp
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(smollm2.model, smollm2.anatomy, ["L1.out"],
                    [ablate("L10.attn.h3"), replace("L2.mlp", torch.nn.Identity())]):
            assert count_garage_hooks(smollm2.model) > 0
            raise RuntimeError("boom")
    assert count_garage_hooks(smollm2.model) == 0
    assert smollm2.model.model.layers[2].mlp is original_mlp
    assert torch.equal(_logits(smollm2, ids), clean)


def test_zero_ablating_a_layer_skips_it():
    loaded = tiny_model("llama")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    got = _logits(loaded, ids, [ablate("L0")])
    with torch.no_grad():
        skipped = copy.deepcopy(loaded.model)
        del skipped.model.layers[0]
        skipped.model.layers[0].self_attn.layer_idx = 0
        skipped.config.num_hidden_layers = 1
        reference = skipped(input_ids=ids).logits
    assert torch.allclose(got, reference, atol=1e-5)


def test_mean_ablation_and_scale_of_blocks(smollm2):
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    points = ["L5.mlp.out", "L5.attn.out"]
    with torch.no_grad(), hooked(smollm2.model, smollm2.anatomy, points) as clean:
        smollm2.model(input_ids=ids)
    with torch.no_grad(), hooked(smollm2.model, smollm2.anatomy, points, [scale("L5.attn", 2.0)]) as scaled:
        smollm2.model(input_ids=ids)
    with torch.no_grad(), hooked(smollm2.model, smollm2.anatomy, points,
                                 [ablate("L5.mlp", "mean"), scale("L5.attn", 2.0)]) as both:
        smollm2.model(input_ids=ids)
    assert torch.allclose(scaled["L5.attn.out"], 2.0 * clean["L5.attn.out"], atol=1e-5)
    # The MLP sees the scaled attention's stream; its mean-ablated output is that run's mean.
    expected_mean = scaled["L5.mlp.out"].mean(dim=(0, 1), keepdim=True).expand_as(clean["L5.mlp.out"])
    assert torch.allclose(both["L5.mlp.out"], expected_mean, atol=1e-6)
    assert not torch.allclose(both["L5.mlp.out"], clean["L5.mlp.out"].mean(dim=(0, 1), keepdim=True), atol=1e-3)


def test_steer_adds_vector_and_zero_strength_is_identity(smollm2):
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    vector = torch.randn(576, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), hooked(smollm2.model, smollm2.anatomy, ["L6.out"]) as clean:
        clean_logits = smollm2.model(input_ids=ids).logits
    with torch.no_grad(), hooked(smollm2.model, smollm2.anatomy, ["L6.out"], [steer("L6", vector, 3.0)]) as steered:
        steered_logits = smollm2.model(input_ids=ids).logits
    assert torch.allclose(steered["L6.out"], clean["L6.out"] + 3.0 * vector, atol=1e-5)
    assert not torch.allclose(steered_logits, clean_logits)
    assert torch.equal(_logits(smollm2, ids, [steer("L6", vector, 0.0)]), clean_logits)


def test_patch_from_another_prompt_reproduces_that_run(smollm2):
    tok = smollm2.tokenizer
    clean_ids = tok("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    corrupt_ids = tok("The Colosseum is in the city of", return_tensors="pt").input_ids
    assert clean_ids.shape == corrupt_ids.shape
    with torch.no_grad(), hooked(smollm2.model, smollm2.anatomy, ["L29.out", "L12.attn.h4.z"]) as clean:
        clean_logits = smollm2.model(input_ids=clean_ids).logits
    # Patching the last layer's whole output restores the clean logits exactly.
    restored = _logits(smollm2, corrupt_ids, [patch("L29.out", clean["L29.out"])])
    assert torch.allclose(restored, clean_logits, atol=1e-5)
    with torch.no_grad(), hooked(smollm2.model, smollm2.anatomy, ["L12.attn.h4.z", "L12.attn.h5.z"],
                                 [patch("L12.attn.h4.z", clean["L12.attn.h4.z"])]) as patched:
        smollm2.model(input_ids=corrupt_ids)
    assert torch.equal(patched["L12.attn.h4.z"], clean["L12.attn.h4.z"])
    assert not torch.equal(patched["L12.attn.h5.z"], clean["L12.attn.h4.z"])


def test_replace_module_and_compose_interventions(smollm2):
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids

    class Zero(torch.nn.Module):
        def forward(self, hidden):
            return torch.zeros_like(hidden)

    replaced = _logits(smollm2, ids, [replace("L4.mlp", Zero())])
    zeroed = _logits(smollm2, ids, [ablate("L4.mlp")])
    assert torch.allclose(replaced, zeroed, atol=1e-6)
    both = _logits(smollm2, ids, [ablate("L4.mlp"), ablate("L10.attn.h3")])
    assert not torch.allclose(both, zeroed, atol=1e-4)


def test_bad_interventions_are_clear(smollm2):
    with pytest.raises(InterventionError, match="ablation mode"):
        ablate("L1", "median")
    with pytest.raises(InterventionError, match="finite"):
        scale("L1", float("nan"))
    with pytest.raises(InterventionError, match="residual"):
        with hooked(smollm2.model, smollm2.anatomy, (), [steer("L1.mlp", torch.zeros(576))]):
            pass
    with pytest.raises(InterventionError, match="size 3"):
        with hooked(smollm2.model, smollm2.anatomy, (), [steer("L1", torch.zeros(3))]):
            pass
    assert count_garage_hooks(smollm2.model) == 0


def test_cancel_stops_a_forward_pass_between_layers(smollm2):
    import threading

    from engine.errors import Cancelled
    from engine.runner import forward

    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    cancel = threading.Event()
    # Esc arrives while layer 5 runs: layer 6 must never start.
    layer5 = smollm2.model.model.layers[5]
    handle = layer5.register_forward_hook(lambda *_: cancel.set())
    try:
        with pytest.raises(Cancelled):
            forward(smollm2, ids, capture=["L5.out", "L6.out"], cancel=cancel)
    finally:
        handle.remove()
    assert count_garage_hooks(smollm2.model) == 0
    logits, tap = forward(smollm2, ids, capture=["L6.out"], cancel=threading.Event())
    assert "L6.out" in tap and torch.equal(logits, _logits(smollm2, ids))
