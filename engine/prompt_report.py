"""What one press of ``r`` shows: every number for one prompt, from one forward pass.

The pass with the edits captures the residual stream at every layer (for the norms and the
logit lens) and streams statistics of the selected part; when edits are active, one more
pass without them gives the "before" column. Nothing else runs the model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.analyzers.lens import LensReport, lens_rows
from engine.anatomy import Anatomy
from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.run import Progress, RunOutput, run
from engine.runner import TokenGuess, encode, top_tokens
from engine.stats import StatsSummary, StreamingStats

STATS_BINS = 24


@dataclass
class Guess:
    """One next-token candidate: its probability with the edits and, when edits are active, without."""

    token_id: int
    text: str
    prob: float
    prob_before: float | None = None


@dataclass
class PassReadings:
    """Everything read off one forward pass (with the edits, or the baseline without)."""

    top: list[TokenGuess] = field(default_factory=list)  # empty for a model without an LM head
    norms: list[float] = field(default_factory=list)  # mean per-token L2 norm of L0.out … L{n-1}.out
    stats: StatsSummary | None = None  # of the selected part's capture point
    head_entropy: list[list[float]] | None = None  # [layer][head], when attention was asked for


@dataclass
class PromptReport:
    """One prompt's report: the run with the edits, and the baseline when edits are active."""

    prompt: str
    model: str
    token_ids: list[int]
    selected: str | None
    point: str | None  # the capture point whose statistics describe the selected part
    interventions: list[str]  # descriptions of the active edits
    now: PassReadings
    before: PassReadings | None  # None when no edits are active
    guesses: list[Guess] = field(default_factory=list)  # union of before/after top-k, best now first
    lens: LensReport | None = None  # logit lens of the run with the edits (causal LMs only)
    forward_passes: int = 0


def stats_point(anatomy: Anatomy, address: str | None) -> str | None:
    """The capture point whose statistics describe the selected part.

    None when nothing is selected, or the selection is not a part of this model (a selection
    kept from another model): the report then has no statistics, and the rest still runs.
    """
    part = anatomy.by_address.get(address) if address is not None else None
    if part is None:
        return None
    if part.kind == "model":
        return f"L{anatomy.n_layers - 1}.out" if anatomy.n_layers else None
    if part.kind == "head":
        return f"{address}.z"
    return f"{address}.out"


def _one_pass(
    loaded: LoadedModel,
    ids: Tensor,
    interventions: Sequence[Intervention],
    point: str | None,
    top_k: int,
    lens_top_k: int,
    cancel: threading.Event | None,
    progress: Progress | None,
    attention: bool,
) -> tuple[PassReadings, RunOutput, LensReport | None]:
    anatomy = loaded.anatomy
    layers = [f"L{i}.out" for i in range(anatomy.n_layers)]
    capture = list(layers)
    causal = loaded.is_causal_lm
    if causal and anatomy.by_address.get("embed") is not None:
        capture = ["embed.out", *capture]
    if attention:
        capture += [f"L{i}.attn.pattern" for i in range(anatomy.n_layers)]
    accumulator = StreamingStats(STATS_BINS, point) if point is not None else None
    observers = {point: accumulator.update} if accumulator is not None and point is not None else None
    output = run(loaded, ids, capture=capture, interventions=interventions, observers=observers,
                 cancel=cancel, progress=progress)
    readings = PassReadings()
    if causal:
        readings.top = top_tokens(loaded, output.logits[0, -1], top_k)
    readings.norms = [float(output.tap[address][0].double().norm(dim=-1).mean()) for address in layers]
    readings.stats = accumulator.summary() if accumulator is not None else None
    if attention:
        from engine.analyzers.attention import pattern_entropy

        readings.head_entropy = [
            [pattern_entropy(pattern) for pattern in output.tap[f"L{i}.attn.pattern"][0].float()]
            for i in range(anatomy.n_layers)
        ]
    lens = None
    if causal and "embed.out" in capture:
        lens = lens_rows(loaded, ids, output.logits, output.tap, ["embed.out", *layers], lens_top_k, -1, "")
    return readings, output, lens


def _union(now: list[TokenGuess], before: list[TokenGuess] | None, now_probs: Tensor,
           before_probs: Tensor | None) -> list[Guess]:
    if before is None or before_probs is None:
        return [Guess(g.token_id, g.text, g.prob) for g in now]
    texts = {g.token_id: g.text for g in (*now, *before)}
    ids = list(dict.fromkeys([g.token_id for g in now] + [g.token_id for g in before]))
    rows = [Guess(i, texts[i], float(now_probs[i]), float(before_probs[i])) for i in ids]
    return sorted(rows, key=lambda row: (-row.prob, row.token_id))


def prompt_report(
    loaded: LoadedModel,
    prompt: str,
    interventions: Sequence[Intervention],
    selected_address: str | None,
    *,
    top_k: int = 5,
    lens_top_k: int = 1,
    attention: bool = False,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> PromptReport:
    """Next-token guesses, residual norms, the selected part's statistics and the logit lens.

    Exactly one forward pass with ``interventions`` runs, plus one baseline pass without them
    when any are active. ``attention`` also reads per-head attention entropy from the same
    passes (it switches to eager attention). ``cancel`` stops either pass at its next layer.
    """
    if top_k < 1:
        raise GarageError(f"top-k must be at least 1, got {top_k}")
    point = stats_point(loaded.anatomy, selected_address)
    ids = encode(loaded, prompt)
    edits = list(interventions)
    stages = 2 if edits else 1

    def staged(index: int) -> Progress | None:
        if progress is None:
            return None
        return lambda stage, fraction: progress(
            stage, None if fraction is None else (index + fraction) / stages)

    now, output, lens = _one_pass(loaded, ids, edits, point, top_k, lens_top_k, cancel,
                                  staged(0), attention)
    report = PromptReport(prompt, loaded.name, ids[0].tolist(), selected_address, point,
                          [item.describe() for item in edits], now, None, lens=lens, forward_passes=1)
    before_probs = None
    if edits:
        before, baseline, _ = _one_pass(loaded, ids, (), point, top_k, lens_top_k, cancel, staged(1), attention)
        report.before, report.forward_passes = before, 2
        if loaded.is_causal_lm:
            before_probs = torch.softmax(baseline.logits[0, -1].float(), dim=-1)
    if loaded.is_causal_lm:
        now_probs = torch.softmax(output.logits[0, -1].float(), dim=-1)
        report.guesses = _union(now.top, report.before.top if report.before else None, now_probs, before_probs)
    return report
