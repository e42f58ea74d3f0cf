"""Logit lens: the last layer's reading is the model's own prediction."""

from __future__ import annotations

import json

import pytest

from engine.analyzers.lens import logit_lens
from engine.errors import GarageError
from engine.interventions import ablate
from engine.runner import predict

PROMPTS = [
    "The capital of France is",
    "The Eiffel Tower is in the city of",
    "One, two, three, four,",
    "The opposite of hot is",
    "My favourite colour is",
    "def add(a, b):\n    return",
]


def test_final_layer_reading_equals_the_models_top1(smollm2):
    for prompt in PROMPTS:
        report = logit_lens(smollm2, prompt, top_k=3)
        model_top = predict(smollm2, prompt, top_k=1).top[0]
        last = report.layers[-1]
        assert last.address == "L29.out"
        assert last.top[0][0] == model_top.token_id == report.final_token_id, prompt
        assert last.top[0][2] == pytest.approx(model_top.prob, rel=1e-4)
        assert last.final_token_rank == 0
    assert len(report.layers) == smollm2.anatomy.n_layers + 1 and report.layers[0].address == "embed.out"


def test_lens_layers_differ_and_answer_appears_late(smollm2):
    report = logit_lens(smollm2, "The capital of France is")
    assert report.final_token == " Paris"
    first = report.first_layer_with_answer()
    assert first is not None and int(first[1:].split(".")[0]) > 10
    assert report.layers[1].final_token_rank > 0
    json.dumps(report.to_dict())


def test_lens_under_intervention_follows_the_changed_model(smollm2):
    prompt = "The capital of France is"
    ablated = [ablate("L29.mlp")]
    report = logit_lens(smollm2, prompt, interventions=ablated)
    assert report.final_token_id == predict(smollm2, prompt, interventions=ablated, top_k=1).top[0].token_id
    assert report.layers[-1].top[0][2] != pytest.approx(logit_lens(smollm2, prompt).layers[-1].top[0][2])


def test_lens_refuses_models_without_lm_head(minilm):
    with pytest.raises(GarageError, match="causal language model"):
        logit_lens(minilm, "hello")


def test_lens_at_an_earlier_position_reads_that_positions_prediction(smollm2):
    import torch

    from engine.runner import encode, forward

    prompt = "The capital of France is"
    ids = encode(smollm2, prompt)
    logits, _ = forward(smollm2, ids)
    for position in (1, 3, -2):
        report = logit_lens(smollm2, prompt, top_k=2, position=position)
        assert report.position == position % ids.shape[1]
        expected = int(logits[0, position].argmax())
        assert report.final_token_id == report.layers[-1].top[0][0] == expected
        assert report.layers[-1].top[0][2] == pytest.approx(float(torch.softmax(logits[0, position], -1).max()),
                                                             rel=1e-4)
    assert logit_lens(smollm2, prompt, position=1).final_token_id != logit_lens(smollm2, prompt).final_token_id
    with pytest.raises(GarageError, match="position 40 is outside the prompt's"):
        logit_lens(smollm2, prompt, position=40)
