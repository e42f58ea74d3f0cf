"""Attention patterns, per-head entropy, and heads named by what they attend to.

A head is named a *previous-token*, *first-token* or *self* head when, averaged over query
positions after the first, at least ``ROLE_THRESHOLD`` of its attention goes there.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.analyzers.base import Progress
from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.run import run
from engine.runner import encode

ROLE_THRESHOLD = 0.5
ROLES = ("previous-token", "first-token", "self")


@dataclass
class HeadAttention:
    layer: int
    head: int
    entropy: float  # mean over query positions, in nats
    scores: dict[str, float]  # mean attention to previous token / first token / itself
    role: str | None

    @property
    def address(self) -> str:
        return f"L{self.layer}.attn.h{self.head}"

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "layer": self.layer, "head": self.head,
                "entropy": self.entropy, "scores": dict(self.scores), "role": self.role}


@dataclass
class AttentionReport:
    prompt: str
    tokens: list[str]
    heads: list[HeadAttention] = field(default_factory=list)
    patterns: Tensor | None = None  # [layers, heads, query, key]

    def pattern(self, layer: int, head: int) -> Tensor:
        """The ``[query, key]`` attention pattern of one head."""
        if self.patterns is None:
            raise GarageError("this report was made without patterns")
        n_layers, n_heads = self.patterns.shape[:2]
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise GarageError(f"no head L{layer}.attn.h{head}: layers 0–{n_layers - 1}, heads 0–{n_heads - 1}")
        return self.patterns[layer, head]

    def entropy_grid(self) -> list[list[float]]:
        """Entropy as ``[layer][head]``, for heatmaps."""
        grid: dict[int, list[float]] = {}
        for head in self.heads:
            grid.setdefault(head.layer, []).append(head.entropy)
        return [grid[layer] for layer in sorted(grid)]

    def heads_with_role(self, role: str) -> list[str]:
        return [head.address for head in self.heads if head.role == role]

    def to_dict(self, include_patterns: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "prompt": self.prompt, "tokens": self.tokens, "entropy": self.entropy_grid(),
            "roles": {role: self.heads_with_role(role) for role in ROLES},
            "heads": [head.to_dict() for head in self.heads],
        }
        if include_patterns and self.patterns is not None:
            doc["patterns"] = self.patterns.tolist()
        return doc


def head_scores(pattern: Tensor) -> dict[str, float]:
    """Mean attention of query positions 1.. to the previous token, the first token, itself."""
    n = pattern.shape[-1]
    if n < 2:
        return {role: 0.0 for role in ROLES}
    queries = torch.arange(1, n)
    return {
        "previous-token": float(pattern[queries, queries - 1].mean()),
        "first-token": float(pattern[queries, 0].mean()),
        "self": float(pattern[queries, queries].mean()),
    }


def pattern_entropy(pattern: Tensor) -> float:
    """Mean Shannon entropy (nats) of the attention rows ``[query, key]``."""
    p = pattern.double().clamp_min(0)
    return float(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean())


def attention_report(
    loaded: LoadedModel,
    prompt: str,
    interventions: Sequence[Intervention] = (),
    *,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> AttentionReport:
    """Every head's pattern, entropy and role for ``prompt`` (runs eager attention)."""
    anatomy = loaded.anatomy
    if anatomy.geometry is None or not anatomy.n_layers:
        raise GarageError(f"'{loaded.name}' has no attention layers this garage knows how to read")
    ids = encode(loaded, prompt)
    addresses = [f"L{i}.attn.pattern" for i in range(anatomy.n_layers)]
    tap = run(loaded, ids, interventions=interventions, capture=addresses, cancel=cancel, progress=progress,
              stop_after_capture=True).tap
    patterns = torch.stack([tap[address][0].float() for address in addresses])
    tokens = [loaded.tokenizer.decode([i]) for i in ids[0].tolist()]
    report = AttentionReport(prompt, tokens, patterns=patterns)
    for layer in range(patterns.shape[0]):
        for head in range(patterns.shape[1]):
            pattern = patterns[layer, head]
            scores = head_scores(pattern)
            best = max(ROLES, key=lambda role: scores[role])
            report.heads.append(HeadAttention(layer, head, pattern_entropy(pattern), scores,
                                              best if scores[best] >= ROLE_THRESHOLD else None))
    return report
