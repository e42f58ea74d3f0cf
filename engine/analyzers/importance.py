"""Head importance: how much the loss on a text rises when each head (or block) is ablated.

The loss is measured on a fixed window of the text (default: the first 96 tokens of the
bundled sample), so a full sweep of SmolLM2's 270 heads stays quick. Ablations are batched:
each batch row carries one ablation, applied by a raw edit on that row only, so one forward
pass scores several heads. Ties are broken by address, so the ranking is deterministic.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.addresses import Target
from engine.analyzers.base import (
    Progress,
    check_cancel,
    notify,
    record_blocks,
    replay_prefix,
    require_causal,
    require_heads,
)
from engine.errors import GarageError
from engine.interventions import ABLATE_MODES
from engine.loading import LoadedModel
from engine.run import run
from engine.runner import encode
from engine.sample_text import sample_text

DEFAULT_WINDOW = 96
ROWS_PER_PASS = 11  # a layer's 9 heads, attention block and MLP in one pass on SmolLM2


@dataclass
class Importance:
    address: str
    kind: str  # head | attn | mlp
    layer: int
    head: int | None
    loss: float
    delta: float  # loss with the part ablated minus the clean loss

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "kind": self.kind, "layer": self.layer, "head": self.head,
                "loss": self.loss, "delta": self.delta}


@dataclass
class ImportanceReport:
    mode: str
    n_tokens: int
    clean_loss: float
    heads: list[Importance] = field(default_factory=list)  # ranked, most important first
    blocks: list[Importance] = field(default_factory=list)  # attention blocks and MLPs, ranked

    def grid(self) -> dict[int, list[float]]:
        """Head Δ loss as ``{layer: [delta per head]}``, for heatmaps."""
        grid: dict[int, dict[int, float]] = {}
        for entry in self.heads:
            grid.setdefault(entry.layer, {})[entry.head or 0] = entry.delta
        return {layer: [row[h] for h in sorted(row)] for layer, row in sorted(grid.items())}

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "n_tokens": self.n_tokens, "clean_loss": self.clean_loss,
                "heads": [e.to_dict() for e in self.heads], "blocks": [e.to_dict() for e in self.blocks]}


def _ranked(entries: list[Importance]) -> list[Importance]:
    return sorted(entries, key=lambda e: (-e.delta, e.layer, e.head if e.head is not None else -1, e.kind))


def _row_losses(logits: Tensor, ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy per batch row."""
    rows, length, vocab = logits.shape
    predicted = logits[:, :-1].float().reshape(-1, vocab)  # rows of the vocabulary stay contiguous
    targets = ids[:, 1:].reshape(-1)
    losses = torch.nn.functional.cross_entropy(predicted, targets, reduction="none")
    return losses.view(rows, length - 1).mean(dim=1)


def _row_ablation(row: int, columns: slice | None, mode: str):
    def edit(value: Tensor) -> Tensor:
        value = value.clone()
        cols = columns if columns is not None else slice(None)
        part = value[row, :, cols]
        value[row, :, cols] = part.mean(dim=0, keepdim=True).expand_as(part) if mode == "mean" else 0
        return value

    return edit


def _jobs(loaded: LoadedModel, layers: Sequence[int], blocks: bool) -> list[tuple[Importance, Target, slice | None]]:
    anatomy = loaded.anatomy
    geometry = require_heads(loaded)
    d_head = geometry.head_dim
    jobs: list[tuple[Importance, Target, slice | None]] = []
    for layer in layers:
        for head in range(geometry.n_heads):
            address = f"L{layer}.attn.h{head}"
            target = Target(anatomy.by_address[address], "z")
            jobs.append((Importance(address, "head", layer, head, 0.0, 0.0), target,
                         slice(head * d_head, (head + 1) * d_head)))
        if blocks:
            for kind in ("attn", "mlp"):
                address = f"L{layer}.{kind}"
                jobs.append((Importance(address, kind, layer, None, 0.0, 0.0),
                             Target(anatomy.by_address[address], "out"), None))
    return jobs


def window_ids(loaded: LoadedModel, text: str | None, window: int) -> Tensor:
    ids = encode(loaded, text if text is not None else sample_text())[:, :window]
    if ids.shape[1] < 2:
        raise GarageError("the text is too short for a loss: give at least two tokens")
    return ids


def head_importance(
    loaded: LoadedModel,
    text: str | None = None,
    mode: str = "zero",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    *,
    layers: Sequence[int] | None = None,
    blocks: bool = True,
    window: int = DEFAULT_WINDOW,
) -> ImportanceReport:
    """Δ loss on ``text`` (default: the bundled sample) for each ablated head, attention block and MLP.

    ``layers`` restricts the sweep; ``mode`` is ``zero`` or ``mean`` (mean over positions).
    """
    require_causal(loaded, "head importance")
    if mode not in ABLATE_MODES:
        raise GarageError(f"unknown ablation mode '{mode}'; use one of: {', '.join(ABLATE_MODES)}")
    n_layers = loaded.anatomy.n_layers
    chosen = list(range(n_layers)) if layers is None else sorted(set(layers))
    if any(not 0 <= layer < n_layers for layer in chosen):
        raise GarageError(f"layers must be within 0–{n_layers - 1}, got {chosen}")
    ids = window_ids(loaded, text, window)
    notify(progress, "clean run", 0.0)
    clean_logits, recorded = record_blocks(loaded, ids, cancel)
    clean_loss = float(_row_losses(clean_logits, ids)[0])
    jobs = _jobs(loaded, chosen, blocks)
    # one layer's ablations per pass, so every row replays the clean blocks before its layer
    by_layer = [[job for job in jobs if job[0].layer == layer] for layer in chosen]
    chunks = [layer_jobs[start:start + ROWS_PER_PASS]
              for layer_jobs in by_layer for start in range(0, len(layer_jobs), ROWS_PER_PASS)]
    done = 0
    for chunk in chunks:
        check_cancel(cancel, "head importance")
        edits = [(target, _row_ablation(row, columns, mode)) for row, (_, target, columns) in enumerate(chunk)]
        batch = ids.expand(len(chunk), -1)
        with replay_prefix(loaded, recorded, chunk[0][0].layer):
            logits = run(loaded, batch, edits=edits, cancel=cancel).logits
        for (entry, _, _), loss in zip(chunk, _row_losses(logits, batch).tolist(), strict=True):
            entry.loss, entry.delta = loss, loss - clean_loss
        done += len(chunk)
        notify(progress, "ablating", done / len(jobs))
    entries = [job[0] for job in jobs]
    return ImportanceReport(mode, int(ids.shape[1]), clean_loss,
                            _ranked([e for e in entries if e.kind == "head"]),
                            _ranked([e for e in entries if e.kind != "head"]))
