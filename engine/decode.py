"""Greedy decoding: the one loop behind generation, snapshots in motion and evaluation.

With interventions that treat every position alike (zero-ablation, scaling, steering of all
positions, module swaps) the KV cache is used: each new token sees the same edits it would
in a full rerun. Interventions that depend on the whole sequence (mean-ablation, patches,
position-specific steering) rerun the full sequence at every step instead. Every step is one
call of ``engine.run.run``, so a cancel event stops decoding at the next layer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.progress import Progress, check_cancel, notify
from engine.run import run


@dataclass
class Decoded:
    """The new tokens and, per captured address, one tensor per step along the position axis."""

    new_tokens: list[int]
    states: dict[str, list[Tensor]] = field(default_factory=dict)  # step 0 covers the prompt
    mode: str = "kv-cache"  # kv-cache | rerun


def position_independent(intervention: Intervention) -> bool:
    """True when ``intervention`` edits each position alike, so cached decoding is exact."""
    return intervention.position_independent()


def greedy_decode(
    loaded: LoadedModel,
    ids: Tensor,
    max_new_tokens: int,
    interventions: Sequence[Intervention] = (),
    *,
    capture: Sequence[str] = (),
    stop_at_eos: bool = True,
    feed_last: bool = False,
    mode: str | None = None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Decoded:
    """Up to ``max_new_tokens`` greedy tokens after ``ids`` (``[1, T]``) under ``interventions``.

    Stops after an end-of-sequence token when ``stop_at_eos``. ``capture`` keeps each step's
    values of those points (the prompt's at step 0, then each new position's); ``feed_last``
    runs the last new token through the model too, so its own states are captured. ``mode``
    forces ``kv-cache`` or ``rerun`` (default: the cache whenever the interventions allow it).
    """
    from engine.limits import MAX_GENERATE, check_context, check_count

    check_count(max_new_tokens, "the number of new tokens", MAX_GENERATE)  # before any step runs
    check_context(int(ids.shape[1]) + max_new_tokens, loaded.config, loaded.name,
                  f"the prompt plus {max_new_tokens:,} new tokens")
    eos = loaded.tokenizer.eos_token_id if stop_at_eos and loaded.tokenizer is not None else None
    if mode not in (None, "kv-cache", "rerun"):
        raise GarageError(f"decoding mode must be kv-cache or rerun, got {mode!r}")
    cached = all(position_independent(item) for item in [*loaded.standing, *interventions]) if mode is None \
        else mode == "kv-cache"
    decoded = Decoded([], {address: [] for address in capture}, "kv-cache" if cached else "rerun")
    sequence, cache = ids, None
    step_ids = ids
    while True:
        check_cancel(cancel, "generation")
        output = run(loaded, step_ids if cached else sequence, capture=capture, interventions=interventions,
                     cancel=cancel, cache=cache, use_cache=cached, last_logits_only=True)
        for address in capture:
            value = output.tap[address]
            decoded.states[address].append(value if not decoded.new_tokens or cached else value[:, -1:])
        finished = len(decoded.new_tokens) == max_new_tokens or (
            bool(decoded.new_tokens) and decoded.new_tokens[-1] == eos)
        if finished:
            return decoded
        decoded.new_tokens.append(int(output.logits[0, -1].argmax()))
        notify(progress, "generating", len(decoded.new_tokens) / max_new_tokens)
        finished = len(decoded.new_tokens) == max_new_tokens or decoded.new_tokens[-1] == eos
        if finished and not feed_last:
            return decoded
        step_ids = ids.new_tensor([[decoded.new_tokens[-1]]])
        sequence = torch.cat([sequence, step_ids], dim=1)
        cache = output.cache
