"""One call that fits a stitch between two open models and measures it on held-out text."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from engine.progress import Progress, notify
from engine.transfer.evaluate import FitMetrics, LossRecovery, fit_metrics, loss_recovery
from engine.transfer.pairs import TextSplit, TransferError, pair_batches, pairing_for
from engine.transfer.stitch import KINDS, Stitch, accumulate, fit_ae, fit_lowrank, fit_ridge

__all__ = ["StitchReport", "fit_stitch"]


@dataclass
class StitchReport:
    """A fitted stitch with its held-out numbers and what it was fitted on."""

    stitch: Stitch
    address_a: str
    address_b: str
    alignment: str
    text_digest: str
    held_out: FitMetrics
    loss: LossRecovery | None  # None where A's and B's tokens do not coincide


def fit_stitch(loaded_a, loaded_b, address_a: str, address_b: str, text: TextSplit, *, kind: str = "ridge",
               ridge: float = 1e-6, rank: int = 64, hidden: int = 512, epochs: int = 2, loss_chunks: int = 4,
               cancel: threading.Event | None = None, progress: Progress | None = None) -> StitchReport:
    """Fit a ``kind`` stitch from A's ``address_a`` to B's ``address_b`` and measure it on held-out chunks."""
    from engine.addresses import resolve_point

    if kind not in KINDS:
        raise TransferError(f"unknown stitch kind '{kind}'; use one of: {', '.join(KINDS)}")
    address_a = resolve_point(loaded_a.anatomy, address_a).address
    address_b = resolve_point(loaded_b.anatomy, address_b).address
    pairing = pairing_for(loaded_a.tokenizer, loaded_b.tokenizer, text.train[0])

    def stream(chunks, stage):
        return pair_batches(loaded_a, loaded_b, address_a, address_b, chunks, pairing=pairing, cancel=cancel,
                            progress=progress, stage=stage)

    moments = accumulate(stream(text.train, "pairing the training text"))
    if kind == "ridge":
        stitch = fit_ridge(moments, ridge)
    elif kind == "lowrank":
        stitch = fit_lowrank(moments, rank, ridge)
    else:
        stitch = fit_ae(moments, lambda: stream(text.train, "training the ae map"), hidden=hidden, epochs=epochs,
                        cancel=cancel, progress=progress)
    metrics = fit_metrics(stitch, stream(text.held_out, "measuring on held-out text"))
    loss = None
    if pairing.same_tokens and loaded_b.is_causal_lm and loaded_a.is_causal_lm and loss_chunks > 0:
        notify(progress, "loss recovered", None)
        loss = loss_recovery(loaded_a, loaded_b, address_a, address_b, stitch, text.held_out[:loss_chunks],
                             moments.mean_y, cancel=cancel)
    return StitchReport(stitch, address_a, address_b, pairing.rule, text.digest, metrics, loss)
