"""SAE metrics with known answers (identity-like and zero SAEs) and a tiny training run on SmolLM2
that stops, resumes from its checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.errors import Cancelled
from engine.features.coder import CoderConfig, SparseCoder
from engine.features.corpus import read_texts, token_windows
from engine.features.metrics import evaluate_coder
from engine.features.streaming import activations_at
from engine.features.train import TrainConfig, train_sae

pytestmark = pytest.mark.slow
AT = "L15.out"
D = 576


def _windows(smollm2, n=2, window=32):
    return list(token_windows(smollm2, read_texts(["sample"]), window, max_tokens=n * window))


def _coder(w_enc, w_dec, k):
    d_sae = w_dec.shape[0]
    tensors = {"W_enc": w_enc, "b_enc": torch.zeros(d_sae), "W_dec": w_dec, "b_dec": torch.zeros(D)}
    return SparseCoder(CoderConfig("topk", D, d_sae, D, k=float(k)), tensors)


def test_identity_like_and_zero_saes_give_known_metrics(smollm2):
    windows = _windows(smollm2)
    eye = torch.eye(D)
    identity = _coder(torch.cat([eye, -eye], dim=1), torch.cat([eye, -eye], dim=0), k=D)
    metrics = evaluate_coder(smollm2, identity, AT, windows)
    x = torch.cat([activations_at(smollm2, ids, AT)[0, 1:] for ids in windows])
    assert metrics.tokens == x.shape[0]
    assert metrics.explained_variance == pytest.approx(1.0, abs=1e-9)
    assert metrics.mse == pytest.approx(0.0, abs=1e-10) and metrics.cosine == pytest.approx(1.0, abs=1e-6)
    assert metrics.l0 == pytest.approx(float((x != 0).sum()) / x.shape[0])
    fired = torch.cat([(x > 0).any(0), (x < 0).any(0)])
    assert metrics.dead_share == pytest.approx(float((~fired).double().mean()))
    assert metrics.ce_loss_score == pytest.approx(1.0, abs=1e-4)
    assert metrics.ce_zero > metrics.ce_clean + 0.5  # zero-ablating L15 hurts, so the score is meaningful

    zero = _coder(torch.zeros(D, 64), torch.zeros(64, D), k=4)
    metrics = evaluate_coder(smollm2, zero, AT, windows)
    xd = x.double()
    want_ev = 1 - float(xd.square().sum()) / float((xd - xd.mean(0)).square().sum())
    assert metrics.explained_variance == pytest.approx(want_ev, rel=1e-6)
    assert metrics.ce_loss_score == pytest.approx(0.0, abs=1e-6) and metrics.l0 == 0 and metrics.dead_share == 1.0


def test_tiny_training_run_resumes_to_the_same_sae(smollm2, tmp_path):
    config = TrainConfig(address=AT, expansion=2, k=16, sources=["pydoc"], max_tokens=400, window=32,
                         windows_per_step=2, eval_windows=1, checkpoint_every=2, lr=2e-3)
    straight = train_sae(smollm2, config)
    assert straight.steps >= 6 and straight.tokens >= 400
    assert all(0.0 < loss < 2.0 for loss in straight.losses)
    assert straight.coder.config.d_sae == 2 * D and straight.metrics.l0 <= 16
    assert 0.0 < straight.metrics.explained_variance <= 1.0

    cancel = threading.Event()

    def stop_after_three(stage: str, fraction: float | None) -> None:
        if stage.startswith("step 3:"):
            cancel.set()

    with pytest.raises(Cancelled, match="checkpoint saved"):
        train_sae(smollm2, config, checkpoint_dir=tmp_path / "ckpt", cache_dir=tmp_path / "cache",
                  progress=stop_after_three, cancel=cancel)
    resumed = train_sae(smollm2, config, checkpoint_dir=tmp_path / "ckpt", cache_dir=tmp_path / "cache", resume=True)
    assert resumed.resumed_from_step == 3 and resumed.steps == straight.steps
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(resumed.coder.tensors[name], straight.coder.tensors[name], rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "cache").glob("shard-*.safetensors"))) == straight.steps


def test_absurd_expansion_or_k_is_refused_before_allocating(smollm2):
    from engine.limits import LimitError

    with pytest.raises(LimitError, match="expansion factor is 1,000,000, over the garage's limit of 256"):
        train_sae(smollm2, TrainConfig(address=AT, expansion=1_000_000, max_tokens=64))
    too_many_k = r"k \(active features per token\) is 100,000, over the garage's limit of 4,608"
    with pytest.raises(LimitError, match=too_many_k):
        train_sae(smollm2, TrainConfig(address=AT, expansion=8, k=100_000, max_tokens=64))
