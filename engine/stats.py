"""Streaming activation statistics: summaries computed inside the forward pass.

A ``StreamingStats`` keeps a fixed handful of numbers per address (moments, extrema, a
fixed-bin histogram, per-token L2 norm moments), never the activation itself, so statistics
for every layer and head of a model cost O(addresses × bins) memory whatever the prompt length.
Moments are merged with Pébay's pairwise formulas in float64, so feeding a tensor in pieces
gives the same summary as feeding it whole.

The histogram keeps ``bins`` bins of a power-of-two width starting at a multiple of that width;
when a value falls outside, the width doubles and neighbouring bins merge. Such edges are exact
in floating point and each doubling's edges are a subset of the old ones, so streamed counts
equal counts over the full tensor.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.progress import Progress, scaled

NEAR_ZERO = 1e-3  # |x| at or below this counts toward sparsity


@dataclass
class _Moments:
    """Count, mean and central moment sums M2..M4 of a stream of numbers (float64)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0

    @staticmethod
    def of(values: Tensor) -> _Moments:
        x = values.reshape(-1).double()  # a no-op when already float64
        n = x.numel()
        if n == 0:
            return _Moments()
        mean = x.mean()
        d = x - mean
        d2 = d * d
        return _Moments(n, float(mean), float(d2.sum()), float((d2 * d).sum()), float((d2 * d2).sum()))

    def merge(self, other: _Moments) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2, self.m3, self.m4 = (
                other.count, other.mean, other.m2, other.m3, other.m4)
            return
        na, nb = self.count, other.count
        n = na + nb
        delta = other.mean - self.mean
        d_n = delta / n
        m2 = self.m2 + other.m2 + delta * d_n * na * nb
        m3 = (self.m3 + other.m3 + delta * d_n * d_n * na * nb * (na - nb)
              + 3.0 * d_n * (na * other.m2 - nb * self.m2))
        m4 = (self.m4 + other.m4 + delta * d_n ** 3 * na * nb * (na * na - na * nb + nb * nb)
              + 6.0 * d_n * d_n * (na * na * other.m2 + nb * nb * self.m2)
              + 4.0 * d_n * (na * other.m3 - nb * self.m3))
        self.count, self.mean, self.m2, self.m3, self.m4 = n, self.mean + d_n * nb, m2, m3, m4

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else 0.0


class _DoublingHistogram:
    """``bins`` bins of width 2^k from a multiple of that width; grows by doubling the width."""

    def __init__(self, bins: int) -> None:
        if bins < 2 or bins % 2:
            raise GarageError(f"histogram bins must be an even number ≥ 2, got {bins}")
        from engine.limits import MAX_BINS, check_count

        check_count(bins, "histogram bins", MAX_BINS)  # before the counts are allocated
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.int64)
        self.low: float | None = None
        self.width = 0.0

    @property
    def high(self) -> float:
        return (self.low or 0.0) + self.bins * self.width

    def _double(self, downward: bool) -> None:
        assert self.low is not None
        wider = 2.0 * self.width
        # in units of the old width (exact: low is a multiple of that power of two); the new low
        # can be any even unit in [n - bins, n], so growing down takes the lowest, else a low of 0
        # would stay 0 forever and never reach x < 0
        n = round(self.low / self.width)
        new_n = -((self.bins - n) // 2) if downward else n // 2
        new_low = new_n * wider
        merged = torch.zeros_like(self.counts)
        index = torch.tensor([(n + k - 2 * new_n) // 2 for k in range(self.bins)])
        merged.index_add_(0, index, self.counts)
        self.counts, self.low, self.width = merged, new_low, wider

    def update(self, values: Tensor, lowest: float, highest: float) -> None:
        if self.low is None:
            span = max(highest - lowest, 1e-30)
            self.width = 2.0 ** math.ceil(math.log2(span / self.bins))
            self.low = math.floor(lowest / self.width) * self.width
        while lowest < self.low or highest >= self.high:
            self._double(lowest < self.low)
        # compare against the edges rather than dividing: (x - low) / width rounds tiny values
        # onto the next edge, while edge comparisons stay exact and nest under doubling
        edges = torch.tensor(self.edges(), dtype=torch.float64)
        index = torch.searchsorted(edges, values.reshape(-1).to(torch.float64), right=True) - 1
        index.clamp_(0, self.bins - 1)
        self.counts += torch.bincount(index, minlength=self.bins)

    def edges(self) -> list[float]:
        low = self.low or 0.0
        return [low + k * self.width for k in range(self.bins + 1)]


@dataclass
class StatsSummary:
    """One address's statistics over everything streamed into it."""

    count: int
    mean: float
    std: float  # population standard deviation
    rms: float
    min: float
    max: float
    absmax: float
    sparsity: float  # fraction of values with |x| ≤ NEAR_ZERO
    kurtosis: float  # excess kurtosis: 0 for a Gaussian, large for heavy-tailed activations
    token_l2: dict[str, float]  # per-token (last-dim vector) L2 norms: mean, std, min, max, count
    hist_counts: list[int] = field(default_factory=list)
    hist_edges: list[float] = field(default_factory=list)
    address: str = ""
    width: int = 0  # size of the last dimension (hidden, d_head, or key positions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address, "count": self.count, "width": self.width,
            "mean": self.mean, "std": self.std, "rms": self.rms, "min": self.min, "max": self.max,
            "absmax": self.absmax, "sparsity": self.sparsity, "kurtosis": self.kurtosis,
            "token_l2": dict(self.token_l2),
            "histogram": {"counts": list(self.hist_counts), "edges": list(self.hist_edges)},
        }


class StreamingStats:
    """Accumulates statistics of tensors fed through ``update``; keeps O(bins) numbers."""

    def __init__(self, bins: int = 64, address: str = "", near_zero: float = NEAR_ZERO) -> None:
        self.address = address
        self.near_zero = near_zero
        self.moments = _Moments()
        self.sum_squares = 0.0
        self.lowest = math.inf
        self.highest = -math.inf
        self.near_zero_count = 0
        self.token_norms = _Moments()
        self.token_norm_min = math.inf
        self.token_norm_max = -math.inf
        self.width = 0
        self.histogram = _DoublingHistogram(bins)

    def update(self, tensor: Tensor) -> None:
        """Fold one activation ``[..., width]`` into the running statistics."""
        values = tensor.detach().double()  # one float64 copy of this site's value, freed on return
        if values.numel() == 0:
            return
        flat = values.reshape(-1)
        self.moments.merge(_Moments.of(flat))
        self.sum_squares += float(flat.square().sum())
        lowest, highest = float(flat.min()), float(flat.max())
        self.lowest, self.highest = min(self.lowest, lowest), max(self.highest, highest)
        self.near_zero_count += int((flat.abs() <= self.near_zero).sum())
        norms = values.norm(dim=-1).reshape(-1)
        self.token_norms.merge(_Moments.of(norms))
        self.token_norm_min = min(self.token_norm_min, float(norms.min()))
        self.token_norm_max = max(self.token_norm_max, float(norms.max()))
        self.width = values.shape[-1]
        # inf/NaN (an overflowing run) have no bin: they count in the moments, not the histogram
        finite = flat[torch.isfinite(flat)]
        if finite.numel():
            self.histogram.update(finite, float(finite.min()), float(finite.max()))

    def summary(self) -> StatsSummary:
        m = self.moments
        n = m.count
        variance = m.variance
        kurtosis = (n * m.m4 / (m.m2 * m.m2) - 3.0) if n and m.m2 > 0 else 0.0
        norms = self.token_norms
        return StatsSummary(
            count=n, mean=m.mean, std=math.sqrt(variance), rms=math.sqrt(self.sum_squares / n) if n else 0.0,
            min=self.lowest if n else 0.0, max=self.highest if n else 0.0,
            absmax=max(abs(self.lowest), abs(self.highest)) if n else 0.0,
            sparsity=self.near_zero_count / n if n else 0.0, kurtosis=kurtosis,
            token_l2={"mean": norms.mean, "std": math.sqrt(norms.variance), "count": norms.count,
                      "min": self.token_norm_min if norms.count else 0.0,
                      "max": self.token_norm_max if norms.count else 0.0},
            hist_counts=[int(c) for c in self.histogram.counts], hist_edges=self.histogram.edges(),
            address=self.address, width=self.width,
        )


def _id_batches(loaded: LoadedModel, prompt_or_ids: Any) -> list[Tensor]:
    """Accept a prompt, a list of prompts, or token ids ``[T]``/``[B, T]``; one batch per entry."""
    from engine.runner import encode

    if isinstance(prompt_or_ids, str):
        return [encode(loaded, prompt_or_ids)]
    if isinstance(prompt_or_ids, Tensor):
        ids = prompt_or_ids if prompt_or_ids.dim() == 2 else prompt_or_ids.unsqueeze(0)
        return [ids.to(loaded.input_device)]
    return [batch for item in prompt_or_ids for batch in _id_batches(loaded, item)]


def stream_stats(
    loaded: LoadedModel,
    prompt_or_ids: Any,
    addresses: Sequence[str],
    *,
    bins: int = 64,
    interventions: Sequence[Intervention] = (),
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> dict[str, StatsSummary]:
    """Statistics at each capture point, computed in the hooks while the model runs.

    ``prompt_or_ids`` is a prompt, a list of prompts, or token ids (``[B, T]`` runs as one
    batch). A head address (``L3.attn.h2.z``) gives that head's statistics. Keys are canonical.
    ``cancel`` stops the sweep at the next layer of the pass in flight.
    """
    from engine.addresses import resolve_point
    from engine.run import run

    canonical = list(dict.fromkeys(resolve_point(loaded.anatomy, a).address for a in addresses))
    accumulators = {address: StreamingStats(bins, address) for address in canonical}
    observers = {address: acc.update for address, acc in accumulators.items()}
    batches = _id_batches(loaded, prompt_or_ids)
    for index, ids in enumerate(batches):
        run(loaded, ids, interventions=interventions, observers=observers, last_logits_only=True, cancel=cancel,
            progress=scaled(progress, index / len(batches), (index + 1) / len(batches)))
    return {address: acc.summary() for address, acc in accumulators.items()}


def residual_norms(loaded: LoadedModel, prompt: str, interventions: Sequence[Intervention] = (), *,
                   cancel: threading.Event | None = None, progress: Progress | None = None) -> list[float]:
    """Mean per-token L2 norm of each layer's output residual, L0 … L{n-1} (for sparklines)."""
    addresses = [f"L{i}.out" for i in range(loaded.anatomy.n_layers)]
    summaries = stream_stats(loaded, prompt, addresses, bins=2, interventions=interventions, cancel=cancel,
                             progress=progress)
    return [summaries[address].token_l2["mean"] for address in addresses]


def every_layer_and_head(loaded: LoadedModel) -> list[str]:
    """Addresses for a full sweep: each layer's output and each head's ``z``."""
    n_heads = loaded.anatomy.geometry.n_heads if loaded.anatomy.geometry else 0
    addresses = []
    for layer in range(loaded.anatomy.n_layers):
        addresses.append(f"L{layer}.out")
        addresses.extend(f"L{layer}.attn.h{head}.z" for head in range(n_heads))
    return addresses
