"""Absurd counts and over-long prompts are refused before anything is allocated, naming the limit.

Class: a prompt longer than the model's context (SmolLM2: 8,192 positions; MiniLM: 512), a
generation that would run past it or past the garage's limit, histogram bins in the
hundreds of millions, layer ranges of a billion (recipes: tests/test_robust_documents.py).
"""

from __future__ import annotations

import time

import pytest

from engine.limits import MAX_BINS, MAX_GENERATE, LimitError, check_context, check_count, check_finite, context_length
from tests.robust_harness import assert_one_error, cli, tree_state


def test_count_and_finite_checks_name_their_limits():
    with pytest.raises(LimitError, match=f"limit of {MAX_BINS:,}"):
        check_count(100_000_000, "histogram bins", MAX_BINS)
    for bad in (float("nan"), float("inf"), 2.5, "7", True):
        with pytest.raises(LimitError):
            check_count(bad, "n", 10)
    for bad in (float("nan"), float("-inf"), "1"):
        with pytest.raises(LimitError, match="finite|number"):
            check_finite(bad, "weight")
    assert check_count(10, "n", 10) == 10 and check_finite(-2, "w") == -2.0
    assert context_length({"max_position_embeddings": 512}) == 512 and context_length({}) is None
    with pytest.raises(LimitError, match="reads at most 512"):
        check_context(513, {"max_position_embeddings": 512}, "m")


def test_histogram_bins_are_refused_before_the_counts_are_allocated():
    from engine.stats import StreamingStats

    started = time.perf_counter()
    with pytest.raises(LimitError, match="100,000,000"):
        StreamingStats(100_000_000)
    assert time.perf_counter() - started < 1.0
    assert len(StreamingStats(MAX_BINS).summary().hist_counts) == MAX_BINS


@pytest.mark.slow
def test_minilm_refuses_a_prompt_past_its_512_positions(minilm):
    from engine.runner import encode

    with pytest.raises(LimitError, match="reads at most 512"):
        encode(minilm, "word " * 1000)
    assert encode(minilm, "word " * 100).shape[1] <= 512


@pytest.mark.slow
def test_smollm2_refuses_a_100k_token_prompt_quickly(smollm2):
    from engine.runner import encode

    started = time.perf_counter()
    with pytest.raises(LimitError, match="8,192"):
        encode(smollm2, "hello " * 100_000)
    with pytest.raises(LimitError, match="characters"):
        encode(smollm2, "x" * 10_000_000)  # refused untokenized
    assert time.perf_counter() - started < 30


@pytest.mark.slow
def test_generation_past_the_context_or_the_limit_is_refused_before_a_step(smollm2):
    from engine.decode import greedy_decode
    from engine.runner import encode

    ids = encode(smollm2, "The capital of France is")
    with pytest.raises(LimitError, match=f"limit of {MAX_GENERATE:,}"):
        greedy_decode(smollm2, ids, 1_000_000)
    with pytest.raises(LimitError, match="plus 8,190 new tokens"):
        greedy_decode(smollm2, ids, 8_190)
    assert len(greedy_decode(smollm2, ids, 2, stop_at_eos=False).new_tokens) == 2


@pytest.mark.slow
def test_the_verbs_say_the_limit_in_one_line(capsys, tmp_path):
    before = tree_state(tmp_path)
    assert_one_error(cli(capsys, "analyze", "smollm2-135m", "--what", "stats", "--prompt", "hi",
                         "--bins", "100000000"), "histogram bins", "100,000,000")
    assert_one_error(cli(capsys, "snapshot", "smollm2-135m", "--prompt", "hi", "--generate", "1000000",
                         "--out", tmp_path / "s.safetensors"), "new tokens", f"{MAX_GENERATE:,}")
    assert_one_error(cli(capsys, "capture", "minilm-l6", "--prompt", "word " * 1000, "--at", "L0.out",
                         "--out", tmp_path / "c.safetensors"), "512")
    assert tree_state(tmp_path) == before
