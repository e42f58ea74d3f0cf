"""SAE metrics with known answers (identity-like and zero SAEs), a tiny training run on SmolLM2
that stops, resumes from its checkpoint and ends where an uninterrupted run ends, and on a tiny
random Llama: the sparse step's gradients, epochs that revisit activations without running the
model again, the CPU and token budgets, and a mid-epoch resume."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.errors import Cancelled
from engine.features.coder import CoderConfig, SparseCoder
from engine.features.corpus import read_texts, token_windows
from engine.features.metrics import evaluate_coder
from engine.features.streaming import activations_at
from engine.features.topk_sae import AUXK_COEFF, TopKSae
from engine.features.train import TrainConfig, train_sae

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


# --- a tiny random Llama with a character tokenizer: fast, and the model's forward calls can be counted

class _Chars:
    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        from types import SimpleNamespace

        return SimpleNamespace(input_ids=[3 + ord(char) % 125 for char in text])


@pytest.fixture()
def tiny():
    from tests.tiny_models import tiny_model

    loaded = tiny_model("llama")
    loaded.tokenizer = _Chars()
    calls = []
    loaded.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    loaded.extra["calls"] = calls
    return loaded


def _tiny_config(**changes):
    base = dict(address="L1.out", expansion=4, k=8, sources=["sample"], max_tokens=None, window=32,
                windows_per_step=4, eval_windows=2, lr=3e-3, dead_after_steps=5, checkpoint_every=7)
    return TrainConfig(**{**base, **changes})


def _dense_loss(sae, x, dead):
    """The step's loss written densely (as before the sparse step), for autograd to differentiate."""
    pre = (x - sae.b_dec) @ sae.W_enc_t.T + sae.b_enc
    top = pre.topk(sae.k, dim=-1)
    recon = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values)) @ sae.W_dec + sae.b_dec
    half = x.shape[-1] // 2
    aux_top = torch.where(dead[None], pre, torch.tensor(-torch.inf)).topk(min(half, int(dead.sum())), dim=-1)
    aux = torch.zeros_like(pre).scatter(-1, aux_top.indices, torch.relu(aux_top.values)) @ sae.W_dec
    aux_loss = min(int(dead.sum()) / half, 1.0) * (aux - (x - recon).detach()).square().sum(-1).mean()
    return (recon - x).square().sum(-1).mean() + AUXK_COEFF * aux_loss


def test_sparse_step_has_the_gradients_of_dense_autograd():
    generator = torch.Generator().manual_seed(1)
    sae = TopKSae(32, 256, 6, generator)
    with torch.no_grad():
        sae.b_dec.normal_(generator=generator)
        sae.b_enc.normal_(std=0.1, generator=generator)
    x = torch.randn(50, 32, generator=generator)
    dead = torch.rand(256, generator=generator) < 0.3
    loss, _, fired = sae.step_loss(x, dead)
    loss.backward()
    sparse = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    dense = _dense_loss(sae, x, dead)
    dense.backward()
    assert float(loss.detach()) == pytest.approx(float(dense.detach()), rel=1e-6)
    for name, param in sae.named_parameters():
        torch.testing.assert_close(sparse[name], param.grad, rtol=1e-5, atol=1e-5)
    assert fired.numel() <= 50 * 6


def test_epochs_revisit_activations_without_running_the_model(tiny):
    calls = tiny.extra["calls"]
    one = train_sae(tiny, _tiny_config(epochs=1))
    calls_one = len(calls)
    three = train_sae(tiny, _tiny_config(epochs=3))
    assert len(calls) - calls_one == calls_one  # the same forward passes: first pass + evaluation
    assert one.stopped == "text" and three.stopped == "epochs" and three.epochs == pytest.approx(3.0)
    per_epoch = -(-one.tokens // (31 * 4))
    assert three.steps == one.steps + 2 * per_epoch and three.tokens == 3 * one.tokens
    assert three.losses[-1] < one.losses[-1]  # later epochs keep learning from the same activations


def test_cpu_budget_and_token_cap_stop_cleanly_across_epochs(tiny):
    budget = train_sae(tiny, _tiny_config(epochs=10_000, budget_cpu_seconds=1.0))
    assert budget.stopped == "budget" and budget.cpu_seconds >= 1.0 and budget.steps > 0
    assert 0.0 < budget.metrics.explained_variance <= 1.0  # evaluated after stopping
    one = train_sae(tiny, _tiny_config(epochs=1))
    capped = train_sae(tiny, _tiny_config(epochs=10, max_tokens=int(2.5 * one.tokens)))
    assert capped.stopped == "tokens" and 2 < capped.epochs < 3
    assert 2.5 * one.tokens <= capped.tokens < 2.5 * one.tokens + 31 * 4


@pytest.mark.parametrize("cached", [False, True])
def test_resume_mid_epoch_equals_an_uninterrupted_run(tiny, tmp_path, cached):
    config = _tiny_config(epochs=3)
    straight = train_sae(tiny, config)
    cancel = threading.Event()
    stop_at = straight.steps - 9  # inside the third epoch, away from a checkpoint boundary

    def stop(stage: str, fraction: float | None) -> None:
        if stage.startswith(f"step {stop_at}:"):
            cancel.set()

    cache = tmp_path / "cache" if cached else None
    with pytest.raises(Cancelled, match="checkpoint saved"):
        train_sae(tiny, config, checkpoint_dir=tmp_path / "ckpt", cache_dir=cache, progress=stop, cancel=cancel)
    calls = len(tiny.extra["calls"])
    resumed = train_sae(tiny, config, checkpoint_dir=tmp_path / "ckpt", cache_dir=cache, resume=True)
    assert resumed.resumed_from_step == stop_at and resumed.steps == straight.steps
    assert resumed.epochs == pytest.approx(3.0) and resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(resumed.coder.tensors[name], straight.coder.tensors[name], rtol=1e-5, atol=1e-6)
    evaluation = 3 * config.eval_windows
    if cached:  # the first pass's activations come back from the shards, not the model
        assert len(tiny.extra["calls"]) - calls == evaluation


def test_held_out_windows_are_not_trained_on(tiny, tmp_path):
    config = _tiny_config(epochs=1, max_tokens=31 * 4)
    train_sae(tiny, config, cache_dir=tmp_path / "cache")
    from safetensors.torch import load_file

    shard = load_file(str(tmp_path / "cache" / "shard-000000.safetensors"))["acts"]
    windows = list(token_windows(tiny, read_texts(["sample"]), 32))
    first_trained = activations_at(tiny, windows[config.eval_windows], "L1.out")[0, 1:]
    torch.testing.assert_close(shard[:31], first_trained.float(), rtol=1e-5, atol=1e-5)
    held_out = activations_at(tiny, windows[0], "L1.out")[0, 1:]
    assert not torch.allclose(shard[:31], held_out.float())


def test_cli_passes_epochs_and_refuses_zero(tmp_path, garage_home, capsys):
    from garage_tui.cli import main
    from tests.tiny_models import tiny_model

    folder = tmp_path / "tiny-llama"
    tiny_model("llama").model.save_pretrained(folder)
    code = main(["sae", "train", str(folder), "--at", "L1.out", "--epochs", "0", "--budget-cpu-seconds", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "the number of epochs must be at least 1, got 0" in err and len(err.strip().splitlines()) == 1


def test_latents_that_never_fired_count_as_dead_in_training():
    from engine.features.train import _dead_training

    last_fired = torch.full((8,), -1, dtype=torch.long)
    last_fired[0] = 0  # fired at step 0: alive; the other seven never fired
    assert _dead_training(last_fired, 10, {"pass_done": False, "pass_rows": 0}, 10) == 7 / 8
