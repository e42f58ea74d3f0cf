"""Layer similarity: per-layer in/out cosine, the layer matrix, and flagged layers."""

from __future__ import annotations

import json

import pytest
import torch

from engine.analyzers.similarity import layer_similarity
from engine.capture import capture_prompt
from engine.interventions import ablate

PROMPT = "Some engines came from farms in the valley, some from the city."


@pytest.mark.parametrize("fixture", ["smollm2", "minilm"])
def test_similarity_matches_captured_residuals(fixture, request):
    loaded = request.getfixturevalue(fixture)
    report = layer_similarity(loaded, PROMPT)
    n = loaded.anatomy.n_layers
    assert len(report.layers) == n and len(report.matrix) == n
    captured, _ = capture_prompt(loaded, PROMPT, ["L2.in", "L2.out"])
    residual_in, residual_out = captured["L2.in"][0].double(), captured["L2.out"][0].double()
    manual = torch.nn.functional.cosine_similarity(residual_in, residual_out, dim=-1)
    assert report.layers[2].cosine == pytest.approx(float(manual.mean()), rel=1e-6)
    matrix = torch.tensor(report.matrix)
    assert torch.allclose(matrix, matrix.T, atol=1e-9)
    assert torch.allclose(matrix.diagonal(), torch.ones(n, dtype=matrix.dtype), atol=1e-9)
    assert report.flagged == [f"L{c.layer}" for c in report.layers if c.cosine >= report.threshold]
    json.dumps(report.to_dict())


def test_a_skipped_layer_is_flagged(smollm2):
    plain = layer_similarity(smollm2, PROMPT)
    skipped = layer_similarity(smollm2, PROMPT, [ablate("L7")])  # zero-ablating a layer skips it
    assert skipped.layers[7].cosine == pytest.approx(1.0, abs=1e-9) and skipped.layers[7].relative_change == 0.0
    assert "L7" in skipped.flagged
    assert plain.layers[7].relative_change > 0
