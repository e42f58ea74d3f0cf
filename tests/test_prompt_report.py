"""One press of ``r``: one forward pass (two with edits), and the same numbers as the separate calls."""

from __future__ import annotations

import contextlib

import pytest

from engine.analyzers.lens import logit_lens
from engine.errors import GarageError
from engine.hooks import count_garage_hooks
from engine.interventions import ablate, scale
from engine.prompt_report import prompt_report, stats_point
from engine.runner import predict
from engine.stats import residual_norms, stream_stats

PROMPT = "The capital of France is"


@contextlib.contextmanager
def counted(loaded):
    """Count calls of the model's root module (each is one forward pass)."""
    calls: list[int] = []
    handle = loaded.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def test_one_pass_without_edits_and_its_numbers(smollm2) -> None:
    with counted(smollm2) as calls:
        report = prompt_report(smollm2, PROMPT, [], "L3.attn.h2", top_k=5)
    assert len(calls) == 1 and report.forward_passes == 1
    assert report.before is None and report.point == "L3.attn.h2.z"
    # the same numbers the separate engine calls give (each of which runs its own pass)
    alone = predict(smollm2, PROMPT, top_k=5)
    assert [g.token_id for g in report.guesses] == [g.token_id for g in alone.top]
    assert report.guesses[0].prob == pytest.approx(alone.top[0].prob, rel=1e-5)
    assert report.now.norms == pytest.approx(residual_norms(smollm2, PROMPT), rel=1e-5)
    stats = stream_stats(smollm2, PROMPT, ["L3.attn.h2.z"], bins=24)["L3.attn.h2.z"]
    assert report.now.stats is not None
    assert report.now.stats.mean == pytest.approx(stats.mean, rel=1e-5, abs=1e-9)
    assert report.now.stats.hist_counts == stats.hist_counts
    lens = logit_lens(smollm2, PROMPT, top_k=1)
    assert report.lens is not None
    assert [row.top[0][0] for row in report.lens.layers] == [row.top[0][0] for row in lens.layers]
    assert count_garage_hooks(smollm2.model) == 0


def test_two_passes_with_edits_and_both_columns(smollm2) -> None:
    edits = [ablate("L5.mlp"), scale("L2.attn.h1", 3.0)]
    with counted(smollm2) as calls:
        report = prompt_report(smollm2, PROMPT, edits, "L6")
    assert len(calls) == 2 and report.forward_passes == 2
    assert report.before is not None
    edited, clean = predict(smollm2, PROMPT, interventions=edits, top_k=5), predict(smollm2, PROMPT, top_k=5)
    # the union of both top-5 lists, each with its probability with and without the edits
    assert {g.token_id for g in report.guesses} == {g.token_id for g in edited.top} | {g.token_id for g in clean.top}
    by_id = {g.token_id: g for g in report.guesses}
    assert by_id[clean.top[0].token_id].prob_before == pytest.approx(clean.top[0].prob, rel=1e-5)
    assert by_id[edited.top[0].token_id].prob == pytest.approx(edited.top[0].prob, rel=1e-5)
    assert report.now.norms == pytest.approx(residual_norms(smollm2, PROMPT, edits), rel=1e-5)
    assert report.before.norms == pytest.approx(residual_norms(smollm2, PROMPT), rel=1e-5)
    # ablating L5's MLP changes L6's output statistics
    assert report.now.stats is not None and report.before.stats is not None
    assert report.now.stats.mean != pytest.approx(report.before.stats.mean, rel=1e-6)


def test_attention_entropy_comes_from_the_same_pass(smollm2) -> None:
    with counted(smollm2) as calls:
        report = prompt_report(smollm2, PROMPT, [], None, attention=True)
    assert len(calls) == 1 and report.point is None and report.now.stats is None
    grid = report.now.head_entropy
    assert grid is not None and len(grid) == smollm2.anatomy.n_layers and len(grid[0]) == 9
    assert all(0.0 <= value <= 3.0 for row in grid for value in row)  # ≤ log(6 tokens) nats


def test_selection_points_and_bad_input(smollm2) -> None:
    assert stats_point(smollm2.anatomy, "L3.attn.h2") == "L3.attn.h2.z"
    assert stats_point(smollm2.anatomy, "model") == "L29.out"
    assert stats_point(smollm2.anatomy, "L99.mlp") is None  # kept from another model: no stats, no failure
    with pytest.raises(GarageError, match="top-k"):
        prompt_report(smollm2, PROMPT, [], None, top_k=0)


def test_minilm_has_norms_and_stats_but_no_guesses(minilm) -> None:
    with counted(minilm) as calls:
        report = prompt_report(minilm, "hello world", [], "L2")
    assert len(calls) == 1
    assert report.guesses == [] and report.lens is None
    assert len(report.now.norms) == 6 and report.now.stats is not None and report.now.stats.count > 0
