"""Steering vectors and greedy generation."""

from __future__ import annotations

import json

import pytest
import torch

from engine.analyzers.generate import generate
from engine.analyzers.steering import compare_steering, steering_vector
from engine.capture import capture_prompt
from engine.errors import GarageError

POSITIVE = ["I love this, it is wonderful and happy.", "What a great, joyful day!"]
NEGATIVE = ["I hate this, it is awful and sad.", "What a terrible, miserable day!"]
PROMPT = "Today I feel"


def test_generate_is_greedy_and_matches_transformers(smollm2):
    ours = generate(smollm2, PROMPT, max_new_tokens=6)
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = smollm2.model.generate(ids, max_new_tokens=6, do_sample=False)
    assert ours.token_ids == reference[0, ids.shape[1]:].tolist()
    assert ours.text == smollm2.tokenizer.decode(ours.token_ids)


def test_vector_is_the_mean_residual_difference(smollm2):
    vector = steering_vector(smollm2, 10, POSITIVE, NEGATIVE)

    def text_mean(rows):  # position 0 (the attention sink) and rows over 4x the median norm left out
        rows = rows[1:]
        norms = rows.norm(dim=-1)
        return rows[norms <= 4 * norms.median()].mean(0)

    def mean_of(prompts):
        residuals = [capture_prompt(smollm2, p, ["L10.out"])[0]["L10.out"][0].double() for p in prompts]
        return torch.stack([text_mean(r) for r in residuals]).mean(0)

    assert torch.allclose(vector.vector.double(), mean_of(POSITIVE) - mean_of(NEGATIVE), atol=1e-5)
    assert vector.norm > 0


def test_strength_zero_leaves_generation_unchanged_and_nonzero_changes_it(smollm2):
    vector = steering_vector(smollm2, 10, POSITIVE, NEGATIVE)
    plain = generate(smollm2, PROMPT, max_new_tokens=8)
    comparison = compare_steering(smollm2, vector, PROMPT, strengths=[0.0, 8.0], max_new_tokens=8)
    assert comparison.generations[0.0].token_ids == plain.token_ids
    assert comparison.generations[8.0].token_ids != plain.token_ids
    document = json.loads(json.dumps(comparison.to_dict()))
    assert [g["strength"] for g in document["generations"]] == [0.0, 8.0]


def test_bad_steering_input(smollm2, minilm):
    with pytest.raises(GarageError, match="out of range"):
        steering_vector(smollm2, 30, POSITIVE, NEGATIVE)
    with pytest.raises(GarageError, match="at least one"):
        steering_vector(smollm2, 3, POSITIVE, [])
    with pytest.raises(GarageError, match="causal language model"):
        generate(minilm, "hello")


def test_cached_and_rerun_generation_agree(smollm2):
    from engine.decode import greedy_decode
    from engine.interventions import ablate, steer

    vector = steering_vector(smollm2, 10, POSITIVE, NEGATIVE)
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids

    def decode(interventions, count, mode):
        return greedy_decode(smollm2, ids, count, interventions, stop_at_eos=False, mode=mode).new_tokens

    for interventions in ([steer("L10", vector.vector, 8.0)], [ablate("L5.attn.h2")]):
        assert decode(interventions, 5, "kv-cache") == decode(interventions, 5, "rerun")
    # mean-ablation depends on the whole sequence, so generation reruns it in full
    mean = [ablate("L5.attn.h2", "mean")]
    assert greedy_decode(smollm2, ids, 3, mean).mode == "rerun"
    assert generate(smollm2, PROMPT, 3, mean).token_ids == decode(mean, 3, "rerun")
