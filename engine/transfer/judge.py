"""Judge a direction moved from model A into model B through a stitch, against B's own, with controls.

The protocol (issue 15): the mapped vector, B's native vector and seeded random vectors are all
added at B's address with the same norm, ``α · ‖v_B‖`` for each ``α`` (both signs). On held-out
prompts the effect is the change in the target words' log-probability score (mean log-prob of the
words a + steer should raise minus of those it should lower) against the unsteered run, the
no-steer control. On neutral text the damage is the mean per-token KL(unsteered ‖ steered) and
the steered perplexity. A strength "works" only where the mapped effect has the native effect's
sign and is at least ``WORKS_RATIO`` × the random control's (mean absolute) effect; cosine
between the mapped and native vectors is reported but is a poor proxy, so nothing is judged by it.

Two random controls, both of the same norm, seeded alike. The *isotropic* one (a Gaussian vector)
is off B's residual distribution: in Gemma-3-270M it costs ~10–26× native's KL on neutral text,
so its effect on the target words is disruption more than direction. The *split* one is the
standard null for a DiffMean direction: the garage's own DiffMean recipe between two seeded halves
of the task's own prompts — the same data distribution with the label taken away. By default the
cut is *stratified* (each half holds half of the positives and half of the negatives), which takes
the label away by construction: the label's mean cancels within each class. The unstratified
``split="random"`` cut (positives and negatives pooled, shuffled, cut in two) takes it away only
on average: 16 prompts cut 8/8 leave the classes unequal 62% of the time, and such cuts carry
25–50% of the label's DiffMean, so that control is stronger than its name says.
``works`` keeps the rule against the isotropic control; ``works_in_distribution`` is the same rule
against the split one.

The random controls' effect is the mean over seeds of |effect| (a direction of chance sign moves
the words by chance either way, and both ways count as "a random vector did this"); the signed
per-seed effects are kept too (``random_effects``, ``split_effects``), so a mean of signed effects,
which cancels towards 0 and flatters the mapped vector, can be read off but is not what is judged.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.progress import Progress, check_cancel, notify
from engine.transfer.pairs import TransferError
from engine.transfer.prompts import HeldOutPrompt, TransferTask, neutral_text, target_ids
from engine.transfer.stitch import Stitch

__all__ = ["ALPHAS", "WORKS_RATIO", "SplitControl", "StrengthJudgement", "TransferJudgement", "TransferReport",
           "SPLITS", "judge_transfer", "judge_vectors", "layer_of", "random_split", "split_controls",
           "stratified_split", "task_means", "task_vector", "transfer_direction"]

ALPHAS = (1.0, -1.0, 2.0, -2.0)  # multiples of ‖v_B‖, both signs
WORKS_RATIO = 3.0
SPLITS = ("stratified", "random")  # kinds of the split control's cut; the first is the default


@dataclass
class StrengthJudgement:
    """One signed strength ``alpha`` (× ‖v_B‖): effect and damage of each vector at that norm."""

    alpha: float
    native: float  # mean change of the target score with B's native vector
    mapped: float  # the same with A's vector moved through the stitch
    random: float  # mean |change| over the seeded random vectors (a magnitude: their sign is chance)
    kl_native: float  # mean per-token KL(unsteered ‖ steered) on neutral text
    kl_mapped: float
    kl_random: float
    ppl_native: float  # perplexity of the neutral text under the steered model
    ppl_mapped: float
    ppl_random: float
    # the split control (DiffMean between two seeded halves of the task's prompts): mean |change|, KL, perplexity
    split: float = math.nan
    kl_split: float = math.nan
    ppl_split: float = math.nan
    split_effects: tuple[float, ...] = ()  # signed, one per split seed: a split that kept part of the label shows
    random_effects: tuple[float, ...] = ()  # signed, one per isotropic seed (``random`` is the mean of their |.|)

    @property
    def fraction(self) -> float:
        """Mapped effect as a fraction of native (1.0 = as good as B's own vector)."""
        return self.mapped / self.native if self.native else math.nan

    @property
    def over_random(self) -> float:
        """|mapped effect| over the random control's; ``WORKS_RATIO`` or more counts."""
        return abs(self.mapped) / self.random if self.random else math.inf

    @property
    def over_split(self) -> float:
        """|mapped effect| over the split control's (NaN where it was not run)."""
        if math.isnan(self.split):
            return math.nan
        return abs(self.mapped) / self.split if self.split else math.inf

    @property
    def damage_ratio(self) -> float:
        """Mapped KL over native KL on neutral text (1.0 = the same damage)."""
        return self.kl_mapped / self.kl_native if self.kl_native else math.nan

    @property
    def works(self) -> bool:
        return self.mapped * self.native > 0 and abs(self.mapped) >= WORKS_RATIO * self.random

    @property
    def works_in_distribution(self) -> bool:
        """The ``works`` rule with the split control in place of the isotropic one."""
        return self.mapped * self.native > 0 and abs(self.mapped) >= WORKS_RATIO * self.split

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "native": self.native, "mapped": self.mapped, "random": self.random,
                "split": self.split, "split_effects": list(self.split_effects),
                "random_effects": list(self.random_effects), "fraction": self.fraction,
                "over_random": self.over_random, "over_split": self.over_split, "works": self.works,
                "works_in_distribution": self.works_in_distribution,
                "kl": {"native": self.kl_native, "mapped": self.kl_mapped, "random": self.kl_random,
                       "split": self.kl_split},
                "perplexity": {"native": self.ppl_native, "mapped": self.ppl_mapped, "random": self.ppl_random,
                               "split": self.ppl_split},
                "damage_ratio": self.damage_ratio}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _ratio(top: float, bottom: float) -> float:
    if math.isnan(top) or math.isnan(bottom):
        return math.nan
    return top / bottom if bottom else math.inf


@dataclass
class SplitControl:
    """One seeded split of a task's prompts in two halves and the DiffMean direction between them."""

    seed: int
    first: tuple[str, ...]
    second: tuple[str, ...]
    positives_in_first: int  # of the task's positive prompts; half of them is a split with no label left
    vector: Tensor = field(repr=False)  # mean(first) − mean(second) at B's address, raw (not rescaled)
    cosine_native: float = math.nan  # cos(vector, B's native vector): how much of the label the split kept
    kind: str = "stratified"  # one of ``SPLITS``: how the halves were cut
    left_out: tuple[str, ...] = ()  # a stratified cut of an odd class leaves one of its prompts out

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "kind": self.kind, "half": len(self.first),
                "positives_in_first": self.positives_in_first, "left_out": len(self.left_out),
                "norm": float(self.vector.norm()), "cosine_native": self.cosine_native}


@dataclass
class TransferJudgement:
    """A transferred direction judged on B: per-strength numbers, the controls and a calibrated range."""

    task: str
    address_a: str
    address_b: str
    norm_a: float  # ‖v_A‖
    norm_native: float  # ‖v_B‖, the norm every judged vector is given (× α)
    norm_mapped: float  # ‖map(v_A)‖ before rescaling: how much the stitch shrinks or grows directions
    cosine: float  # cos(map(v_A), v_B): reported, not judged by
    baseline_score: float  # the no-steer control: mean target score unsteered
    baseline_perplexity: float  # the no-steer control on neutral text
    strengths: list[StrengthJudgement]
    random_seeds: list[int]
    prompts: int
    neutral_tokens: int
    mapped_vector: Tensor = field(repr=False)  # map(v_A), raw (as stored in a part)
    native_vector: Tensor = field(repr=False)
    splits: list[SplitControl] = field(default_factory=list, repr=False)  # the split control's vectors
    split_kind: str = "stratified"  # how the split control's halves were cut (``SPLITS``)

    def _side(self, positive: bool | None) -> list[StrengthJudgement]:
        return [s for s in self.strengths if positive is None or (s.alpha > 0) == positive]

    def mean_fraction(self, positive: bool | None = None) -> float:
        """Mean of mapped/native over the strengths (one sign with ``positive``)."""
        return _mean([s.fraction for s in self._side(positive)])

    @property
    def over_random(self) -> float:
        """Mean |mapped effect| over the mean random-control effect, across every strength."""
        random = _mean([s.random for s in self.strengths])
        return _mean([abs(s.mapped) for s in self.strengths]) / random if random else math.inf

    @property
    def over_split(self) -> float:
        """Mean |mapped effect| over the mean split-control effect, across every strength."""
        return _ratio(_mean([abs(s.mapped) for s in self.strengths]), _mean([s.split for s in self.strengths]))

    @property
    def native_over_random(self) -> float:
        """Mean |native effect| over the isotropic control's: the most any map can reach in ``over_random``."""
        return _ratio(_mean([abs(s.native) for s in self.strengths]), _mean([s.random for s in self.strengths]))

    @property
    def native_over_split(self) -> float:
        """Mean |native effect| over the split control's: the ceiling of ``over_split``."""
        return _ratio(_mean([abs(s.native) for s in self.strengths]), _mean([s.split for s in self.strengths]))

    @property
    def damage_ratio(self) -> float:
        """Mean mapped KL over mean native KL on neutral text."""
        return _mean([s.kl_mapped for s in self.strengths]) / _mean([s.kl_native for s in self.strengths])

    @property
    def random_damage_ratio(self) -> float:
        """Mean random-vector KL over mean native KL."""
        return _mean([s.kl_random for s in self.strengths]) / _mean([s.kl_native for s in self.strengths])

    @property
    def split_damage_ratio(self) -> float:
        """Mean split-vector KL over mean native KL."""
        return _ratio(_mean([s.kl_split for s in self.strengths]), _mean([s.kl_native for s in self.strengths]))

    @property
    def works(self) -> bool:
        """True where the mapped vector beats ``WORKS_RATIO`` × random on average and at some strength."""
        return self.over_random >= WORKS_RATIO and any(s.works for s in self.strengths)

    @property
    def works_in_distribution(self) -> bool:
        """``works`` against the split control: ``WORKS_RATIO`` × it on average and at some strength."""
        return self.over_split >= WORKS_RATIO and any(s.works_in_distribution for s in self.strengths)

    def strength_range(self) -> tuple[float, float] | None:
        """Calibrated strengths, as multipliers of the stored (raw mapped) vector, where the transfer works.

        Norms differ between models and a stitch shrinks or grows directions, so a strength of
        1 on the raw mapped vector means little; this range is ``α · ‖v_B‖ / ‖map(v_A)‖`` over
        the working ``α``.
        """
        working = [s.alpha * self.norm_native / self.norm_mapped for s in self.strengths if s.works]
        return (min(working), max(working)) if working else None

    def to_dict(self) -> dict[str, Any]:
        calibrated = self.strength_range()
        return {
            "task": self.task, "address_a": self.address_a, "address_b": self.address_b,
            "norm_a": self.norm_a, "norm_native": self.norm_native, "norm_mapped": self.norm_mapped,
            "cosine": self.cosine, "baseline_score": self.baseline_score,
            "baseline_perplexity": self.baseline_perplexity,
            "mean_fraction": self.mean_fraction(), "positive_fraction": self.mean_fraction(True),
            "negative_fraction": self.mean_fraction(False), "over_random": self.over_random,
            "over_split": self.over_split, "native_over_random": self.native_over_random,
            "native_over_split": self.native_over_split, "damage_ratio": self.damage_ratio,
            "random_damage_ratio": self.random_damage_ratio, "split_damage_ratio": self.split_damage_ratio,
            "works": self.works, "works_in_distribution": self.works_in_distribution,
            "strength_range": list(calibrated) if calibrated else None,
            "strengths": [s.to_dict() for s in self.strengths], "random_seeds": self.random_seeds,
            "split_kind": self.split_kind, "splits": [split.to_dict() for split in self.splits],
            "prompts": self.prompts, "neutral_tokens": self.neutral_tokens,
        }


def layer_of(loaded: Any, address: str) -> int:
    """The layer index of a residual address (``L9`` / ``L9.out``); anything else is refused."""
    from engine.addresses import resolve_point

    target = resolve_point(loaded.anatomy, address)
    if target.part.kind != "layer" or target.point != "out" or target.layer is None:
        raise TransferError(f"'{address}' is not a layer's residual output; pass an address like L9.out")
    return int(target.layer)


def task_vector(loaded: Any, address: str, task: TransferTask, *, cancel: threading.Event | None = None,
                means: dict[str, Tensor] | None = None) -> Tensor:
    """The garage's steer (``steering_vector``: DiffMean over each prompt's text rows, position 0
    and sinks left out) at ``address`` from the task's prompt pairs, float32 on the CPU.

    Leaving the sink out matters here most: at SmolLM2 L14 an all-position DiffMean had cos 0.36
    with this one and twice its norm, and a stitch fitted without sinks maps that part to noise
    (mapped effect 39% of native instead of 67%). ``means``: ``task_means`` of this model and
    address, when the caller has them (they give the split controls too).
    """
    from engine.analyzers.steering import steering_vector

    if not task.positive or not task.negative:
        raise TransferError(f"task '{task.name}' needs positive and negative prompts for a DiffMean vector")
    layer = layer_of(loaded, address)
    return steering_vector(loaded, layer, task.positive, task.negative, cancel=cancel,
                           means=means).vector.float().cpu()


def task_means(loaded: Any, address: str, task: TransferTask, *,
               cancel: threading.Event | None = None) -> dict[str, Tensor]:
    """Each of the task's prompts' mean text row at ``address``'s layer output (one pass per prompt):
    what both ``task_vector`` and ``split_controls`` are arithmetic on."""
    from engine.analyzers.steering import prompt_means

    return prompt_means(loaded, layer_of(loaded, address), [*task.positive, *task.negative], cancel)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise TransferError(f"unknown split '{split}'; use one of: {', '.join(SPLITS)}")


def random_split(prompts: Sequence[str], seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``prompts`` shuffled by a seeded permutation and cut in two halves (the first one the smaller)."""
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(int(seed))).tolist()
    half = len(prompts) // 2
    return tuple(prompts[i] for i in order[:half]), tuple(prompts[i] for i in order[half:])


def stratified_split(positive: Sequence[str], negative: Sequence[str], seed: int
                     ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Two halves holding half of ``positive`` and half of ``negative`` each, and the prompts left out.

    Each class is shuffled by its own seeded permutation and cut in two equal parts; a class of odd
    size leaves its last shuffled prompt out (a seeded choice), since giving it to either half would
    put the label back in by one prompt's share. Returns ``(first, second, left_out)``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    first: list[str] = []
    second: list[str] = []
    left_out: list[str] = []
    for prompts in (positive, negative):
        order = torch.randperm(len(prompts), generator=generator).tolist()
        half = len(prompts) // 2
        first += [prompts[i] for i in order[:half]]
        second += [prompts[i] for i in order[half:2 * half]]
        left_out += [prompts[i] for i in order[2 * half:]]
    return tuple(first), tuple(second), tuple(left_out)


def split_controls(loaded: Any, address: str, task: TransferTask, seeds: Sequence[int], *,
                   split: str = "stratified", cancel: threading.Event | None = None,
                   means: dict[str, Tensor] | None = None) -> list[SplitControl]:
    """The split control's directions: for each seed, the DiffMean recipe of ``task_vector``
    (per-prompt mean of ``text_rows``, then mean over prompts, first half minus second half) over a
    seeded split of the task's prompts — ``stratified`` (``stratified_split``: half of each class
    per half, so the label cancels) or ``random`` (``random_split`` of the pooled prompts).

    Each prompt runs once and every split is arithmetic on the per-prompt means (``task_means``,
    passed as ``means`` when the caller has them), so more seeds cost no passes.
    """
    from engine.analyzers.steering import diff_mean

    _check_split(split)
    pooled = [*task.positive, *task.negative]
    kept = 2 * (len(task.positive) // 2 + len(task.negative) // 2) if split == "stratified" else len(pooled)
    if kept < 2:
        raise TransferError(f"task '{task.name}' has too few prompts for a {split} split control "
                            f"({len(task.positive)} positive, {len(task.negative)} negative)")
    if means is None:
        means = task_means(loaded, address, task, cancel=cancel)
    positives = set(task.positive)
    controls = []
    for seed in seeds:
        if split == "stratified":
            first, second, left_out = stratified_split(task.positive, task.negative, int(seed))
        else:
            (first, second), left_out = random_split(pooled, int(seed)), ()
        vector = diff_mean(means, first, second)
        if float(vector.norm()) == 0:
            raise TransferError(f"the {split} split with seed {seed} gave a zero direction; the prompts are identical")
        controls.append(SplitControl(int(seed), first, second, sum(p in positives for p in first),
                                     vector.float().cpu(), kind=split, left_out=left_out))
    return controls


class _Scorer:
    """Runs B once unsteered per prompt and neutral chunk, then scores steered runs against those."""

    def __init__(self, loaded: Any, address: str, prompts: Sequence[HeldOutPrompt], neutral: Sequence[str],
                 cancel: threading.Event | None) -> None:
        from engine.addresses import resolve_point
        from engine.runner import encode

        self.loaded, self.cancel = loaded, cancel
        self.target = resolve_point(loaded.anatomy, address)
        tokenizer = loaded.tokenizer
        self.prompts = [(encode(loaded, item.prompt), target_ids(tokenizer, item.positive),
                         target_ids(tokenizer, item.negative)) for item in prompts]
        self.neutral = [encode(loaded, text) for text in neutral]
        self.base_scores = [self._score(self._last(ids, None), pos, neg) for ids, pos, neg in self.prompts]
        self.base_neutral = [self._all(ids, None) for ids in self.neutral]

    def _edits(self, vector: Tensor | None) -> list[Any]:
        if vector is None:
            return []

        def add(value: Tensor) -> Tensor:
            return value + vector.to(value.device, value.dtype)

        return [(self.target, add)]

    def _last(self, ids: Tensor, vector: Tensor | None) -> Tensor:
        from engine.run import run

        check_cancel(self.cancel, "the transfer judge")
        with torch.no_grad():
            logits = run(self.loaded, ids, last_logits_only=True, edits=self._edits(vector)).logits
        return logits[0, -1].double().log_softmax(-1).cpu()

    def _all(self, ids: Tensor, vector: Tensor | None) -> Tensor:
        from engine.run import run

        check_cancel(self.cancel, "the transfer judge")
        with torch.no_grad():
            logits = run(self.loaded, ids, edits=self._edits(vector)).logits
        # float32: the neutral chunks' full distributions are kept (a 262k vocabulary is big)
        return logits[0].float().log_softmax(-1).cpu()

    @staticmethod
    def _score(logprobs: Tensor, positive: list[int], negative: list[int]) -> float:
        score = float(logprobs[positive].mean()) if positive else 0.0
        return score - float(logprobs[negative].mean()) if negative else score

    @property
    def baseline_score(self) -> float:
        return _mean(self.base_scores)

    @property
    def neutral_tokens(self) -> int:
        return sum(int(ids.shape[1]) - 1 for ids in self.neutral)

    def baseline_perplexity(self) -> float:
        return self._perplexity(self.base_neutral)

    def _perplexity(self, logprobs: list[Tensor]) -> float:
        total = 0.0
        for ids, values in zip(self.neutral, logprobs, strict=True):
            targets = ids[0, 1:].cpu()
            total -= float(values[:-1].gather(-1, targets[:, None]).double().sum())
        return math.exp(total / max(self.neutral_tokens, 1))

    def effect(self, vector: Tensor) -> float:
        """Mean change of the target score over the held-out prompts when ``vector`` is added."""
        changes = [self._score(self._last(ids, vector), pos, neg) - base
                   for (ids, pos, neg), base in zip(self.prompts, self.base_scores, strict=True)]
        return _mean(changes)

    def damage(self, vector: Tensor) -> tuple[float, float]:
        """Mean per-token KL(unsteered ‖ steered) and the steered perplexity on the neutral text."""
        steered = [self._all(ids, vector) for ids in self.neutral]
        kl = sum(float((base.exp() * (base - moved)).double().sum()) for base, moved in zip(self.base_neutral, steered,
                                                                                      strict=True))
        tokens = sum(int(ids.shape[1]) for ids in self.neutral)
        return kl / max(tokens, 1), self._perplexity(steered)


def judge_vectors(loaded_b: Any, address_b: str, mapped: Tensor, native: Tensor, task: TransferTask, *,
                  alphas: Sequence[float] = ALPHAS, random_seeds: Sequence[int] = (0, 1, 2),
                  neutral: Sequence[str] | None = None, vector_a: Tensor | None = None, address_a: str = "",
                  split: str = "stratified", cancel: threading.Event | None = None,
                  progress: Progress | None = None, means: dict[str, Tensor] | None = None) -> TransferJudgement:
    """Judge ``mapped`` (a direction in B) against B's ``native`` one on ``task``, with the controls: no
    steer, isotropic random vectors and split DiffMean vectors (one of each per seed; ``split`` says
    how the halves are cut, see ``split_controls``).

    Every vector is rescaled to ``|α| · ‖native‖`` before it is added, so only directions compete.
    ``means``: B's ``task_means`` at ``address_b``, when the caller has them.
    """
    mapped, native = mapped.detach().float().cpu().reshape(-1), native.detach().float().cpu().reshape(-1)
    if mapped.shape != native.shape:
        raise TransferError(f"the mapped vector has width {mapped.numel()} but B's residual has {native.numel()}; "
                            "the stitch does not end at B's address")
    norm_native, norm_mapped = float(native.norm()), float(mapped.norm())
    if norm_native == 0 or norm_mapped == 0:
        raise TransferError("a judged vector is zero; the prompt pairs gave no difference at this address")
    if not alphas or not random_seeds:
        raise TransferError("the judge needs at least one strength and one random seed")
    _check_split(split)
    neutral = list(neutral) if neutral is not None else neutral_text()
    scorer = _Scorer(loaded_b, address_b, task.held_out, neutral, cancel)
    randoms = [torch.randn(native.numel(), generator=torch.Generator().manual_seed(int(seed)))
               for seed in random_seeds]
    splits = split_controls(loaded_b, address_b, task, random_seeds, split=split, cancel=cancel, means=means)
    if splits[0].vector.numel() != native.numel():
        raise TransferError(f"B's native vector has width {native.numel()} but B's residual at {address_b} has "
                            f"{splits[0].vector.numel()}")
    for control in splits:
        control.cosine_native = float(torch.nn.functional.cosine_similarity(control.vector, native, dim=0))
    units = {"native": native / norm_native, "mapped": mapped / norm_mapped}
    strengths = []
    for step, alpha in enumerate(alphas):
        notify(progress, f"judging α = {alpha:+g}", step / len(alphas))
        scale = float(alpha) * norm_native
        effects = {name: scorer.effect(unit * scale) for name, unit in units.items()}
        damages = {name: scorer.damage(unit * scale) for name, unit in units.items()}
        random_runs = [(scorer.effect(r / r.norm() * scale), scorer.damage(r / r.norm() * scale)) for r in randoms]
        split_runs = [(scorer.effect(c.vector / c.vector.norm() * scale),
                       scorer.damage(c.vector / c.vector.norm() * scale)) for c in splits]
        strengths.append(StrengthJudgement(
            float(alpha), effects["native"], effects["mapped"], _mean([abs(e) for e, _ in random_runs]),
            damages["native"][0], damages["mapped"][0], _mean([d[0] for _, d in random_runs]),
            damages["native"][1], damages["mapped"][1], _mean([d[1] for _, d in random_runs]),
            _mean([abs(e) for e, _ in split_runs]), _mean([d[0] for _, d in split_runs]),
            _mean([d[1] for _, d in split_runs]), tuple(e for e, _ in split_runs), tuple(e for e, _ in random_runs)))
    notify(progress, "judged", 1.0)
    cosine = float(torch.nn.functional.cosine_similarity(mapped, native, dim=0))
    return TransferJudgement(task.name, address_a, address_b, float(vector_a.norm()) if vector_a is not None else
                             math.nan, norm_native, norm_mapped, cosine, scorer.baseline_score,
                             scorer.baseline_perplexity(), strengths, [int(s) for s in random_seeds],
                             len(task.held_out), scorer.neutral_tokens, mapped, native, splits, split)


def judge_transfer(loaded_a: Any, loaded_b: Any, address_a: str, address_b: str, stitch: Stitch,
                   task: TransferTask, *, vector_a: Tensor | None = None, vector_b: Tensor | None = None,
                   alphas: Sequence[float] = ALPHAS, random_seeds: Sequence[int] = (0, 1, 2),
                   neutral: Sequence[str] | None = None, split: str = "stratified",
                   cancel: threading.Event | None = None, progress: Progress | None = None) -> TransferJudgement:
    """Move A's direction at ``address_a`` through ``stitch`` into B and judge it against B's native one.

    ``vector_a`` defaults to A's steer for the task (DiffMean over its prompt pairs) — a probe
    direction or an SAE decoder row can be passed instead; ``vector_b`` defaults to B's steer for
    the same task at ``address_b``.
    """
    _check_split(split)  # before the vectors are built, not after
    address_a, address_b = f"L{layer_of(loaded_a, address_a)}.out", f"L{layer_of(loaded_b, address_b)}.out"
    if stitch.width_a != loaded_a.anatomy.root.info.get("hidden_size", stitch.width_a):
        raise TransferError(f"the stitch starts from width {stitch.width_a}, not {loaded_a.name}'s residual")
    notify(progress, "building the steering vectors", None)
    v_a = vector_a.detach().float().cpu() if vector_a is not None else task_vector(loaded_a, address_a, task,
                                                                                  cancel=cancel)
    # B's prompts run once: its native DiffMean and the split controls are arithmetic on the same means
    means_b = task_means(loaded_b, address_b, task, cancel=cancel) if task.positive and task.negative else None
    v_b = vector_b.detach().float().cpu() if vector_b is not None else task_vector(loaded_b, address_b, task,
                                                                                  cancel=cancel, means=means_b)
    mapped = stitch.map_direction(v_a).detach()
    return judge_vectors(loaded_b, address_b, mapped, v_b, task, alphas=alphas, random_seeds=random_seeds,
                         neutral=neutral, vector_a=v_a, address_a=address_a, split=split, cancel=cancel,
                         progress=progress, means=means_b)


@dataclass
class TransferReport:
    """A judged transfer with the stitch it went through (what ``garage transfer`` and the TUI show)."""

    judgement: TransferJudgement
    alignment: str
    text_digest: str
    stitch: dict[str, Any]  # the stitch's kind, addresses and held-out numbers; ``part`` where one was loaded

    def to_dict(self) -> dict[str, Any]:
        return {"alignment": self.alignment, "text_digest": self.text_digest, "stitch": self.stitch,
                **self.judgement.to_dict()}


def transfer_direction(loaded_a: Any, loaded_b: Any, address_a: str, address_b: str, task: TransferTask, *,
                       stitch_part: str | None = None, bin_: Any | None = None, max_chars: int = 60000,
                       ridge: float = 1e-6, vector_a: Tensor | None = None, alphas: Sequence[float] = ALPHAS,
                       random_seeds: Sequence[int] = (0, 1, 2), neutral: Sequence[str] | None = None,
                       split: str = "stratified", cancel: threading.Event | None = None,
                       progress: Progress | None = None) -> TransferReport:
    """Load ``stitch_part`` from the bin (or fit a ridge stitch on the sample + pydoc text), then judge."""
    from engine.transfer.fitting import fit_stitch
    from engine.transfer.pairs import stitch_text
    from engine.transfer.parts import load_stitch, report_document

    _check_split(split)  # before a stitch is fitted, not after
    if stitch_part:
        if bin_ is None:
            from engine.parts import PartsBin

            bin_ = PartsBin()
        part = load_stitch(bin_, stitch_part, loaded_a, loaded_b)
        stitch, alignment, digest = part.stitch, part.alignment, part.text_digest
        stitch_doc: dict[str, Any] = {"part": part.name, **part.metrics}
    else:
        report = fit_stitch(loaded_a, loaded_b, address_a, address_b, stitch_text(max_chars=max_chars), ridge=ridge,
                            loss_chunks=0, cancel=cancel, progress=progress)
        stitch, alignment, digest = report.stitch, report.alignment, report.text_digest
        stitch_doc = {"part": None, **report_document(report)}
    judgement = judge_transfer(loaded_a, loaded_b, address_a, address_b, stitch, task, vector_a=vector_a,
                               alphas=alphas, random_seeds=random_seeds, neutral=neutral, split=split,
                               cancel=cancel, progress=progress)
    return TransferReport(judgement, alignment, digest, stitch_doc)
