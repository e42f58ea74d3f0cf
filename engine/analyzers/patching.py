"""Activation patching: which activations carry the difference between two prompts.

Run a clean and a corrupted prompt of equal token length; the metric is the logit
difference ``logit(answer) − logit(wrong)`` at the last position, where the answer is the
clean run's top token and the wrong token the corrupted run's. Patching one clean activation
into the corrupted run restores ``(LD_patched − LD_corrupt) / (LD_clean − LD_corrupt)`` of it.
Each layer's output is patched one position at a time (patching every position of a
residual restores everything trivially), and each head's ``z`` at all positions. Patches are
batched, one per row, like head importance.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
from engine.loading import LoadedModel
from engine.run import run
from engine.runner import encode

ROWS_PER_PASS = 32
APPEARS = 0.5  # patching the last position restores at least this much: the answer is there


@dataclass
class PatchingReport:
    clean: str
    corrupt: str
    tokens: list[str]  # clean prompt tokens
    answer: str
    wrong: str
    clean_diff: float
    corrupt_diff: float
    layer_position: list[list[float]] = field(default_factory=list)  # [layer][position] restored fraction
    heads: list[list[float]] = field(default_factory=list)  # [layer][head] restored fraction

    def layers_with_answer(self, threshold: float = APPEARS) -> list[str]:
        """Layers whose output at the last position alone restores ≥ ``threshold`` of the difference."""
        return [f"L{layer}" for layer, row in enumerate(self.layer_position) if row[-1] >= threshold]

    def top_heads(self, n: int = 5) -> list[tuple[str, float]]:
        flat = [(f"L{layer}.attn.h{head}", value)
                for layer, row in enumerate(self.heads) for head, value in enumerate(row)]
        return sorted(flat, key=lambda item: (-item[1], item[0]))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "corrupt": self.corrupt, "tokens": self.tokens, "answer": self.answer,
                "wrong": self.wrong, "clean_logit_diff": self.clean_diff, "corrupt_logit_diff": self.corrupt_diff,
                "layers_with_answer": self.layers_with_answer(),
                "top_heads": [{"address": a, "restored": v} for a, v in self.top_heads()],
                "layer_position": self.layer_position, "heads": self.heads}


def _patch_row(row: int, source: Tensor, position: int | None, columns: slice | None):
    def edit(value: Tensor) -> Tensor:
        value = value.clone()
        where = (row, slice(None) if position is None else position, slice(None) if columns is None else columns)
        clean_where = (0, where[1], where[2])
        value[where] = source[clean_where].to(value.dtype)
        return value

    return edit


def activation_patching(
    loaded: LoadedModel,
    clean: str,
    corrupt: str,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    *,
    heads: bool | Sequence[int] = True,
) -> PatchingReport:
    """Restored fraction of the clean logit difference per (layer, position) and per head.

    ``heads`` is True for every layer's heads, False for none, or the layers whose heads to
    patch (other layers get an empty row in ``report.heads``).
    """
    require_causal(loaded, "activation patching")
    anatomy = loaded.anatomy
    clean_ids, corrupt_ids = encode(loaded, clean), encode(loaded, corrupt)
    if clean_ids.shape != corrupt_ids.shape:
        raise GarageError(
            f"the clean prompt has {clean_ids.shape[1]} tokens and the corrupted one {corrupt_ids.shape[1]}; "
            "patching needs prompts of equal token length"
        )
    n_layers, n_tokens = anatomy.n_layers, clean_ids.shape[1]
    geometry = require_heads(loaded)
    n_heads, d_head = geometry.n_heads, geometry.head_dim
    head_layers = set(range(n_layers)) if heads is True else set(heads or ())
    if head_layers - set(range(n_layers)):
        raise GarageError(f"head layers must be within 0–{n_layers - 1}, got {sorted(head_layers)}")
    check_cancel(cancel, "activation patching")
    addresses = [f"L{i}.out" for i in range(n_layers)] + [f"L{i}.attn.z" for i in sorted(head_layers)]
    notify(progress, "clean and corrupted runs", 0.0)
    clean_run = run(loaded, clean_ids, capture=addresses, cancel=cancel)
    clean_logits, tap = clean_run.logits, clean_run.tap
    corrupt_logits, recorded = record_blocks(loaded, corrupt_ids, cancel)
    answer = int(clean_logits[0, -1].argmax())
    ranked = corrupt_logits[0, -1].argsort(descending=True)
    wrong = int(ranked[0]) if int(ranked[0]) != answer else int(ranked[1])

    def diff(logits: Tensor) -> Tensor:
        return (logits[:, -1, answer] - logits[:, -1, wrong]).double()

    clean_diff, corrupt_diff = float(diff(clean_logits)[0]), float(diff(corrupt_logits)[0])
    if abs(clean_diff - corrupt_diff) < 1e-6:
        raise GarageError("the two prompts give the same logit difference; pick prompts whose answers differ")
    jobs: list[tuple[str, int, int, Target, Tensor, int | None, slice | None]] = []
    for layer in range(n_layers):
        target = Target(anatomy.by_address[f"L{layer}"], "out")
        jobs += [("layer", layer, pos, target, tap[f"L{layer}.out"], pos, None) for pos in range(n_tokens)]
    for layer in sorted(head_layers):
        target = Target(anatomy.by_address[f"L{layer}.attn"], "z")
        jobs += [("head", layer, head, target, tap[f"L{layer}.attn.z"], None,
                  slice(head * d_head, (head + 1) * d_head)) for head in range(n_heads)]
    report = PatchingReport(clean, corrupt, [loaded.tokenizer.decode([i]) for i in clean_ids[0].tolist()],
                            loaded.tokenizer.decode([answer]), loaded.tokenizer.decode([wrong]),
                            clean_diff, corrupt_diff,
                            [[0.0] * n_tokens for _ in range(n_layers)],
                            [[0.0] * n_heads if layer in head_layers else [] for layer in range(n_layers)])
    for start in range(0, len(jobs), ROWS_PER_PASS):
        check_cancel(cancel, "activation patching")
        chunk = jobs[start:start + ROWS_PER_PASS]
        edits = [(job[3], _patch_row(row, job[4], job[5], job[6])) for row, job in enumerate(chunk)]
        batch = corrupt_ids.expand(len(chunk), -1)
        with replay_prefix(loaded, recorded, min(job[1] for job in chunk)):
            logits = run(loaded, batch, edits=edits, last_logits_only=True, cancel=cancel).logits
        restored = ((diff(logits) - corrupt_diff) / (clean_diff - corrupt_diff)).tolist()
        for (kind, layer, index, *_), value in zip(chunk, restored, strict=True):
            (report.layer_position if kind == "layer" else report.heads)[layer][index] = value
        notify(progress, "patching", min(1.0, (start + len(chunk)) / len(jobs)))
    return report
