"""The transfer judge: its arithmetic on a tiny random Llama (fast), the prompt sets, and the oracle
pair SmolLM2 → its widened twin, where a direction moved through the fitted stitch must act as
B's native one (slow)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from engine.transfer.judge import StrengthJudgement, TransferJudgement, judge_transfer
from engine.transfer.pairs import TransferError
from engine.transfer.prompts import TASKS, HeldOutPrompt, TransferTask, load_task, token_lengths
from engine.transfer.stitch import Stitch
from tests.tiny_models import CharTokenizer, tiny_model


class ListTokenizer(CharTokenizer):
    """The char tokenizer, giving plain lists when no tensors are asked for (as HF tokenizers do)."""

    def __call__(self, text: str, return_tensors: str | None = None, add_special_tokens: bool = True):
        encoded = super().__call__(text)
        if return_tensors is None:
            encoded.input_ids = encoded.input_ids[0].tolist()
        return encoded


TINY_TASK = TransferTask(
    "tiny", "a made-up direction", ("good fun day", "sunny warm"), ("bad dull day", "rainy cold"),
    (HeldOutPrompt("the day was", ("g",), ("b",)), HeldOutPrompt("it is", ("s", "w"), ("r",))))
NEUTRAL = ["some neutral text about a module and its functions."]


@pytest.fixture(scope="module")
def tiny():
    loaded = tiny_model("llama", seed=3)
    loaded.tokenizer = ListTokenizer()
    return loaded


def _reference_logprobs(loaded, text: str, vector: torch.Tensor | None, last_only: bool) -> torch.Tensor:
    """A hand-written steered forward: a plain forward hook on block 0 adds ``vector``."""
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    block = loaded.model.model.layers[0]

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(hook) if vector is not None else None
    try:
        with torch.no_grad():
            logits = loaded.model(input_ids=ids).logits[0].double()
    finally:
        if handle is not None:
            handle.remove()
    values = logits.log_softmax(-1)
    return values[-1] if last_only else values


def _reference_effect(loaded, vector: torch.Tensor) -> float:
    tok = loaded.tokenizer
    changes = []
    for item in TINY_TASK.held_out:
        pos = [tok(w).input_ids[0] for w in item.positive]
        neg = [tok(w).input_ids[0] for w in item.negative]
        base = _reference_logprobs(loaded, item.prompt, None, True)
        moved = _reference_logprobs(loaded, item.prompt, vector, True)
        changes.append(float(moved[pos].mean() - moved[neg].mean()) - float(base[pos].mean() - base[neg].mean()))
    return sum(changes) / len(changes)


def test_identity_stitch_scores_exactly_native_and_matches_a_hand_written_forward(tiny):
    from engine.transfer.judge import task_vector

    stitch = Stitch("ridge", 64, 64, torch.eye(64), torch.zeros(64))
    judged = judge_transfer(tiny, tiny, "L0.out", "L0.out", stitch, TINY_TASK, neutral=NEUTRAL, random_seeds=(0, 1))
    v_b = task_vector(tiny, "L0.out", TINY_TASK)
    assert judged.norm_native == pytest.approx(float(v_b.norm())) and judged.cosine == pytest.approx(1.0)
    assert [s.alpha for s in judged.strengths] == [1.0, -1.0, 2.0, -2.0]
    for s in judged.strengths:
        assert s.mapped == pytest.approx(s.native, abs=1e-6) and s.fraction == pytest.approx(1.0, abs=1e-4)
        assert s.kl_mapped == pytest.approx(s.kl_native, rel=1e-5)
        # the effect is the change of mean log p(positive words) − mean log p(negative words)
        assert s.native == pytest.approx(_reference_effect(tiny, s.alpha * v_b), abs=1e-4)
        randoms = [torch.randn(64, generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)]
        expected = sum(abs(_reference_effect(tiny, r / r.norm() * s.alpha * float(v_b.norm()))) for r in randoms) / 2
        assert s.random == pytest.approx(expected, abs=1e-4)
    # damage: mean per-token KL(unsteered ‖ steered) on the neutral text, by hand for α = 2
    base = _reference_logprobs(tiny, NEUTRAL[0], None, False)
    moved = _reference_logprobs(tiny, NEUTRAL[0], 2 * v_b, False)
    kl = float((base.exp() * (base - moved)).sum()) / base.shape[0]
    assert judged.strengths[2].kl_native == pytest.approx(kl, rel=1e-3)
    assert judged.baseline_perplexity > 1 and judged.neutral_tokens == len(NEUTRAL[0]) - 1


def test_a_flipping_stitch_scores_minus_native_and_never_works(tiny):
    from engine.transfer.judge import task_vector

    v_a = task_vector(tiny, "L0.out", TINY_TASK)
    flip = Stitch("ridge", 64, 64, -3 * torch.eye(64), torch.ones(64))  # the bias must not reach a direction
    judged = judge_transfer(tiny, tiny, "L0.out", "L0.out", flip, TINY_TASK, vector_a=v_a, neutral=NEUTRAL,
                            alphas=(1.0, -1.0), random_seeds=(0,))
    assert judged.norm_mapped == pytest.approx(3 * judged.norm_native, rel=1e-5)
    plus, minus = judged.strengths
    # rescaled to ‖v_B‖, the flipped vector at +α is the native one at −α
    assert plus.mapped == pytest.approx(minus.native, abs=1e-6) and minus.mapped == pytest.approx(plus.native, abs=1e-6)
    assert all(s.fraction < 0 and not s.works for s in judged.strengths)
    assert not judged.works and judged.strength_range() is None


def _strength(alpha, native, mapped, random, kl=(1.0, 1.1, 5.0)):
    return StrengthJudgement(alpha, native, mapped, random, *kl, 10.0, 10.5, 40.0)


def test_judgement_arithmetic_works_rule_and_calibrated_range():
    strengths = [_strength(1, 2.0, 2.0, 0.5), _strength(-1, -2.0, -1.0, 0.5), _strength(2, 4.0, 3.0, 0.5),
                 _strength(-2, -4.0, -1.2, 0.5)]
    judged = TransferJudgement("t", "L1.out", "L2.out", 5.0, 10.0, 5.0, 0.3, -1.0, 12.0, strengths, [0], 2, 10,
                               torch.ones(4), torch.ones(4))
    assert [s.works for s in strengths] == [True, False, True, False]  # |−1.0| and |−1.2| < 3 × 0.5
    assert judged.mean_fraction() == pytest.approx((1 + 0.5 + 0.75 + 0.3) / 4)
    assert judged.mean_fraction(True) == pytest.approx(0.875) and judged.mean_fraction(False) == pytest.approx(0.4)
    assert judged.over_random == pytest.approx(((2 + 1 + 3 + 1.2) / 4) / 0.5)
    assert judged.damage_ratio == pytest.approx(1.1) and judged.random_damage_ratio == pytest.approx(5.0)
    # strengths on the stored vector: α · ‖v_B‖ / ‖map(v_A)‖ = α · 2 over the working α = 1, 2
    assert judged.strength_range() == (2.0, 4.0) and judged.works
    document = judged.to_dict()
    assert document["strength_range"] == [2.0, 4.0] and "mapped_vector" not in document
    assert document["strengths"][1]["works"] is False
    wrong_sign = _strength(1, 2.0, -9.0, 0.1)
    assert wrong_sign.over_random == pytest.approx(90.0) and not wrong_sign.works
    assert math.isinf(_strength(1, 1.0, 1.0, 0.0).over_random)


def test_prompt_sets_load_and_bad_names_are_refused(tiny):
    from engine.transfer.judge import judge_vectors

    for name in TASKS:
        task = load_task(name)
        assert len(task.positive) == len(task.negative) >= 8 and len(task.held_out) >= 8 and task.about
        assert all(item.positive and item.negative for item in task.held_out)
    assert load_task("antonyms").held_out[0].positive == (" cold",)
    with pytest.raises(TransferError, match="unknown transfer task 'nope'"):
        load_task("nope")
    with pytest.raises(TransferError, match="width 32"):
        judge_vectors(tiny, "L0.out", torch.ones(32), torch.ones(64), TINY_TASK, neutral=NEUTRAL)
    with pytest.raises(TransferError, match="not a layer's residual output"):
        judge_transfer(tiny, tiny, "L0.attn", "L0.out", Stitch("ridge", 64, 64, torch.eye(64), torch.zeros(64)),
                       TINY_TASK, neutral=NEUTRAL)


@pytest.mark.slow
def test_target_words_are_single_tokens_in_smollm2_and_gemma(smollm2, gemma):
    for name in TASKS:
        words = load_task(name).words()
        for loaded in (smollm2, gemma):
            lengths = token_lengths(loaded.tokenizer, words)
            assert {w: n for w, n in lengths.items() if n != 1} == {}, (name, loaded.name)


@pytest.fixture(scope="module")
def oracle_judged(smollm2):
    from engine.transfer.fitting import fit_stitch
    from engine.transfer.pairs import stitch_text
    from engine.transfer.prompts import neutral_text
    from engine.transfer.widen import widened_loaded

    wide, known = widened_loaded(smollm2, 960, seed=0)
    report = fit_stitch(smollm2, wide, "L15.out", "L15.out", stitch_text(max_chars=9000), kind="ridge",
                        loss_chunks=0)
    task = load_task("sentiment")
    task = dataclasses.replace(task, held_out=task.held_out[:4])  # few passes: the check is exact, not statistical
    judged = judge_transfer(smollm2, wide, "L15.out", "L15.out", report.stitch, task, alphas=(2.0, -1.0),
                            neutral=neutral_text(1, 300), random_seeds=(0,))
    return wide, known, report, judged


@pytest.mark.slow
def test_oracle_transfer_gives_the_native_effect_and_beats_random(oracle_judged):
    _, known, _, judged = oracle_judged
    # B's native DiffMean is A's carried by the known map, so the stitch's image must point the same way
    assert judged.cosine > 0.9999
    assert judged.norm_mapped == pytest.approx(judged.norm_native, rel=1e-3)  # both are the image of v_A under one map
    for s in judged.strengths:
        assert abs(s.native) > 0.1
        assert abs(s.mapped - s.native) / abs(s.native) <= 1e-3
        assert s.kl_mapped == pytest.approx(s.kl_native, rel=1e-2)
    assert judged.over_random >= 3 and judged.works and judged.mean_fraction() == pytest.approx(1.0, abs=1e-3)
    assert judged.strength_range() is not None


def test_stitch_parts_load_back_and_refuse_other_models(tiny, garage_home):
    from engine.parts import PartsBin
    from engine.transfer.evaluate import FitMetrics
    from engine.transfer.fitting import StitchReport
    from engine.transfer.parts import load_stitch, save_stitch

    torch.manual_seed(0)
    other = tiny_model("llama", seed=4)
    other.config.rms_norm_eps = 1e-5  # another config, so another config hash
    assert other.config_hash != tiny.config_hash
    ae = Stitch("ae", 64, 64, encoder=torch.nn.Linear(64, 16), decoder=torch.nn.Linear(16, 64),
                x_mean=torch.randn(64), x_scale=2.0, y_mean=torch.randn(64), y_scale=0.5, fit_pairs=10)
    ridge = Stitch("lowrank", 64, 64, torch.randn(64, 64), torch.randn(64), rank=8, fit_pairs=10)
    bin_ = PartsBin()
    rows = torch.randn(5, 64)
    for name, stitch in (("ae-seam", ae), ("low-seam", ridge)):
        report = StitchReport(stitch, "L0.out", "L1.out", "same-token-positions", "abc", FitMetrics(0.5, 0.7, 3), None)
        save_stitch(bin_, tiny, other, report, name=name)
        part = load_stitch(bin_, name, tiny, other)
        assert part.stitch.kind == stitch.kind and part.address_b == "L1.out" and part.text_digest == "abc"
        assert torch.allclose(part.stitch.apply(rows), stitch.apply(rows), atol=1e-6)
        assert torch.allclose(part.stitch.map_direction(rows[0]), stitch.map_direction(rows[0]), atol=1e-6)
    with pytest.raises(TransferError, match="fitted with tiny-llama as B .config"):
        load_stitch(bin_, "ae-seam", tiny, tiny)
