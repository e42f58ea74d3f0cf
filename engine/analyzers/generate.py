"""Greedy generation under interventions, for steering and quick checks.

With interventions that treat every position alike (zero-ablation, scaling, steering of all
positions, module swaps) the KV cache is used: each new token sees the same edits it would
in a full rerun. Interventions that depend on the whole sequence (mean-ablation, patches,
position-specific steering) rerun the full sequence at every step instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.analyzers._sites import require_causal, run_with
from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.runner import encode


@dataclass
class Generation:
    prompt: str
    token_ids: list[int]  # the new tokens only
    text: str  # the new text only
    interventions: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "token_ids": self.token_ids, "text": self.text,
                "interventions": self.interventions}


def generate(
    loaded: LoadedModel,
    prompt: str,
    max_new_tokens: int = 20,
    interventions: Sequence[Intervention] = (),
) -> Generation:
    """Greedy continuation of ``prompt`` (deterministic), stopping early at end-of-sequence."""
    require_causal(loaded, "generation")
    if max_new_tokens < 1:
        raise GarageError(f"max new tokens must be at least 1, got {max_new_tokens}")
    ids = encode(loaded, prompt)
    eos = loaded.tokenizer.eos_token_id
    if all(_position_independent(i) for i in interventions):
        new_tokens = _greedy_cached(loaded, ids, max_new_tokens, interventions, eos)
    else:
        new_tokens = _greedy_rerun(loaded, ids, max_new_tokens, interventions, eos)
    return Generation(prompt, new_tokens, loaded.tokenizer.decode(new_tokens),
                      [i.to_dict() for i in interventions])


def _position_independent(intervention: Intervention) -> bool:
    if intervention.kind == "ablate":
        return intervention.mode == "zero"
    if intervention.kind == "steer":
        return intervention.positions is None
    return intervention.kind in ("scale", "replace")


def _greedy_cached(loaded: LoadedModel, ids, max_new_tokens: int, interventions, eos) -> list[int]:
    from engine.hooks import hooked

    new_tokens: list[int] = []
    with torch.inference_mode(), hooked(loaded.model, loaded.anatomy, (), interventions):
        output = loaded.model(input_ids=ids, use_cache=True)
        for _ in range(max_new_tokens):
            next_id = int(output.logits[0, -1].argmax())
            new_tokens.append(next_id)
            if next_id == eos or len(new_tokens) == max_new_tokens:
                break
            output = loaded.model(input_ids=ids.new_tensor([[next_id]]), cache=output.cache, use_cache=True)
    return new_tokens


def _greedy_rerun(loaded: LoadedModel, ids, max_new_tokens: int, interventions, eos) -> list[int]:
    new_tokens: list[int] = []
    for _ in range(max_new_tokens):
        logits, _ = run_with(loaded, ids, interventions=interventions)
        next_id = int(logits[0, -1].argmax())
        new_tokens.append(next_id)
        if next_id == eos:
            break
        ids = torch.cat([ids, ids.new_tensor([[next_id]])], dim=1)
    return new_tokens
