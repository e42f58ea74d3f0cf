"""Attention report: patterns, entropy and named head roles on both real models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine.analyzers.attention import ROLE_THRESHOLD, attention_report, head_scores, pattern_entropy
from engine.errors import GarageError
from engine.hooks import count_garage_hooks
from engine.interventions import ablate

PROMPT = "The quick brown fox jumps over the lazy dog, and then the fox sleeps."


@pytest.mark.parametrize("fixture", ["smollm2", "minilm"])
def test_patterns_entropy_and_roles(fixture, request):
    loaded = request.getfixturevalue(fixture)
    impl_before = loaded.model.config._attn_implementation
    report = attention_report(loaded, PROMPT)
    assert loaded.model.config._attn_implementation == impl_before and count_garage_hooks(loaded.model) == 0
    geometry = loaded.anatomy.geometry
    assert len(report.heads) == loaded.anatomy.n_layers * geometry.n_heads
    n_tokens = len(report.tokens)
    pattern = report.pattern(1, 2)
    assert pattern.shape == (n_tokens, n_tokens)
    assert torch.allclose(pattern.sum(-1), torch.ones(n_tokens), atol=1e-4)
    head = report.heads[geometry.n_heads + 2]
    assert head.address == "L1.attn.h2"
    p = pattern.double()
    manual = float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean())
    assert head.entropy == pytest.approx(manual, rel=1e-6)
    assert 0 <= head.entropy <= math.log(n_tokens) + 1e-6
    for role in ("previous-token", "first-token"):
        assert report.heads_with_role(role), f"{fixture} should have a {role} head"
    for address in report.heads_with_role("previous-token"):
        layer, index = int(address[1:].split(".")[0]), int(address.split(".h")[1])
        rows = torch.arange(1, n_tokens)
        assert float(report.pattern(layer, index)[rows, rows - 1].mean()) >= ROLE_THRESHOLD
    document = json.loads(json.dumps(report.to_dict()))
    assert len(document["entropy"]) == loaded.anatomy.n_layers and "patterns" not in document


def test_causal_model_attends_only_backwards(smollm2):
    report = attention_report(smollm2, PROMPT)
    future = torch.triu(torch.ones(len(report.tokens), len(report.tokens)), diagonal=1).bool()
    assert float(report.patterns[:, :, future].abs().max()) == 0.0
    with pytest.raises(GarageError, match="no head L30"):
        report.pattern(30, 0)


def test_scores_and_entropy_on_hand_made_patterns():
    n = 5
    previous = torch.zeros(n, n)
    previous[0, 0] = 1
    previous[torch.arange(1, n), torch.arange(0, n - 1)] = 1
    assert head_scores(previous)["previous-token"] == 1.0 and head_scores(previous)["self"] == 0.0
    assert pattern_entropy(previous) == pytest.approx(0.0)
    uniform = torch.full((n, n), 1 / n)
    assert pattern_entropy(uniform) == pytest.approx(math.log(n))


def test_intervention_changes_later_patterns(smollm2):
    plain = attention_report(smollm2, PROMPT)
    ablated = attention_report(smollm2, PROMPT, [ablate("L3")])
    assert torch.equal(plain.patterns[:4], ablated.patterns[:4])
    assert not torch.allclose(plain.patterns[5], ablated.patterns[5])
