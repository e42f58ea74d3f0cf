"""Parts of Gemma-3-270M load back from the bin as modules that compute exactly what the source did:
an attention block (q/k norms, its layer's rotary base and sliding window), an MLP and a head.

The prompt is longer than Gemma's 512-token sliding window, so a sliding layer's part that
ignored the window (or took the global layers' rotary base) would differ.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow
SENTENCE = "The engine of a small garage hums while the mechanic sorts spare parts and old bolts. "


@pytest.fixture(scope="module")
def bin_(tmp_path_factory):
    from engine.parts import PartsBin

    return PartsBin(tmp_path_factory.mktemp("gemma-parts-home"))


@pytest.fixture(scope="module")
def gemma_run(gemma):
    from engine.hooks import hooked

    ids = gemma.tokenizer(SENTENCE * 40, return_tensors="pt").input_ids[:, :600]
    assert ids.shape[1] == 600 > gemma.config.sliding_window
    points = ["L3.attn.in", "L3.attn.out", "L3.attn.z", "L5.attn.in", "L5.attn.out", "L3.mlp.in", "L3.mlp.out"]
    with torch.no_grad(), hooked(gemma.model, gemma.anatomy, capture=points) as tap:
        gemma.model(ids)
    return ids, {point: tap[point].clone() for point in points}


@pytest.mark.parametrize("layer", [3, 5])  # sliding window (local rotary base) and global
def test_attention_block_is_bit_identical(bin_, gemma, gemma_run, layer):
    ids, tap = gemma_run
    record = bin_.add_from_model(gemma, f"L{layer}.attn")
    module = bin_.load_module(record.name)
    names = {entry.name for entry in record.tensors}
    assert {"q_norm.weight", "k_norm.weight", "q_proj.weight", "o_proj.weight"} <= names
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        out = module(tap[f"L{layer}.attn.in"], position_ids=positions)
    assert torch.equal(out, tap[f"L{layer}.attn.out"])


def test_sliding_part_differs_when_the_window_is_removed(bin_, gemma, gemma_run):
    """Not trivially equal: the same block run as if global gives another answer past the window."""
    ids, tap = gemma_run
    module = bin_.load_module(bin_.add_from_model(gemma, "L3.attn").name)
    inner = module.inner
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    inner.sliding_window, inner.layer_type = None, "full_attention"
    module.config.layer_types = ["full_attention"] * len(module.config.layer_types)
    with torch.no_grad():
        out = module(tap["L3.attn.in"], position_ids=positions)
    assert not torch.equal(out[:, 520:], tap["L3.attn.out"][:, 520:])


def test_mlp_is_bit_identical(bin_, gemma, gemma_run):
    _, tap = gemma_run
    module = bin_.load_module(bin_.add_from_model(gemma, "L3.mlp").name)
    with torch.no_grad():
        assert torch.equal(module(tap["L3.mlp.in"]), tap["L3.mlp.out"])


def test_head_part_reproduces_its_write_with_q_k_norms(bin_, gemma, gemma_run):
    from engine.heads import head_contributions

    _, tap = gemma_run
    record = bin_.add_from_model(gemma, "L3.attn.h2")
    slices = {entry.name: (entry.source, entry.slice) for entry in record.tensors}
    d = 256
    assert slices["q.weight"] == ("model.layers.3.self_attn.q_proj.weight", (0, 2 * d, 3 * d))
    assert slices["k.weight"] == ("model.layers.3.self_attn.k_proj.weight", (0, 0, d))  # the one KV head
    assert slices["o.weight"] == ("model.layers.3.self_attn.o_proj.weight", (1, 2 * d, 3 * d))
    assert slices["q_norm.weight"][0] == "model.layers.3.self_attn.q_norm.weight"
    head = bin_.load_module(record.name)
    with torch.no_grad():
        z = head.z(tap["L3.attn.in"])
        write = head(tap["L3.attn.in"])
        reference = head_contributions(gemma.model, gemma.anatomy, 3, tap["L3.attn.z"])[..., 2, :]
    assert torch.equal(z, tap["L3.attn.z"][..., 2 * d:3 * d])
    assert torch.equal(write, reference)
