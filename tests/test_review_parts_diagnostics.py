"""Review of the parts bin and the diagnostics engine: each test pins one bug found in review.

Each test pinned its bug as a strict xfail until the fix landed.
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from engine.errors import GarageError


# --- diagnostics --------------------------------------------------------------------------------
def test_stats_survive_non_finite_activations(smollm2):
    from engine.interventions import scale
    from engine.stats import StreamingStats, stream_stats

    stats = StreamingStats(bins=8)
    stats.update(torch.tensor([[1.0, float("inf"), 2.0, float("nan")]]))
    stats.update(torch.tensor([[3.0, -1.0, 0.5, 0.25]]))
    summary = stats.summary()
    assert summary.count == 8
    assert sum(summary.hist_counts) == 6  # the finite values, each counted once
    # A real run whose residual overflows float32 (scaling a layer output by 1e39).
    result = stream_stats(smollm2, "Hello there", ["L1.out"], bins=8, interventions=[scale("L0", 1e39)])
    from engine.runner import encode

    assert result["L1.out"].count == 576 * encode(smollm2, "Hello there").shape[1]


def test_histogram_grows_down_to_negative_values():
    from engine.stats import StreamingStats

    stats = StreamingStats(bins=8)
    stats.update(torch.tensor([[1.0, 2.0]]))  # all non-negative, e.g. a first prompt after a ReLU
    stats.update(torch.tensor([[3.0, -1.0, 0.5, 0.25]]))
    summary = stats.summary()
    values = torch.tensor([1.0, 2.0, 3.0, -1.0, 0.5, 0.25], dtype=torch.float64)
    edges = torch.tensor(summary.hist_edges, dtype=torch.float64)
    assert edges[0] <= -1.0 and edges[-1] > 3.0 and edges[-1] - edges[0] <= 4 * 8  # not blown up
    reference = torch.bincount((torch.searchsorted(edges, values, right=True) - 1).clamp(0, 7), minlength=8)
    assert summary.hist_counts == reference.tolist()


def test_stats_odd_bins_is_bad_input(smollm2):
    from engine.stats import stream_stats

    with pytest.raises(GarageError, match="bins"):
        stream_stats(smollm2, "Hello", ["L0.out"], bins=3)


def test_lens_top_k_above_vocab():
    # The clamp is mechanics, not weights: a 128-token vocabulary decodes in milliseconds where
    # SmolLM2's 49k tokens × 31 layers cost ~15 CPU-s. Real-weight lens checks: test_analyzers_lens.
    from engine.analyzers.lens import logit_lens
    from tests.tiny_models import CharTokenizer

    loaded = dataclasses.replace(_tiny_llama(), tokenizer=CharTokenizer())
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    try:
        report = logit_lens(loaded, "Hello", top_k=vocab + 10)
    except GarageError:
        return  # a clear error is fine too
    assert all(len(layer.top) == vocab for layer in report.layers)


# --- parts bin ---------------------------------------------------------------------------------
def _tiny_llama():
    from tests.tiny_models import tiny_model

    return tiny_model("llama")


def test_default_name_of_source_with_dots(garage_home):
    from engine.parts import PartsBin

    loaded = dataclasses.replace(_tiny_llama(), name="v1...final")
    record = PartsBin().add_from_model(loaded, "L0.norm1")
    assert ".." not in record.name and record.path.is_file()


def test_reindex_skips_an_unreadable_file(garage_home):
    from engine.parts import PartsBin

    bin_ = PartsBin()
    loaded = _tiny_llama()
    for address in ("L0.norm1", "L1.attn.h3"):
        bin_.add_from_model(loaded, address)
    os.replace(bin_.catalog_path, garage_home / "catalog.lost")
    (bin_.parts_dir / "aaa-broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    recovered = bin_.reindex()
    assert sorted(r.name for r in recovered) == ["tiny-llama-L0.norm1", "tiny-llama-L1.attn.h3"]
    assert all(r.ok for r in bin_.verify())
    assert (bin_.parts_dir / "aaa-broken.safetensors").is_file()  # left alone, not deleted


def test_rm_same_name_twice(garage_home, capsys):
    from engine.parts import PartsBin
    from garage_tui.cli import main

    bin_ = PartsBin()
    record = bin_.add_from_model(_tiny_llama(), "L0.norm1", name="keep-or-not")
    code = main(["parts", "rm", "keep-or-not", "keep-or-not"])
    err = capsys.readouterr().err
    removed = not record.path.exists() and not bin_.list()
    # either it removes the part and succeeds, or it refuses and removes nothing
    assert (code == 0 and removed) or (code == 2 and not removed and err.count("\n") == 1)


def test_streamed_moments_match_reference():
    """Control (passes today): streamed moments and histogram equal whole-tensor references."""
    from engine.stats import StreamingStats

    torch.manual_seed(0)
    x = torch.randn(3, 7, 33) * 3 + 1
    stats = StreamingStats(bins=8)
    stats.update(x[:1])
    stats.update(x[1:])
    s = stats.summary()
    flat = x.double().flatten()
    var = flat.var(unbiased=False)
    assert math.isclose(s.std, float(var.sqrt()), rel_tol=1e-12)
    assert math.isclose(s.kurtosis, float(((flat - flat.mean()) ** 4).mean() / var**2 - 3), rel_tol=1e-9)
    assert sum(s.hist_counts) == flat.numel()


@pytest.mark.slow
def test_json_output_is_strict_even_with_non_finite_stats(capsys):
    import json

    from garage_tui.cli import main

    assert main(["analyze", "smollm2-135m", "--what", "stats", "--prompt", "hi", "--scale", "L0=1e39", "--json"]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"))
