"""Streaming statistics equal the same statistics computed on the full captured tensor."""

from __future__ import annotations

import math

import pytest
import torch

from engine.capture import capture_prompt
from engine.hooks import count_garage_hooks
from engine.interventions import ablate
from engine.stats import NEAR_ZERO, StreamingStats, every_layer_and_head, residual_norms, stream_stats

PROMPT = "The old garage stood at the end of a narrow street, between a bakery and a bicycle shop."
REL = 1e-5


def _close(got: float, want: float, rel: float = REL, floor: float = 1e-6) -> bool:
    return abs(got - want) <= rel * abs(want) + floor


def _reference(tensor: torch.Tensor) -> dict:
    """Statistics of the whole tensor, computed directly (float64)."""
    x = tensor.double()
    flat = x.reshape(-1)
    centred = flat - flat.mean()
    variance = centred.square().mean()
    norms = x.norm(dim=-1).reshape(-1)
    return {
        "count": flat.numel(), "mean": float(flat.mean()), "std": float(variance.sqrt()),
        "rms": float(flat.square().mean().sqrt()), "min": float(flat.min()), "max": float(flat.max()),
        "absmax": float(flat.abs().max()), "sparsity": float((flat.abs() <= NEAR_ZERO).double().mean()),
        "kurtosis": float(centred.pow(4).mean() / variance.square() - 3.0),
        "l2_mean": float(norms.mean()), "l2_std": float(norms.std(unbiased=False)),
        "l2_min": float(norms.min()), "l2_max": float(norms.max()),
    }


def _assert_matches(summary, tensor: torch.Tensor) -> None:
    want = _reference(tensor)
    assert summary.count == want["count"]
    for name in ("mean", "std", "rms", "min", "max", "absmax", "sparsity", "kurtosis"):
        assert _close(getattr(summary, name), want[name]), (summary.address, name, getattr(summary, name), want[name])
    for name in ("mean", "std", "min", "max"):
        assert _close(summary.token_l2[name], want[f"l2_{name}"]), (summary.address, "token_l2", name)
    edges = torch.tensor(summary.hist_edges, dtype=torch.float64)
    assert edges[0] <= want["min"] and want["max"] < edges[-1]
    # by edge comparison ([left, right) bins); torch.histogram rounds values a hair below an edge
    index = torch.searchsorted(edges, tensor.double().reshape(-1), right=True) - 1
    counts = torch.bincount(index, minlength=len(edges) - 1).tolist()
    assert counts == summary.hist_counts, summary.address


@pytest.mark.parametrize("fixture", ["smollm2", "minilm"])
def test_streaming_equals_full_tensor_for_every_layer_and_head(fixture, request):
    loaded = request.getfixturevalue(fixture)
    addresses = every_layer_and_head(loaded) + ["L1.mlp.hidden", "L2.attn.out", "L3.in"]
    summaries = stream_stats(loaded, PROMPT, addresses, bins=64)
    assert count_garage_hooks(loaded.model) == 0
    n_layers, d_head = loaded.anatomy.n_layers, loaded.anatomy.geometry.head_dim
    plain_points = [a for a in addresses if ".attn.h" not in a]
    captured, _ = capture_prompt(loaded, PROMPT, plain_points + [f"L{i}.attn.z" for i in range(n_layers)])
    for address in addresses:
        if ".attn.h" in address:
            layer, head = int(address[1:].split(".")[0]), int(address.split(".h")[1].split(".")[0])
            tensor = captured[f"L{layer}.attn.z"][..., head * d_head:(head + 1) * d_head]
        else:
            tensor = captured[address]
        assert summaries[address].width == tensor.shape[-1]
        _assert_matches(summaries[address], tensor)


def test_streaming_a_head_pattern(smollm2):
    summary = stream_stats(smollm2, PROMPT, ["L2.attn.h1.pattern"])["L2.attn.h1.pattern"]
    assert smollm2.model.config._attn_implementation == "sdpa"
    pattern = capture_prompt(smollm2, PROMPT, ["L2.attn.pattern"])[0]["L2.attn.pattern"][:, 1]
    _assert_matches(summary, pattern)
    assert summary.token_l2["max"] <= 1.0 + 1e-6  # rows of probabilities


def test_streaming_over_several_prompts_merges_exactly(smollm2):
    prompts = [PROMPT, "Numbers: 1, 22, 333, 4444, 55555.", "Hi"]
    summary = stream_stats(smollm2, prompts, ["L3.out", "L20.attn.h4.z"], bins=32)
    for address in ("L3.out",):
        parts = [capture_prompt(smollm2, p, [address])[0][address].reshape(-1, 576) for p in prompts]
        _assert_matches(summary[address], torch.cat(parts))


def test_pieces_and_whole_give_the_same_summary():
    torch.manual_seed(0)
    values = torch.cat([torch.randn(40, 16), 50 * torch.randn(3, 16), torch.zeros(5, 16)])
    whole, pieces = StreamingStats(16), StreamingStats(16)
    whole.update(values)
    for piece in values.split(7):
        pieces.update(piece)
    a, b = whole.summary(), pieces.summary()
    for name in ("mean", "std", "rms", "kurtosis", "sparsity", "absmax"):
        assert math.isclose(getattr(a, name), getattr(b, name), rel_tol=1e-9, abs_tol=1e-12)
    # the edges depend on what arrived first (the width doubles as the range grows), but the
    # counts always equal the full tensor's counts over the edges in use
    assert b.hist_edges[1] - b.hist_edges[0] >= a.hist_edges[1] - a.hist_edges[0]
    _assert_matches(a, values)
    assert a.sparsity >= 5 / 48  # the zero rows, plus any random value this close to zero
    _assert_matches(b, values)


def test_stats_see_interventions_at_the_same_site(smollm2):
    plain = stream_stats(smollm2, PROMPT, ["L5.mlp.out", "L6.out"])
    ablated = stream_stats(smollm2, PROMPT, ["L5.mlp.out", "L6.out"], interventions=[ablate("L5.mlp")])
    assert plain["L5.mlp.out"].absmax > 0
    assert ablated["L5.mlp.out"].absmax == 0.0 and ablated["L5.mlp.out"].sparsity == 1.0
    assert ablated["L6.out"].mean != plain["L6.out"].mean


def test_residual_norms_are_mean_token_norms(smollm2):
    norms = residual_norms(smollm2, PROMPT)
    assert len(norms) == smollm2.anatomy.n_layers
    captured, _ = capture_prompt(smollm2, PROMPT, ["L0.out", "L29.out"])
    assert norms[0] == pytest.approx(float(captured["L0.out"].double().norm(dim=-1).mean()), rel=REL)
    assert norms[-1] == pytest.approx(float(captured["L29.out"].double().norm(dim=-1).mean()), rel=REL)


def test_summary_to_dict_is_json_safe_and_small(smollm2):
    import json

    summary = stream_stats(smollm2, PROMPT * 4, ["L2.out"], bins=16)["L2.out"]
    document = json.loads(json.dumps(summary.to_dict()))
    assert len(document["histogram"]["counts"]) == 16 and len(document["histogram"]["edges"]) == 17
    assert document["count"] == summary.count > 16 * 576
