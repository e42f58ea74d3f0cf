"""Massive-activation sinks are left out of stitches and of the transfer's DiffMean vectors: a few
rows at many times the median norm would otherwise decide R², pull the ridge map and leak into a
steering direction (issue 15's real pair: SmolLM2's first token, Gemma 3's '’')."""

from __future__ import annotations

import pytest
import torch

from engine.transfer.evaluate import fit_metrics
from engine.transfer.pairs import SINK_RATIO, PairBatch, sink_rows, without_sinks
from engine.transfer.stitch import accumulate, fit_ridge
from tests.test_transfer_judge import TINY_TASK, ListTokenizer
from tests.tiny_models import tiny_model


def _batch(x: torch.Tensor, y: torch.Tensor) -> PairBatch:
    empty = torch.zeros(1, 1, dtype=torch.long)
    return PairBatch(x, y, empty, empty, torch.arange(x.shape[0]), torch.arange(x.shape[0]))


MATRIX = torch.randn(16, 24, generator=torch.Generator().manual_seed(0))


def _linear_with_sinks(seed: int, rows: int = 300, sinks: int = 3) -> PairBatch:
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(rows, 16, generator=generator)
    y = x @ MATRIX
    # B's sink rows: huge and unrelated to A's row (a sink's value is not the text's)
    y[:sinks] = torch.randn(sinks, 24, generator=generator) * 40 * float(y.norm(dim=1).median())
    return _batch(x, y)


def test_sink_rows_flags_only_rows_far_above_the_median_norm():
    rows = torch.ones(10, 4)
    rows[3] *= SINK_RATIO * 1.01
    rows[5] *= SINK_RATIO * 0.99
    assert sink_rows(rows).tolist() == [index == 3 for index in range(10)]
    assert sink_rows(torch.zeros(0, 4)).numel() == 0


def test_stitch_leaves_sink_rows_out_of_the_fit_and_of_r2():
    train = [_linear_with_sinks(seed) for seed in range(4)]
    held = _linear_with_sinks(9)
    kept = [without_sinks(batch) for batch in train]
    assert all(batch.sinks == 3 and batch.x.shape[0] == 297 for batch in kept)
    clean = fit_ridge(accumulate(kept), ridge=1e-9)
    metrics = fit_metrics(clean, [without_sinks(held)])
    assert metrics.r2 > 0.9999 and metrics.sinks == 3 and metrics.pairs == 297
    # with the sinks kept, three rows in a hundred ruin both the map and the score
    raw = fit_ridge(accumulate(train), ridge=1e-9)
    assert fit_metrics(raw, [held]).r2 < 0.5 and fit_metrics(raw, [without_sinks(held)]).r2 < 0.99


def test_task_vector_leaves_position_zero_out_of_each_prompt_mean():
    from engine.run import run
    from engine.transfer.judge import task_vector

    loaded = tiny_model("llama", seed=3)
    loaded.tokenizer = ListTokenizer()

    def mean(prompts, start):
        rows = [run(loaded, loaded.tokenizer(p, return_tensors="pt").input_ids, capture=["L0.out"]).tap["L0.out"][0]
                for p in prompts]
        return torch.stack([r[start:].double().mean(0) for r in rows]).mean(0)

    vector = task_vector(loaded, "L0.out", TINY_TASK)
    expected = mean(TINY_TASK.positive, 1) - mean(TINY_TASK.negative, 1)
    assert torch.allclose(vector.double(), expected, atol=1e-5)
    assert not torch.allclose(vector.double(), mean(TINY_TASK.positive, 0) - mean(TINY_TASK.negative, 0), atol=1e-3)


@pytest.mark.slow
def test_smollm2_sink_no_longer_leaks_into_the_sentiment_direction(smollm2):
    from engine.run import run
    from engine.runner import encode
    from engine.transfer.judge import task_vector
    from engine.transfer.prompts import load_task

    task = load_task("sentiment")
    layers = (6, 14)

    def mean(prompts):  # the DiffMean the garage's steer used to take: every position, both layers in one pass
        taps = [run(smollm2, encode(smollm2, p), capture=[f"L{layer}.out" for layer in layers]).tap for p in prompts]
        return {layer: torch.stack([tap[f"L{layer}.out"][0].double().mean(0) for tap in taps]).mean(0)
                for layer in layers}

    positive, negative = mean(task.positive), mean(task.negative)
    all_positions = {layer: (positive[layer] - negative[layer]).float() for layer in layers}
    # L14: the first token's residual is ~150x a text token's, and the sentiment pairs differ in length
    clean = task_vector(smollm2, "L14.out", task)
    full = all_positions[14]
    cosine = float(torch.nn.functional.cosine_similarity(full, clean, dim=0))
    assert cosine < 0.6 and float(full.norm()) > 1.5 * float(clean.norm())
    # below the sink's layers the two agree: only the sink was left out
    early = all_positions[6]
    assert float(torch.nn.functional.cosine_similarity(early, task_vector(smollm2, "L6.out", task), dim=0)) > 0.97


def test_two_rows_are_judged_against_their_interpolated_median():
    # torch.median takes the lower of two, which would flag any row over 4x the other
    assert sink_rows(torch.tensor([[1.0, 0.0], [4.5, 0.0]])).tolist() == [False, False]
    assert sink_rows(torch.tensor([[1.0, 0.0], [90.0, 0.0]])).tolist() == [False, False]  # two rows: no crowd
    assert sink_rows(torch.tensor([[1.0, 0.0], [1.2, 0.0], [9.5, 0.0]])).tolist() == [False, False, True]
