"""Stitches: the fits on synthetic pairs (fast) and the oracle checks on SmolLM2 → its widened twin (slow)."""

from __future__ import annotations

import pytest
import torch

from engine.transfer.evaluate import fit_metrics
from engine.transfer.pairs import PairBatch, TransferError, align_positions, stitch_text
from engine.transfer.stitch import accumulate, fit_ae, fit_lowrank, fit_ridge


def _synthetic(seed: int, n_batches: int = 6, rows: int = 200, d_a: int = 24, d_b: int = 40, rank: int | None = None,
               nonlinear: bool = False) -> tuple[list[PairBatch], torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(d_a, d_b, generator=generator)
    if rank is not None:
        matrix = torch.randn(d_a, rank, generator=generator) @ torch.randn(rank, d_b, generator=generator)
    bias = torch.randn(d_b, generator=generator)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(rows, d_a, generator=generator) * 2 + 1
        y = (torch.relu(x) if nonlinear else x) @ matrix + bias
        empty = torch.zeros(1, 1, dtype=torch.long)
        batches.append(PairBatch(x, y, empty, empty, torch.arange(rows), torch.arange(rows)))
    return batches, matrix, bias


def test_ridge_recovers_an_affine_map_from_streamed_sums():
    batches, matrix, bias = _synthetic(0, n_batches=8)
    train, held = batches[:6], batches[6:]
    stitch = fit_ridge(accumulate(train), ridge=1e-9)
    assert (stitch.weight - matrix).norm() / matrix.norm() < 1e-4
    assert torch.allclose(stitch.bias, bias, atol=1e-3)
    metrics = fit_metrics(stitch, held)
    assert metrics.r2 > 0.9999 and metrics.mean_cosine > 0.9999 and metrics.pairs == 400
    # a direction moves through the linear part only
    v = torch.randn(24)
    assert torch.allclose(stitch.map_direction(v), v @ matrix, atol=1e-3)


def test_lowrank_keeps_a_low_rank_map_and_loses_when_truncated_too_far():
    batches, matrix, _ = _synthetic(1, rank=3, n_batches=8)
    train, held = batches[:6], batches[6:]
    moments = accumulate(train)
    exact = fit_lowrank(moments, 3, ridge=1e-9)
    assert torch.linalg.matrix_rank(exact.weight) == 3
    assert (exact.weight - matrix).norm() / matrix.norm() < 1e-4
    assert fit_metrics(fit_lowrank(moments, 1, ridge=1e-9), held).r2 < 0.95
    with pytest.raises(TransferError, match="rank"):
        fit_lowrank(moments, 100)


def test_ae_map_beats_ridge_on_a_relu_relation():
    batches, _, _ = _synthetic(2, nonlinear=True, d_a=8, d_b=8, n_batches=8)
    train, held = batches[:6], batches[6:]
    moments = accumulate(train)
    ridge_r2 = fit_metrics(fit_ridge(moments), held).r2
    ae = fit_ae(moments, lambda: train, hidden=64, epochs=60, lr=3e-3)
    ae_r2 = fit_metrics(ae, held).r2
    assert ae_r2 > ridge_r2 + 0.05 and ae_r2 > 0.9
    assert set(ae.tensors()) >= {"encoder.weight", "decoder.weight", "x_mean", "y_mean"}


def test_alignment_keeps_only_shared_token_ends():
    # "the cat" as [the][ cat] vs [th][e][ c][at]; a special token (0, 0) never pairs
    a = [(0, 0), (0, 3), (3, 7)]
    b = [(0, 2), (2, 3), (3, 5), (5, 7)]
    assert align_positions(a, b) == ([1, 2], [1, 3])


def test_text_split_holds_out_every_fifth_chunk():
    text = stitch_text(("sample",), chunk_chars=200)
    assert len(text.held_out) == len(text.train + text.held_out) // 5
    assert not set(text.held_out) & set(text.train) and len(text.digest) == 16
    with pytest.raises(TransferError, match="unknown text source"):
        stitch_text(("nope",))
    # four chunks hold none out: refused, not a fit measured on nothing (was a ZeroDivisionError in `garage stitch`)
    assert len(stitch_text(max_chars=2401).held_out) == 1
    with pytest.raises(TransferError, match="2400 characters, too short .* at least 2401 characters"):
        stitch_text(max_chars=2400)


@pytest.mark.slow
def test_oracle_ridge_stitch_recovers_the_known_map(smollm2_stitched_twin):
    _, known, report = smollm2_stitched_twin
    matrix = known.matrix().float()
    assert report.alignment == "same-token-positions"
    assert report.held_out.r2 >= 0.999
    assert (report.stitch.weight - matrix).norm() / matrix.norm() <= 1e-2
    loss = report.loss
    assert loss is not None
    assert abs(loss.loss_stitched - loss.loss_a) / loss.loss_a <= 5e-3
    assert loss.loss_b_zero > loss.loss_b_clean + 1 and loss.recovered_vs_mean > 0.99


@pytest.mark.slow
def test_steering_vector_through_the_oracle_stitch_matches_native(smollm2_stitched_twin, smollm2):
    from engine.run import run
    from engine.transfer.evaluate import steer_effect

    wide, known, report = smollm2_stitched_twin
    tok = smollm2.tokenizer
    residuals = [run(smollm2, tok(p, return_tensors="pt").input_ids, capture=["L15.out"]).tap["L15.out"][0, -1]
                 for p in ("I feel so happy and glad", "I feel so sad and gloomy")]
    v_a = (residuals[0] - residuals[1]).detach()
    target = tok(" happy").input_ids
    prompts = ["Today I am", "The weather makes me feel"]
    effect_a = steer_effect(smollm2, "L15.out", v_a, prompts, target)
    native = steer_effect(wide, "L15.out", known.apply(v_a), prompts, target)
    mapped = steer_effect(wide, "L15.out", report.stitch.map_direction(v_a), prompts, target)
    assert abs(native) > 0.05 and abs(native - effect_a) / abs(native) < 1e-3
    assert abs(mapped - native) / abs(native) <= 1e-3


@pytest.mark.slow
def test_layer_sweep_of_a_model_against_itself_peaks_on_the_diagonal(smollm2):
    from engine.transfer.sweep import sweep_layers

    sweep = sweep_layers(smollm2, smollm2, stitch_text(max_chars=4000), every_a=10, every_b=10)
    assert sweep.layers_a == [0, 10, 20] and sweep.layers_b == [0, 10, 20]
    for i, row in enumerate(sweep.r2):
        assert row[i] > 0.99  # the identity seam
        assert all(value < row[i] for j, value in enumerate(row) if j != i)
    assert sweep.r2[0][2] < 0.9  # embeddings-ish layer 0 cannot predict layer 20


def test_absurd_ae_sizes_are_refused_before_allocating():
    from engine.limits import LimitError
    from engine.transfer.stitch import fit_ae

    with pytest.raises(LimitError, match="hidden width is 1,000,000,000, over the garage's limit of 65,536"):
        fit_ae(None, lambda: [], hidden=10**9)  # type: ignore[arg-type]  # refused before the moments are read
    with pytest.raises(LimitError, match="epochs must be at least 1"):
        fit_ae(None, lambda: [], epochs=0)  # type: ignore[arg-type]
