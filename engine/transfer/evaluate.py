"""Held-out numbers for a stitch: R², cosine, loss recovered, and the effect of a moved steering vector."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.progress import check_cancel
from engine.transfer.pairs import PairBatch
from engine.transfer.stitch import Stitch

__all__ = ["FitMetrics", "LossRecovery", "fit_metrics", "loss_recovery", "steer_effect"]


@dataclass
class FitMetrics:
    """How well the map predicts B's residual on held-out pairs."""

    r2: float  # 1 − SSE / SST over all dims (explained variance)
    mean_cosine: float  # mean over rows of cos(mapped, true)
    pairs: int
    sinks: int = 0  # held-out rows left out as massive-activation sinks (``engine.transfer.pairs.sink_rows``)


@dataclass
class LossRecovery:
    """B's next-token loss on held-out text with the seam clean, ablated and stitched from A."""

    loss_a: float
    loss_b_clean: float
    loss_b_zero: float
    loss_b_mean: float
    loss_stitched: float

    @property
    def recovered_vs_zero(self) -> float:
        """Fraction of the loss gap closed between B with its seam zeroed (0) and B clean (1)."""
        return (self.loss_b_zero - self.loss_stitched) / (self.loss_b_zero - self.loss_b_clean)

    @property
    def recovered_vs_mean(self) -> float:
        """The same between B with its seam mean-ablated (0) and B clean (1)."""
        return (self.loss_b_mean - self.loss_stitched) / (self.loss_b_mean - self.loss_b_clean)


def fit_metrics(stitch: Stitch, batches: Iterable[PairBatch]) -> FitMetrics:
    """R² and mean cosine of ``stitch`` over a stream of held-out pairs (sums only are kept)."""
    count, sse, cosine_sum, sinks = 0, 0.0, 0.0, 0
    sum_y: Tensor | None = None
    sum_yy = 0.0
    for batch in batches:
        sinks += batch.sinks
        mapped = stitch.apply(batch.x).double()
        true = batch.y.double()
        sse += float(((mapped - true) ** 2).sum())
        cosine_sum += float(torch.nn.functional.cosine_similarity(mapped, true, dim=-1).sum())
        sum_y = true.sum(0) if sum_y is None else sum_y + true.sum(0)
        sum_yy += float((true ** 2).sum())
        count += true.shape[0]
    if sum_y is None or count == 0:
        return FitMetrics(float("nan"), float("nan"), 0, sinks)
    sst = sum_yy - float((sum_y ** 2).sum()) / count
    return FitMetrics(1.0 - sse / sst, cosine_sum / count, count, sinks)


def _next_token_loss(logits: Tensor, ids: Tensor) -> tuple[float, int]:
    flat = logits[0, :-1].float()
    targets = ids[0, 1:].to(flat.device)
    return float(torch.nn.functional.cross_entropy(flat, targets, reduction="sum")), targets.numel()


def loss_recovery(loaded_a, loaded_b, address_a: str, address_b: str, stitch: Stitch, chunks: list[str],
                  seam_mean: Tensor, cancel: threading.Event | None = None) -> LossRecovery:
    """Run B from A's mapped residual (A below the seam, the map, B above) on chunks A and B tokenize alike.

    Position 0 stays B's own in every variant (it is left out of the fit too: its attention-sink
    norm is unlike any other position's).
    """
    from engine.addresses import resolve_point
    from engine.run import run

    target_b = resolve_point(loaded_b.anatomy, address_b)
    totals = dict.fromkeys(("a", "clean", "zero", "mean", "stitched"), 0.0)
    tokens = 0
    for chunk in chunks:
        check_cancel(cancel, "the loss-recovery check")
        ids = loaded_a.tokenizer(chunk, return_tensors="pt").input_ids
        with torch.no_grad():
            out_a = run(loaded_a, ids.to(loaded_a.input_device), capture=[address_a])
            mapped = stitch.apply(out_a.tap[address_a][0, 1:].cpu())

            def replace_with(rows: Tensor):
                def edit(value: Tensor) -> Tensor:
                    edited = value.clone()
                    edited[0, 1:] = rows.to(value.device, value.dtype)
                    return edited
                return edit

            seq = ids.shape[1] - 1
            variants = {
                "clean": [],
                "zero": [(target_b, replace_with(torch.zeros(seq, stitch.width_b)))],
                "mean": [(target_b, replace_with(seam_mean.float().expand(seq, -1)))],
                "stitched": [(target_b, replace_with(mapped))],
            }
            loss, count = _next_token_loss(out_a.logits, ids)
            totals["a"] += loss
            for name, edits in variants.items():
                out_b = run(loaded_b, ids.to(loaded_b.input_device), edits=edits)
                totals[name] += _next_token_loss(out_b.logits, ids)[0]
        tokens += count
    return LossRecovery(totals["a"] / tokens, totals["clean"] / tokens, totals["zero"] / tokens,
                        totals["mean"] / tokens, totals["stitched"] / tokens)


def steer_effect(loaded, address: str, vector: Tensor, prompts: list[str], target_ids: list[int]) -> float:
    """Mean change in log-probability of ``target_ids`` at the last position when ``vector`` is added at ``address``."""
    from engine.addresses import resolve_point
    from engine.run import run

    target = resolve_point(loaded.anatomy, address)

    def add(value: Tensor) -> Tensor:
        return value + vector.to(value.device, value.dtype)

    change = 0.0
    for prompt in prompts:
        ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids.to(loaded.input_device)
        with torch.no_grad():
            base = run(loaded, ids, last_logits_only=True).logits[0, -1].float().log_softmax(-1)
            steered_logits = run(loaded, ids, last_logits_only=True, edits=[(target, add)]).logits
            steered = steered_logits[0, -1].float().log_softmax(-1)
        change += float((steered[target_ids] - base[target_ids]).mean())
    return change / len(prompts)
