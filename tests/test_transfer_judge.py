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


def _strength(alpha, native, mapped, random, kl=(1.0, 1.1, 5.0), split=(math.nan, math.nan)):
    return StrengthJudgement(alpha, native, mapped, random, *kl, 10.0, 10.5, 40.0, split[0], split[1], 12.0)


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
    # no split control run: its ratios are NaN and it never "works in distribution"
    assert math.isnan(judged.over_split) and not judged.works_in_distribution
    assert document["over_split"] != document["over_split"] and document["works_in_distribution"] is False


def test_split_control_ratios_and_works_in_distribution_stand_beside_the_isotropic_ones():
    # the split control is stronger than the isotropic one here: the transfer works against
    # the isotropic control but not in distribution (the case the real pair is feared to be)
    strengths = [_strength(1, 2.0, 2.0, 0.5, split=(1.0, 2.0)), _strength(-1, -2.0, -1.5, 0.5, split=(0.5, 3.0)),
                 _strength(2, 4.0, 3.0, 0.5, split=(0.8, 4.0)), _strength(-2, -4.0, -2.5, 0.5, split=(0.7, 5.0))]
    judged = TransferJudgement("t", "L1.out", "L2.out", 5.0, 10.0, 5.0, 0.3, -1.0, 12.0, strengths, [0], 2, 10,
                               torch.ones(4), torch.ones(4))
    assert [s.works for s in strengths] == [True, True, True, True]
    assert [s.works_in_distribution for s in strengths] == [False, True, True, True]  # 2.0 < 3 × 1.0
    assert strengths[1].over_split == pytest.approx(3.0)
    assert judged.over_random == pytest.approx(2.25 / 0.5) and judged.works
    assert judged.over_split == pytest.approx(2.25 / 0.75) and judged.works_in_distribution
    assert judged.native_over_random == pytest.approx(6.0) and judged.native_over_split == pytest.approx(4.0)
    assert judged.split_damage_ratio == pytest.approx(3.5) and judged.random_damage_ratio == pytest.approx(5.0)
    weaker = dataclasses.replace(judged, strengths=[dataclasses.replace(s, split=s.split * 1.1) for s in strengths])
    assert weaker.works and not weaker.works_in_distribution  # 2.25 / 0.825 < 3 on average
    document = judged.to_dict()
    assert document["over_split"] == pytest.approx(3.0) and document["works_in_distribution"] is True
    assert document["native_over_split"] == pytest.approx(4.0) and document["split_damage_ratio"] == pytest.approx(3.5)
    row = document["strengths"][0]
    assert row["split"] == 1.0 and row["kl"]["split"] == 2.0 and row["perplexity"]["split"] == 12.0
    assert row["works_in_distribution"] is False and row["works"] is True


def test_random_split_control_is_the_diffmean_of_a_seeded_shuffled_split_of_the_task_prompts(tiny):
    from engine.analyzers.steering import steering_vector
    from engine.transfer.judge import random_split, split_controls, task_vector

    pooled = [*TINY_TASK.positive, *TINY_TASK.negative]
    native = task_vector(tiny, "L0.out", TINY_TASK)
    controls = split_controls(tiny, "L0.out", TINY_TASK, (0, 1, 4, 5), split="random")
    again = split_controls(tiny, "L0.out", TINY_TASK, (1, 5), split="random")
    assert [c.seed for c in controls] == [0, 1, 4, 5] and {c.kind for c in controls} == {"random"}
    for control in controls:
        assert len(control.first) == len(control.second) == 2
        assert sorted((*control.first, *control.second)) == sorted(pooled)
        assert (control.first, control.second) == random_split(pooled, control.seed)
        # the garage's DiffMean recipe (position 0 and sinks left out) on the two halves
        recipe = steering_vector(tiny, 0, list(control.first), list(control.second)).vector.float()
        assert torch.allclose(control.vector, recipe, atol=1e-6)
    # seeded: the same seed gives the same halves and the same vector
    for seed, control in zip((1, 5), again, strict=True):
        twin = next(c for c in controls if c.seed == seed)
        assert twin.first == control.first and torch.equal(twin.vector, control.vector)
    # with four prompts a shuffle can land on the labelled split (seed 0 does): then, and only
    # then, the control is B's native vector; the mixed splits point elsewhere
    labelled, *mixed = controls
    assert labelled.positives_in_first == 2 and torch.allclose(labelled.vector, native, atol=1e-6)
    for control in mixed:
        assert control.positives_in_first == 1
        assert float(torch.nn.functional.cosine_similarity(control.vector, native, dim=0)) < 0.9
    # seeds 1 and 5 cut the same partition (so the same vector); seed 4 another one
    assert torch.allclose(mixed[0].vector, mixed[2].vector, atol=1e-6)
    assert not torch.allclose(mixed[0].vector, mixed[1].vector, atol=1e-3)


def test_judge_runs_each_of_bs_task_prompts_once_and_shared_means_change_nothing(tiny):
    from engine.transfer.judge import split_controls, task_means, task_vector

    means = task_means(tiny, "L0.out", TINY_TASK)
    assert torch.equal(task_vector(tiny, "L0.out", TINY_TASK, means=means), task_vector(tiny, "L0.out", TINY_TASK))
    for shared, own in zip(split_controls(tiny, "L0.out", TINY_TASK, (0, 1), means=means),
                           split_controls(tiny, "L0.out", TINY_TASK, (0, 1)), strict=True):
        assert torch.equal(shared.vector, own.vector)

    from engine.runner import encode

    seen: list[tuple[int, ...]] = []

    def record(module, args, kwargs):  # every forward pass of the model, whoever makes it
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(tuple(ids[0].tolist()))

    handle = tiny.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        stitch = Stitch("ridge", 64, 64, torch.eye(64), torch.zeros(64))
        judge_transfer(tiny, tiny, "L0.out", "L0.out", stitch, TINY_TASK, neutral=NEUTRAL, random_seeds=(0, 1))
    finally:
        handle.remove()
    # each task prompt runs twice: once in A for its DiffMean, once in B for both its DiffMean and the
    # split controls (the held-out prompts and the neutral text are other texts)
    prompts = {*TINY_TASK.positive, *TINY_TASK.negative}
    assert {p: seen.count(tuple(encode(tiny, p)[0].tolist())) for p in prompts} == {p: 2 for p in prompts}


def test_stratified_split_gives_each_half_half_of_each_class_and_leaves_an_odd_one_out():
    from engine.transfer.judge import random_split, stratified_split

    positive, negative = [f"p{i}" for i in range(8)], [f"n{i}" for i in range(8)]
    cuts = [stratified_split(positive, negative, seed) for seed in range(12)]
    for first, second, left_out in cuts:
        assert sum(p in positive for p in first) == sum(p in positive for p in second) == 4
        assert len(first) == len(second) == 8 and left_out == ()
        assert sorted((*first, *second)) == sorted(positive + negative)
    assert stratified_split(positive, negative, 3) == cuts[3]  # seeded
    assert len({frozenset(first) for first, _, _ in cuts}) == 12  # and the seed matters
    # the unstratified cut of the same pooled prompts is unequal for most of these seeds
    unequal = sum(sum(p in positive for p in random_split(positive + negative, seed)[0]) != 4 for seed in range(12))
    assert unequal >= 4
    # odd classes: one prompt of each odd class is left out, the rest split evenly
    for seed in range(6):
        first, second, left_out = stratified_split(positive[:5], negative[:3], seed)
        assert len(left_out) == 2 and sum(p in positive for p in left_out) == 1
        assert [sum(p in positive for p in half) for half in (first, second)] == [2, 2]
        assert [sum(p in negative for p in half) for half in (first, second)] == [1, 1]
    assert len({stratified_split(positive[:5], negative[:3], seed)[2] for seed in range(6)}) > 1  # a seeded choice
    first, second, left_out = stratified_split(positive[:1], negative[:4], 0)
    assert left_out == ("p0",) and len(first) == len(second) == 2


def test_stratified_split_control_carries_none_of_the_label(tiny):
    # a task whose only signal is the label: the classes differ in the middle of the prompt, and
    # the last character runs over the same eight letters in both classes
    from engine.transfer.judge import split_controls, task_vector

    letters = "abcdefgh"
    task = TransferTask("label", "the label and nothing else", tuple(f"x++++++{c}" for c in letters),
                        tuple(f"x------{c}" for c in letters), (HeldOutPrompt("x", ("a",), ("b",)),))
    native = task_vector(tiny, "L1.out", task)
    seeds = range(12)

    def projections(kind):
        # the control's component along the label direction, as a fraction of the label's DiffMean
        controls = split_controls(tiny, "L1.out", task, seeds, split=kind)
        return controls, [float(c.vector @ native) / float(native.norm()) ** 2 for c in controls]

    stratified, along = projections("stratified")
    assert all(c.kind == "stratified" and c.positives_in_first == 4 for c in stratified)
    assert max(abs(p) for p in along) < 0.05  # measured ≤ 0.012
    # the unstratified cut keeps (positives in the first half − 4) / 4 of the label: ±0.25, ±0.5
    shuffled, along = projections("random")
    unequal = [p for c, p in zip(shuffled, along, strict=True) if c.positives_in_first != 4]
    assert unequal and all(abs(p) > 0.2 for p in unequal)
    for c, p in zip(shuffled, along, strict=True):
        assert p == pytest.approx((c.positives_in_first - 4) / 4, abs=0.03)
    with pytest.raises(TransferError, match="unknown split 'halves'"):
        split_controls(tiny, "L1.out", task, seeds, split="halves")
    lone = TransferTask("lone", "one pair", ("x++",), ("x--",), task.held_out)
    with pytest.raises(TransferError, match="too few prompts for a stratified split control"):
        split_controls(tiny, "L1.out", lone, seeds)
    assert len(split_controls(tiny, "L1.out", lone, (0,), split="random")) == 1


def test_judge_scores_split_vectors_rescaled_to_the_native_norm(tiny):
    from engine.transfer.judge import split_controls, task_vector

    stitch = Stitch("ridge", 64, 64, torch.eye(64), torch.zeros(64))
    seeds = (1, 5)
    judged = judge_transfer(tiny, tiny, "L0.out", "L0.out", stitch, TINY_TASK, neutral=NEUTRAL, alphas=(1.0, -2.0),
                            random_seeds=seeds)
    v_b = task_vector(tiny, "L0.out", TINY_TASK)
    controls = split_controls(tiny, "L0.out", TINY_TASK, seeds)
    assert [c.seed for c in judged.splits] == list(seeds) and judged.split_kind == "stratified"
    assert all(torch.equal(a.vector, b.vector) for a, b in zip(judged.splits, controls, strict=True))
    assert all(c.positives_in_first == 1 for c in judged.splits)  # one of the two positives per half
    for s in judged.strengths:
        scale = s.alpha * float(v_b.norm())
        rescaled = [c.vector / c.vector.norm() * scale for c in controls]
        assert all(float(r.norm()) == pytest.approx(abs(scale), rel=1e-6) for r in rescaled)
        each = [_reference_effect(tiny, r) for r in rescaled]
        assert s.split == pytest.approx(sum(abs(e) for e in each) / len(each), abs=1e-4)
        assert s.split_effects == pytest.approx(each, abs=1e-4)  # signed, seed by seed
        # a raw (not rescaled) split vector would score differently: the rescaling is what is judged
        raw = sum(abs(_reference_effect(tiny, c.vector * (s.alpha / abs(s.alpha)))) for c in controls) / len(controls)
        assert abs(raw - s.split) > 1e-3
        assert s.over_split == pytest.approx(abs(s.mapped) / s.split)
        assert s.works_in_distribution == (abs(s.mapped) >= 3 * s.split and s.mapped * s.native > 0)
        assert s.kl_split > 0 and s.ppl_split > 1
    # damage of the split control at α = −2, by hand
    base = _reference_logprobs(tiny, NEUTRAL[0], None, False)
    kls = []
    for c in controls:
        moved = _reference_logprobs(tiny, NEUTRAL[0], c.vector / c.vector.norm() * -2 * float(v_b.norm()), False)
        kls.append(float((base.exp() * (base - moved)).sum()) / base.shape[0])
    assert judged.strengths[1].kl_split == pytest.approx(sum(kls) / len(kls), rel=1e-3)
    document = judged.to_dict()
    assert [d["seed"] for d in document["splits"]] == [1, 5] and document["splits"][0]["half"] == 2
    assert document["split_kind"] == "stratified" and document["splits"][0]["kind"] == "stratified"
    randoms = [torch.randn(64, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    for s in judged.strengths:  # signed per seed, and the judged random control is the mean of their |.|
        each = [_reference_effect(tiny, r / r.norm() * s.alpha * float(v_b.norm())) for r in randoms]
        assert s.random_effects == pytest.approx(each, abs=1e-4)
        assert s.random == pytest.approx(sum(abs(e) for e in each) / len(each), abs=1e-4)
    assert document["strengths"][0]["random_effects"] == pytest.approx(list(judged.strengths[0].random_effects))
    cosine = float(torch.nn.functional.cosine_similarity(controls[0].vector, v_b, dim=0))
    assert document["splits"][0]["cosine_native"] == pytest.approx(cosine, abs=1e-6)
    assert {"over_split", "native_over_split", "split_damage_ratio", "works_in_distribution"} <= set(document)
    assert document["strengths"][0]["split"] == pytest.approx(judged.strengths[0].split)


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
def oracle_judged(smollm2, smollm2_stitched_twin):
    from engine.transfer.prompts import neutral_text

    wide, known, report = smollm2_stitched_twin
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


def test_transfer_cli_shows_both_random_controls_in_json_and_table(tiny, garage_home, monkeypatch, capsys):
    import json

    import engine.loading
    from engine.parts import PartsBin
    from engine.transfer.evaluate import FitMetrics
    from engine.transfer.fitting import StitchReport
    from engine.transfer.parts import save_stitch
    from garage_tui.cli import main

    # a saved identity seam: the char tokenizer cannot give the offsets a fitted stitch pairs by
    seam = Stitch("ridge", 64, 64, torch.eye(64), torch.zeros(64), fit_pairs=10)
    save_stitch(PartsBin(), tiny, tiny, StitchReport(seam, "L0.out", "L0.out", "same-token-positions", "abc",
                                                     FitMetrics(1.0, 1.0, 3), None), name="seam")
    monkeypatch.setattr(engine.loading, "open_model", lambda *args, **kwargs: tiny)
    argv = ["transfer", "tiny", "tiny", "--at-a", "L0.out", "--at-b", "L0.out", "--stitch", "seam", "--alphas",
            "1", "--random", "2", "--neutral-chunks", "1", "--no-save"]
    assert main([*argv, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    row = document["strengths"][0]
    # every bundled target word starts with a space, one char token: effects are 0 here, damage is not
    assert row["split"] == row["native"] == 0.0 and row["kl"]["split"] > 0 and row["perplexity"]["split"] > 1
    assert "over_split" in row and isinstance(row["works_in_distribution"], bool)
    assert isinstance(document["works_in_distribution"], bool) and document["split_damage_ratio"] > 0
    assert [d["seed"] for d in document["splits"]] == [0, 1] and document["splits"][0]["half"] == 8
    assert document["split_kind"] == "stratified"
    assert [d["positives_in_first"] for d in document["splits"]] == [4, 4]  # 8 pairs: 4 positives per half
    assert main([*argv, "--json", "--split", "random"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["split_kind"] == "random" and {d["kind"] for d in document["splits"]} == {"random"}
    assert document["splits"][0]["positives_in_first"] == 2  # seed 0 cuts sentiment's 16 prompts 2 + 6 / 6 + 2
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "× split" in printed and "in distribution:" in printed and "stratified-split control" in printed
    from engine.transfer.judge import SPLITS
    from garage_tui.commands.transfer_cmd import SPLITS as CLI_SPLITS

    assert CLI_SPLITS == SPLITS  # repeated in the CLI so --help imports no torch
