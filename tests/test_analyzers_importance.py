"""Head importance by ablation: batched scores equal single ablations; ranking is deterministic."""

from __future__ import annotations

import json
import threading

import pytest

from engine.analyzers.importance import _row_losses, head_importance, window_ids
from engine.errors import GarageError
from engine.interventions import ablate
from engine.loading import Cancelled
from engine.run import run
from engine.sample_text import sample_text

WINDOW = 48


def run_with(loaded, ids, **options):
    """``(main output, tap)`` of one ``engine.run.run`` pass."""
    output = run(loaded, ids, **options)
    return output.main, output.tap


def _loss_with(loaded, interventions):
    ids = window_ids(loaded, None, WINDOW)
    logits, _ = run_with(loaded, ids, interventions=interventions)
    return float(_row_losses(logits, ids)[0])


@pytest.fixture(scope="module")
def report(smollm2):
    return head_importance(smollm2, layers=[0, 9], window=WINDOW)


def test_top_head_hurts_at_least_as_much_as_bottom_head(smollm2, report):
    top, bottom = report.heads[0], report.heads[-1]
    assert len(report.heads) == 2 * smollm2.anatomy.geometry.n_heads
    clean = _loss_with(smollm2, [])
    assert report.clean_loss == pytest.approx(clean, abs=1e-5)
    top_loss, bottom_loss = _loss_with(smollm2, [ablate(top.address)]), _loss_with(smollm2, [ablate(bottom.address)])
    assert top_loss - clean >= bottom_loss - clean
    # the batched score of each is the loss of the plain, unbatched ablation
    assert top.loss == pytest.approx(top_loss, abs=1e-4) and bottom.loss == pytest.approx(bottom_loss, abs=1e-4)
    assert top.delta > 0


def test_blocks_are_scored_and_ranked(smollm2, report):
    assert sorted(e.address for e in report.blocks) == ["L0.attn", "L0.mlp", "L9.attn", "L9.mlp"]
    assert [e.delta for e in report.blocks] == sorted((e.delta for e in report.blocks), reverse=True)
    mlp0 = next(e for e in report.blocks if e.address == "L0.mlp")
    assert mlp0.loss == pytest.approx(_loss_with(smollm2, [ablate("L0.mlp")]), abs=1e-4)
    json.dumps(report.to_dict())
    assert set(report.grid()) == {0, 9}


def test_ranking_is_deterministic(smollm2):
    first = head_importance(smollm2, layers=[9], window=24, blocks=False)
    again = head_importance(smollm2, layers=[9], window=24, blocks=False)
    assert [e.address for e in again.heads] == [e.address for e in first.heads]
    assert [e.delta for e in again.heads] == [e.delta for e in first.heads]
    assert len({e.delta for e in first.heads}) > 1


def test_mean_ablation_matches_the_mean_intervention(smollm2):
    seen = []
    mean = head_importance(smollm2, layers=[4], window=WINDOW, mode="mean", blocks=False,
                           progress=lambda stage, fraction: seen.append((stage, fraction)))
    top = mean.heads[0]
    assert top.loss == pytest.approx(_loss_with(smollm2, [ablate(top.address, "mean")]), abs=1e-4)
    assert seen[-1] == ("ablating", 1.0)


def test_cancel_bad_mode_and_encoder_models(smollm2, minilm):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        head_importance(smollm2, layers=[0], window=8, cancel=cancel)
    with pytest.raises(GarageError, match="ablation mode"):
        head_importance(smollm2, mode="half")
    with pytest.raises(GarageError, match="within 0–29"):
        head_importance(smollm2, layers=[30])
    with pytest.raises(GarageError, match="causal language model"):
        head_importance(minilm)
    assert "garage" in sample_text() and len(sample_text().split()) > 300


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi3", "gemma", "gemma3", "qwen2"])
def test_replaying_clean_blocks_changes_nothing(family):
    """Sweeps skip the blocks before an edit by replaying them; results equal full passes."""
    import torch

    from engine.addresses import Target
    from engine.analyzers.base import record_blocks, replay_prefix
    from engine.analyzers.importance import _row_ablation
    from tests.tiny_models import tiny_model

    loaded = tiny_model(family)
    ids = torch.tensor([[1, 7, 3, 9, 4, 2]])
    clean, recorded = record_blocks(loaded, ids)
    d_head = loaded.anatomy.geometry.head_dim
    edit = [(Target(loaded.anatomy.by_address["L1.attn.h0"], "z"), _row_ablation(1, slice(0, d_head), "zero"))]
    full, _ = run_with(loaded, ids.expand(2, -1), edits=edit)
    with replay_prefix(loaded, recorded, 1):
        replayed, _ = run_with(loaded, ids.expand(2, -1), edits=edit)
    assert torch.allclose(replayed, full, atol=1e-5)
    assert torch.allclose(replayed[0], clean[0], atol=1e-5) and not torch.allclose(replayed[1], clean[0], atol=1e-4)
    ablated, _ = run_with(loaded, ids, interventions=[ablate("L1.attn.h0")])
    assert torch.allclose(replayed[1], ablated[0], atol=1e-5)
    assert type(loaded.model.get_submodule(loaded.anatomy.module_path_of(0, "").rstrip("."))).__name__ != "_ReplayBlock"
