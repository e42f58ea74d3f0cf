"""Merging streaming-statistics updates: many updates' numbers folded into one total at once.

An update of ``engine.stats_device.GroupStats`` leaves a ``Partial``: one float64 row per group
(power sums about a shift, norm moments, extrema, the near-zero count, the histogram's width and
first bin) and its histogram counts. Merging is deferred: partials queue up and ``fold`` merges
all of them, and the total so far, in a handful of batched ops over ``[updates, groups]``
tensors, instead of some hundred tiny ops per update inside the forward pass. Nothing here reads
a value on the host, so a fold on an accelerator never waits for it.

The moments of the pieces combine about the common mean (for each piece ``k``, ``δ = mean_k -
mean``: ``M2 = Σ M2_k + n_k δ²``, ``M3 = Σ M3_k + 3δ M2_k + n_k δ³``, ``M4 = Σ M4_k + 4δ M3_k
+ 6δ² M2_k + n_k δ⁴``), the multi-piece form of Pébay's pairwise formulas. Histograms merge
onto the narrowest power-of-two width that holds every piece's range and is at least every
piece's width; each old bin then falls inside exactly one new bin, so the counts equal the full
stream's counts over the final edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy
import torch
from torch import Tensor

F64 = torch.float64
# Widths never drop below 2^-RELATIVE_FLOOR of a group's largest |x|: bin indices then stay
# below 2^45, so every index, offset and edge is an exact float64 integer (or multiple of w).
RELATIVE_FLOOR = 45

# the columns of a partial's float rows, in order (``Partial.pack``)
PARTIAL = ("count", "rows", "shift", "s1", "norm_mean", "norm_m2", "low", "high", "finite_low", "finite_high",
           "near_zero", "norm_low", "norm_high", "hist_width", "hist_first", "s2", "s3", "s3_again", "s4")
# the columns of the total's float rows: the power sums are moments about the mean by then
TOTAL = ("count", "rows", "mean", "m2", "m3", "m4", "norm_mean", "norm_m2", "low", "high", "finite_low",
         "finite_high", "near_zero", "norm_low", "norm_high", "hist_width", "hist_first")


def width_for(low: Any, high: Any, bins: int, at_least: Any = None, xp: Any = torch) -> tuple[Any, Any]:
    """Per group: the narrowest power-of-two width (≥ ``at_least``) whose ``bins`` aligned bins
    hold ``[low, high]``, and the first bin's index (``floor(low / width)``). ``xp`` is the array
    module of the arguments: torch (on any device), or numpy for host math on CPU values (the
    same IEEE float64 operations; its warnings for NaN, inf and zero ranges are silenced)."""
    with numpy.errstate(all="ignore"):
        # a floor of 2^-900, not less: a subnormal width would make 1/width inf and an all-zero group's 0·inf NaN
        absmax = xp.maximum(xp.abs(low), xp.abs(high))
        absmax = absmax.clamp_min(2.0 ** -900) if xp is torch else numpy.maximum(absmax, 2.0 ** -900)
        floor = xp.exp2(xp.ceil(xp.log2(absmax)) - RELATIVE_FLOOR)
        width = xp.maximum(xp.exp2(xp.ceil(xp.log2((high - low) / bins))), floor)
        if at_least is not None:
            width = xp.maximum(width, at_least)
        # a rounding hair or the alignment can need a doubling: floor(high/w) - floor(low/w) < range/w + 1
        # ≤ bins·(1 + 1e-15) + 1, so after one doubling it is < bins/2 + 1 + 1e-15 ≤ bins - 1 for bins ≥ 4
        for _ in range(1 if bins >= 4 else 2):
            width = xp.where(xp.floor(high / width) - xp.floor(low / width) >= bins, 2 * width, width)
        return width, xp.floor(low / width)


@dataclass
class Partial:
    """One update's numbers per group, not yet merged: ``floats`` ``[groups, len(PARTIAL)]``
    (float64, counts included so a fold needs nothing from the host) and ``counts`` ``[groups, bins]``."""

    count: int  # numbers per group
    rows: int
    floats: Tensor
    counts: Tensor

    @staticmethod
    def pack(count: int, rows: int, grams: Tensor, columns: list[Tensor], counts: Tensor) -> Partial:
        """``columns``: ``shift`` … ``hist_first`` as ``[groups]`` float64 tensors; ``grams``
        ``[groups, 2, 2]``: Σd², Σd³ (twice) and Σd⁴ of ``d = x - shift``."""
        # the sizes filled on the device: a host list copied to an accelerator would wait for it
        sizes = [columns[0].new_full(columns[0].shape, float(size)) for size in (count, rows)]
        floats = torch.cat([torch.stack([*sizes, *columns], 1), grams.reshape(-1, 4)], 1)
        return Partial(count, rows, floats, counts)


@dataclass
class Total:
    """Everything folded so far: ``floats`` ``[groups, len(TOTAL)]`` (float64) and ``counts``."""

    count: int
    rows: int
    floats: Tensor
    counts: Tensor


def fold(total: Total | None, pending: list[Partial], bins: int) -> Total:
    """The total of ``total`` (if any) and every partial in ``pending``."""
    return fold_many([(total, pending)], bins)[0]


def fold_many(accumulators: list[tuple[Total | None, list[Partial]]], bins: int) -> list[Total]:
    """Each accumulator's new total (``(total or None, pending)``, at least one update pending, all
    with ``bins`` bins, on one device), folded together: accumulators with as many pending updates, and a total or none
    alike, share one set of batched ops along the groups axis (a sweep's sites fold at once)."""
    buckets: dict[tuple[int, bool], list[int]] = {}
    for index, (total, pending) in enumerate(accumulators):
        buckets.setdefault((len(pending), total is not None), []).append(index)
    folded: list[Total | None] = [None] * len(accumulators)
    for (pieces, _), members in buckets.items():
        # [pieces · groups of every member, columns], piece-major, then viewed [pieces, groups, columns]
        floats = torch.cat([accumulators[m][1][k].floats for k in range(pieces) for m in members])
        counts = torch.cat([accumulators[m][1][k].counts for k in range(pieces) for m in members])
        groups = floats.shape[0] // pieces
        moments = _moment_form(floats.view(pieces, groups, -1).unbind(-1))
        counts = counts.view(pieces, groups, bins)
        totals = [total for total in (accumulators[m][0] for m in members) if total is not None]
        if totals:  # the bucket's members all have one
            moments = torch.cat([torch.cat([total.floats for total in totals]).unsqueeze(0), moments])
            counts = torch.cat([torch.cat([total.counts for total in totals]).unsqueeze(0), counts])
        if moments.shape[0] == 1:  # one update alone is its own total
            merged, merged_counts = moments[0], counts[0]
        else:
            merged, merged_counts = _combined(moments.unbind(-1), bins, counts)
        start = 0
        for m in members:
            total, pending = accumulators[m]
            size = pending[0].floats.shape[0]
            folded[m] = Total((total.count if total else 0) + sum(part.count for part in pending),
                              (total.rows if total else 0) + sum(part.rows for part in pending),
                              merged[start:start + size], merged_counts[start:start + size])
            start += size
    return [total for total in folded if total is not None]


def _moment_form(p: tuple[Tensor, ...]) -> Tensor:
    """``[pieces, groups, len(TOTAL)]`` from the pieces' partial columns (``PARTIAL``)."""
    n, rows, shift, s1, norm_mean, norm_m2, low, high, finite_low, finite_high, near, norm_low, norm_high, \
        width, first, s2, s3, _, s4 = p
    delta = s1 / n  # each piece's mean minus its shift: its power sums, corrected exactly for the shift
    return torch.stack([n, rows, shift + delta, s2 - n * delta * delta,
                        s3 - 3.0 * delta * s2 + 2.0 * n * delta ** 3,
                        s4 - 4.0 * delta * s3 + 6.0 * delta * delta * s2 - 3.0 * n * delta ** 4,
                        norm_mean, norm_m2, low, high, finite_low, finite_high, near, norm_low, norm_high,
                        width, first], -1)


def _combined(c: tuple[Tensor, ...], bins: int, counts: Tensor) -> tuple[Tensor, Tensor]:
    """One total row per group from the pieces' columns (``TOTAL``, each ``[pieces, groups]``)."""
    n, rows, mean, m2, m3, m4, norm_mean, norm_m2, low, high, finite_low, finite_high, near, norm_low, norm_high, \
        width, first = c
    count = n.sum(0)
    common = (n * mean).sum(0) / count
    d = mean - common
    n_rows = rows.sum(0)
    norm_common = (rows * norm_mean).sum(0) / n_rows
    dn = norm_mean - norm_common
    finite_low, finite_high = finite_low.amin(0), finite_high.amax(0)
    new_width, new_first, merged = _rebinned(finite_low, finite_high, width, first, counts, bins)
    floats = torch.stack([
        count, n_rows, common, (m2 + n * d * d).sum(0), (m3 + 3.0 * d * m2 + n * d ** 3).sum(0),
        (m4 + 4.0 * d * m3 + 6.0 * d * d * m2 + n * d ** 4).sum(0),
        norm_common, (norm_m2 + rows * dn * dn).sum(0), low.amin(0), high.amax(0), finite_low, finite_high,
        near.sum(0), norm_low.amin(0), norm_high.amax(0), new_width, new_first], -1)
    return floats, merged


def _rebinned(low: Tensor, high: Tensor, widths: Tensor, firsts: Tensor, counts: Tensor,
              bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """The merged histogram's width, first bin and counts ``[groups, bins]`` over the finite range
    ``[low, high]`` (``low > high`` for a group with no finite value), from every piece's."""
    empty = low > high
    width, first = width_for(torch.where(empty, 0.0, low), torch.where(empty, 0.0, high), bins, widths.amax(0))
    pieces, groups = widths.shape
    steps = torch.arange(bins, device=width.device, dtype=F64)
    # each old bin starts at (first + k) w_old and lies inside new bin floor(start / w_new)
    ratio = (width / widths).unsqueeze(-1)
    index = torch.floor((firsts.unsqueeze(-1) + steps) / ratio) - first.view(1, groups, 1)
    merged = torch.zeros(groups, bins, dtype=counts.dtype, device=counts.device)
    merged.scatter_add_(1, index.clamp_(0, bins - 1).long().transpose(0, 1).reshape(groups, pieces * bins),
                        counts.transpose(0, 1).reshape(groups, pieces * bins))
    return width, first, merged
