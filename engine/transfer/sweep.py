"""The layer sweep: a ridge stitch for every k-th layer of A against every k-th of B, one R² each.

One forward pass of each model per chunk captures all the swept layers at once; each layer pair
keeps only its float64 moments, so memory grows with the number of pairs, not with the text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from engine.progress import Progress, check_cancel, notify
from engine.transfer.pairs import PairBatch, TextSplit, TransferError, paired_chunk, pairing_for, without_sinks
from engine.transfer.stitch import Moments, accumulate, fit_ridge

__all__ = ["LayerSweep", "chunk_pairs", "sweep_layers"]


@dataclass
class LayerSweep:
    """Held-out R² of a ridge stitch from ``layers_a[i]`` to ``layers_b[j]`` as ``r2[i][j]`` (the heat map)."""

    layers_a: list[int]
    layers_b: list[int]
    r2: list[list[float]]
    cosine: list[list[float]]
    alignment: str
    text_digest: str

    def best(self) -> tuple[int, int, float]:
        """The layer pair with the highest R², as ``(layer_a, layer_b, r2)``."""
        score, i, j = max((value, i, j) for i, row in enumerate(self.r2) for j, value in enumerate(row))
        return self.layers_a[i], self.layers_b[j], score


def chunk_pairs(loaded_a, loaded_b, layers_a: list[int], layers_b: list[int], chunks: list[str], pairing,
                cancel: threading.Event | None = None, progress: Progress | None = None, stage: str = "pairing",
                keep_sinks: bool = False) -> Iterator[dict[tuple[int, int], PairBatch]]:
    """Per chunk, one ``PairBatch`` for every layer pair (sinks left out as ``pair_batches`` does,
    unless ``keep_sinks``), from one forward pass of each model that captures all the layers."""
    from engine.run import run

    for index, chunk in enumerate(chunks):
        check_cancel(cancel, "the layer sweep")
        notify(progress, stage, index / max(len(chunks), 1))
        ids_a, ids_b, positions_a, positions_b = paired_chunk(loaded_a, loaded_b, chunk, pairing)
        if not positions_a:
            continue
        with torch.no_grad():
            tap_a = run(loaded_a, ids_a.to(loaded_a.input_device), capture=[f"L{i}.out" for i in layers_a],
                        cancel=cancel, stop_after_capture=True, last_logits_only=True).tap
            tap_b = run(loaded_b, ids_b.to(loaded_b.input_device), capture=[f"L{j}.out" for j in layers_b],
                        cancel=cancel, stop_after_capture=True, last_logits_only=True).tap
        index_a, index_b = torch.tensor(positions_a), torch.tensor(positions_b)
        rows_a = {i: tap_a[f"L{i}.out"][0, index_a].float().cpu() for i in layers_a}
        rows_b = {j: tap_b[f"L{j}.out"][0, index_b].float().cpu() for j in layers_b}
        keep = (lambda batch: batch) if keep_sinks else without_sinks
        yield {(i, j): keep(PairBatch(rows_a[i], rows_b[j], ids_a, ids_b, index_a, index_b))
               for i in layers_a for j in layers_b}


def sweep_layers(loaded_a, loaded_b, text: TextSplit, *, every_a: int = 5, every_b: int = 5, ridge: float = 1e-6,
                 cancel: threading.Event | None = None, progress: Progress | None = None) -> LayerSweep:
    """Fit and score a ridge stitch for every ``every_a``-th layer of A against every ``every_b``-th of B."""
    layers_a = list(range(0, loaded_a.anatomy.n_layers, every_a))
    layers_b = list(range(0, loaded_b.anatomy.n_layers, every_b))
    pairing = pairing_for(loaded_a.tokenizer, loaded_b.tokenizer, text.train[0])
    moments: dict[tuple[int, int], Moments] = {}
    for batches in chunk_pairs(loaded_a, loaded_b, layers_a, layers_b, text.train, pairing, cancel, progress,
                               "sweep: fitting"):
        for pair, batch in batches.items():
            if batch.x.shape[0] == 0:
                continue
            step = accumulate([batch], minimum=1)
            if pair in moments:
                moments[pair].add(step)
            else:
                moments[pair] = step
    if not moments:
        raise TransferError("the sweep's training text gave no paired positions; pass more text or a longer file")
    stitches = {pair: fit_ridge(m, ridge) for pair, m in moments.items()}
    # held-out scoring keeps sums per pair only (SSE, cosine sum, Σy, Σy²), never the rows
    sums: dict[tuple[int, int], list[Any]] = {pair: [0, 0.0, 0.0, None, 0.0] for pair in stitches}
    for batches in chunk_pairs(loaded_a, loaded_b, layers_a, layers_b, text.held_out, pairing, cancel, progress,
                               "sweep: scoring"):
        for pair, stitch in stitches.items():
            mapped, true = stitch.apply(batches[pair].x).double(), batches[pair].y.double()
            entry = sums[pair]
            entry[0] += true.shape[0]
            entry[1] += float(((mapped - true) ** 2).sum())
            entry[2] += float(torch.nn.functional.cosine_similarity(mapped, true, dim=-1).sum())
            entry[3] = true.sum(0) if entry[3] is None else entry[3] + true.sum(0)
            entry[4] += float((true ** 2).sum())
    r2: list[list[float]] = []
    cosine: list[list[float]] = []
    for i in layers_a:
        r2.append([])
        cosine.append([])
        for j in layers_b:
            count, sse, cosine_sum, sum_y, sum_yy = sums.get((i, j), [0, 0.0, 0.0, None, 0.0])
            if not count:
                r2[-1].append(float("nan"))
                cosine[-1].append(float("nan"))
                continue
            sst = sum_yy - float((sum_y ** 2).sum()) / count
            r2[-1].append(1.0 - sse / sst)
            cosine[-1].append(cosine_sum / count)
    notify(progress, "sweep: scoring", 1.0)
    return LayerSweep(layers_a, layers_b, r2, cosine, pairing.rule, text.digest)
