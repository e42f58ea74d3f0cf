"""Recipe search on the real SmolLM2 with a budget of 3 trials (slow: it uses the shared fixture)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.build import load_recipe, validate_recipe
from engine.build.evaluate import score_text
from engine.jobs import worker_cache
from engine.search import load_search_spec, run_search
from engine.search.trial import _token_ids

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_layer_drop_search_on_smollm2(smollm2, tmp_path):
    # the in-process backend reuses the session's SmolLM2 instead of opening it again
    worker_cache()["search-source:smollm2-135m"] = smollm2
    spec = load_search_spec({
        "search_version": 1, "name": "smol-drop", "recipe": str(ROOT / "recipes/smollm2-identity.yaml"),
        "parameters": [{"drop": [18, 28], "count": 1}], "objectives": ["perplexity"],
        "budget": 3, "seed": 0, "max_tokens": 128,
    })
    report = run_search(spec, tmp_path / "smol.jsonl")
    assert len(report.trials) == 3 and report.evaluated == 3
    ids, covered = _token_ids(smollm2, 128)
    nll, scored, _ = score_text(smollm2, ids)
    source_ppl = math.exp(nll / scored)
    for trial in report.trials:
        assert trial.layers == 29 and trial.tokens_scored == scored == 128
        assert trial.perplexity > source_ppl  # dropping a trained layer costs something
        assert trial.perplexity < 3 * source_ppl  # one late layer of 30 is not a catastrophe
        assert trial.bits_per_byte == pytest.approx(math.log(trial.perplexity) * scored / math.log(2) / covered)
    best = load_recipe(Path(report.best_recipe))
    assert validate_recipe(best).ok and len(best.layers) == 29
    assert report.best.perplexity == min(t.perplexity for t in report.trials)
