"""Statistics of a group of heads accumulated on the model's device, read by the host once.

``GroupStats`` takes a site's value viewed as ``[rows, groups, width]`` (``groups`` heads of
``width`` numbers each, or one group for a whole residual) and folds every group's moments,
extrema, near-zero count, per-row L2 norms and histogram into small ``[groups]`` tensors with
batched ops: no ``.item()``, no Python loop over heads or tokens, so the forward pass never
waits for an accelerator (on the CPU, where reading a flag waits for nothing, ``update`` reads
one: whether every value is finite, which lets it skip the passes that set inf/NaN aside).
``summaries`` copies the accumulators to the host once, at the end.

Moments, norms and bin indices are computed in float64 (the accumulators hold float64 too): a
float32 pass would be cheaper but its mean and std drift by ~1e-7 relative, and the statistics
promise float64 arithmetic over the model's values whatever its dtype (tests/test_dtypes.py).
The work runs in one pass of row chunks: each chunk is copied to float64 once and that copy
serves the moments, norms, near-zero count and histogram while it is still in cache. The
chunk and its scratch live in a ``Workspace`` of reusable buffers (shared by every
``GroupStats`` of one sweep), written with ``out=`` and in-place ops: a fresh multi-megabyte
buffer per hook call makes glibc's growing mmap threshold fragment the heap (hundreds of MB of
peak RSS over a sweep), and costs page faults besides. Moments are taken about a
shift and corrected exactly, then merged across calls with Pébay's pairwise formulas, so feeding a tensor in
pieces gives the same summary as feeding it whole.

Histograms stay exact. Each group's bins have a power-of-two width ``w`` and start at a
multiple of it, so a value's bin is ``floor(x / w) - low``: a power-of-two scaling and a floor,
both exact in float64. A call picks the narrowest such width that holds its own finite range;
merging two histograms picks the narrowest width that holds both ranges and is at least both
widths, and every old bin then falls inside exactly one new bin. The counts always equal the
full tensor's counts over the final edges, whatever order the pieces came in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.errors import GarageError

NEAR_ZERO = 1e-3  # |x| at or below this counts toward sparsity
# Widths never drop below 2^-RELATIVE_FLOOR of a group's largest |x|: bin indices then stay
# below 2^45, so every index, offset and edge is an exact float64 integer (or multiple of w).
RELATIVE_FLOOR = 45
F64 = torch.float64
# numbers per row chunk of the per-call scratch work: big enough that the ops stay few, small
# enough (2 MB of float64) that the scratch stays out of the way of the heap
CHUNK = 1 << 18


def check_bins(bins: int) -> int:
    """``bins`` if it is a usable histogram size (even, ≥ 2, within the limit), else a GarageError."""
    if bins < 2 or bins % 2:
        raise GarageError(f"histogram bins must be an even number ≥ 2, got {bins}")
    from engine.limits import MAX_BINS, check_count

    check_count(bins, "histogram bins", MAX_BINS)  # before the counts are allocated
    return bins


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


@dataclass
class _Moments:
    """Per-group count (shared, a host int), mean and central moment sums M2..M4 (float64)."""

    count: int
    mean: Tensor
    m2: Tensor
    m3: Tensor
    m4: Tensor

    def merge(self, other: _Moments) -> _Moments:
        """Pébay's pairwise merge: the moments of both streams together."""
        na, nb = float(self.count), float(other.count)  # floats: na·nb·(na² …) overflows an int64
        n = na + nb
        delta = other.mean - self.mean
        d_n = delta / n
        m2 = self.m2 + other.m2 + delta * d_n * (na * nb)
        m3 = (self.m3 + other.m3 + delta * d_n * d_n * (na * nb * (na - nb))
              + 3.0 * d_n * (na * other.m2 - nb * self.m2))
        m4 = (self.m4 + other.m4 + delta * d_n ** 3 * (na * nb * (na * na - na * nb + nb * nb))
              + 6.0 * d_n * d_n * (na * na * other.m2 + nb * nb * self.m2)
              + 4.0 * d_n * (na * other.m3 - nb * self.m3))
        return _Moments(self.count + other.count, self.mean + d_n * nb, m2, m3, m4)


class Workspace:
    """Reusable flat buffers, one per (role, dtype, device), grown when a bigger value comes.

    ``take`` hands out a contiguous view of the first ``numel`` elements, so one buffer serves
    every site of a sweep. Safe to share while updates run one after another (hooks of one
    forward do); two updates in flight at once need two workspaces.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    def take(self, role: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> Tensor:
        """A ``shape`` view of the ``role`` buffer; its contents are whatever was left there."""
        numel = math.prod(shape)
        key = (role, dtype, device)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self.buffers.pop(key, None)  # drop the old one first: both need not live at once
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[key] = buffer
        return buffer[:numel].view(shape)


def _row_chunks(values: Tensor) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``CHUNK`` numbers each (at least one row)."""
    rows, groups, width = values.shape
    step = max(1, CHUNK // max(1, groups * width))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _from_sums(count: int, shift: Tensor, s1: Tensor, s2: Tensor, s3: Tensor, s4: Tensor) -> _Moments:
    """Moments from the power sums of ``x - shift`` per group, corrected exactly for the shift."""
    delta = s1 / count  # the true mean minus the shift
    m2 = s2 - count * delta * delta
    m3 = s3 - 3.0 * delta * s2 + 2.0 * count * delta ** 3
    m4 = s4 - 4.0 * delta * s3 + 6.0 * delta * delta * s2 - 3.0 * count * delta ** 4
    return _Moments(count, shift.reshape(-1) + delta, m2, m3, m4)


def _moments_of_rows(values: Tensor) -> _Moments:
    """Moments of ``values`` (``[rows, groups]``, float64) per group, over rows."""
    shift = values.mean(0)
    d = values - shift
    d2 = torch.square(d)
    return _from_sums(values.shape[0], shift, d.sum(0), d2.sum(0), (d * d2).sum(0), d2.square_().sum(0))


def _finite_extremes(raw: Tensor, workspace: Workspace) -> tuple[Tensor, Tensor]:
    """Per group, the least and greatest finite value of ``raw`` (inf/NaN have no bin), as float64;
    ``low > high`` for a group with none. Exact in ``raw``'s own dtype."""
    lows, highs = [], []
    for start, stop in _row_chunks(raw):
        part = raw[start:stop]
        masked = workspace.take("masked", part.shape, raw.dtype, raw.device)
        lows.append(torch.nan_to_num(part, nan=math.inf, neginf=math.inf, out=masked).amin((0, 2)))
        highs.append(torch.nan_to_num(part, nan=-math.inf, posinf=-math.inf, out=masked).amax((0, 2)))
    return torch.stack(lows).amin(0).to(F64), torch.stack(highs).amax(0).to(F64)


def _width_for(low: Tensor, high: Tensor, bins: int, at_least: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per group: the narrowest power-of-two width (≥ ``at_least``) whose ``bins`` aligned bins
    hold ``[low, high]``, and the first bin's index (``floor(low / width)``)."""
    # a floor of 2^-900, not less: a subnormal width would make 1/width inf and an all-zero group's 0·inf NaN
    absmax = torch.maximum(low.abs(), high.abs()).clamp_min(2.0 ** -900)
    floor = torch.exp2(torch.ceil(torch.log2(absmax)) - RELATIVE_FLOOR)
    width = torch.maximum(torch.exp2(torch.ceil(torch.log2((high - low) / bins))), floor)
    if at_least is not None:
        width = torch.maximum(width, at_least)
    for _ in range(2):  # a rounding hair or the alignment can need one or two doublings
        width = torch.where(torch.floor(high / width) - torch.floor(low / width) >= bins, 2 * width, width)
    return width, torch.floor(low / width)


class _Histogram:
    """One call's bin counts per group over the finite range ``[low, high]``, filled a chunk at a time."""

    def __init__(self, low: Tensor, high: Tensor, bins: int, device: torch.device) -> None:
        groups = low.shape[0]
        empty = low > high  # a group with no finite value
        self.width, self.first = _width_for(torch.where(empty, 0.0, low), torch.where(empty, 0.0, high), bins)
        # slot of x in group g: base_g + floor(x / w_g) - first_g, base_g = 1 + g (bins + 2); every
        # finite value lands inside its group's bins by construction, and what has no bin goes
        # to a slot that is dropped: NaN and -inf to slot 0, +inf to the last one
        base = torch.arange(groups, device=device, dtype=F64) * (bins + 2) + 1
        self.scale = (1.0 / self.width).view(1, groups, 1)
        self.offset = (self.first - base).view(1, groups, 1)
        self.bins, self.groups = bins, groups
        self.slots = torch.zeros(groups * (bins + 2), dtype=torch.int64, device=device)

    def add(self, part: Tensor, workspace: Workspace, clean: bool) -> None:
        """Count ``part`` (float64, a copy this overwrites); ``clean``: every value is finite."""
        # floor before shifting: both terms are then exact integers, so the shift is exact too
        index = part.mul_(self.scale).floor_().sub_(self.offset)
        if not clean:
            index.nan_to_num_(nan=0.0, posinf=float(self.slots.numel() - 1), neginf=0.0)
        # int32 slots (fewer bytes to write than int64; groups·(bins+2) is far below 2^31)
        slot_of = workspace.take("slot_of", (index.numel(),), torch.int32, index.device)
        slot_of.copy_(index.reshape(-1))  # floored: exact
        if index.device.type == "cpu":
            self.slots += torch.bincount(slot_of, minlength=self.slots.numel())
        else:
            # a fixed-size accumulate, not bincount: bincount sizes its output from the data's
            # max, which on an accelerator waits for the device
            self.slots.index_add_(0, slot_of, self.slots.new_ones(()).expand(slot_of.numel()))

    def counts(self) -> Tensor:
        return self.slots.view(self.groups, self.bins + 2)[:, 1:self.bins + 1]


class GroupStats:
    """Running statistics of ``groups`` groups of one site, kept as tensors on its device."""

    def __init__(self, groups: int, bins: int = 64, *, near_zero: float = NEAR_ZERO,
                 workspace: Workspace | None = None) -> None:
        """``workspace``: scratch buffers to share with other groups updated one at a time
        (one sweep's hooks); a private one when not given."""
        self.groups = groups
        self.workspace = workspace if workspace is not None else Workspace()
        self.bins = check_bins(bins)
        self.near_zero = near_zero
        self.width = 0
        self.moments: _Moments | None = None
        self.norms: _Moments | None = None  # only mean and M2 are read
        self.state: dict[str, Tensor] = {}

    def update(self, grouped: Tensor) -> None:
        """Fold ``grouped`` (``[rows, groups, width]``) in, without waiting for an accelerator."""
        raw = grouped.detach()
        if raw.numel() == 0:
            return
        rows, groups, width = raw.shape
        self.width = width
        dims = (0, 2)
        workspace, device = self.workspace, raw.device
        low, high = raw.amin(dims), raw.amax(dims)  # exact in any dtype; NaN if a NaN is there
        # on the CPU reading a flag costs no wait: when every value is finite (the usual case) the
        # extremes place the histogram and no value needs a dropped slot, so two passes go
        finite = device.type == "cpu" and bool(torch.isfinite(low).all() & torch.isfinite(high).all())
        if finite:
            finite_low, finite_high = low.to(F64), high.to(F64)
        else:
            finite_low, finite_high = _finite_extremes(raw, workspace)
        # any shift near the mean keeps the moment sums small; taken in float64 as it reads
        shift = raw.mean(dims, keepdim=True, dtype=F64)
        hist = _Histogram(finite_low, finite_high, self.bins, device)
        row_sums = workspace.take("row_sums", (4, rows, groups), F64, device)
        norms = torch.empty(rows, groups, dtype=F64, device=device)  # each token's vector per group
        near = torch.zeros(groups, dtype=F64, device=device)
        # one pass of small, cache-sized chunks: each chunk's float64 copy serves every statistic
        for start, stop in _row_chunks(raw):
            shape = (stop - start, groups, width)
            part = workspace.take("values", shape, F64, device).copy_(raw[start:stop])
            d = torch.sub(part, shift, out=workspace.take("d", shape, F64, device))
            d2 = torch.square(d, out=workspace.take("d2", shape, F64, device))
            torch.sum(d, -1, out=row_sums[0, start:stop])
            torch.sum(d2, -1, out=row_sums[1, start:stop])
            torch.sum(d.mul_(d2), -1, out=row_sums[2, start:stop])
            torch.sum(d2.square_(), -1, out=row_sums[3, start:stop])
            torch.linalg.vector_norm(part, dim=-1, out=norms[start:stop])
            # 1.0 where |x| ≤ near_zero, summed in float64: exact counts, and no bool pass to widen
            near += torch.abs(part, out=d).le_(self.near_zero).sum(dims)
            hist.add(part, workspace, clean=finite)  # last: it overwrites part
        chunk = {
            "low": low, "high": high, "finite_low": finite_low, "finite_high": finite_high,
            "near_zero": near, "norm_low": norms.amin(0), "norm_high": norms.amax(0),
            "hist_width": hist.width, "hist_first": hist.first, "hist_counts": hist.counts(),
        }
        moments = _from_sums(rows * width, shift, *(row_sums[k].sum(0) for k in range(4)))
        norm_moments = _moments_of_rows(norms)
        if self.moments is None or self.norms is None:
            self.moments, self.norms, self.state = moments, norm_moments, chunk
            return
        self.moments = self.moments.merge(moments)
        self.norms = self.norms.merge(norm_moments)
        self.state = self._merged(self.state, chunk)

    def _merged(self, a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
        low = torch.minimum(a["finite_low"], b["finite_low"])
        high = torch.maximum(a["finite_high"], b["finite_high"])
        empty = low > high
        width, first = _width_for(torch.where(empty, 0.0, low), torch.where(empty, 0.0, high), self.bins,
                                  torch.maximum(a["hist_width"], b["hist_width"]))
        counts = torch.zeros_like(a["hist_counts"])
        steps = torch.arange(self.bins, device=width.device, dtype=F64)
        for part in (a, b):
            # each old bin starts at (first + k) w_old and lies inside new bin floor(start / w_new)
            ratio = (width / part["hist_width"]).unsqueeze(1)
            index = torch.floor((part["hist_first"].unsqueeze(1) + steps) / ratio) - first.unsqueeze(1)
            counts.scatter_add_(1, index.clamp_(0, self.bins - 1).long(), part["hist_counts"])
        return {
            "low": torch.minimum(a["low"], b["low"]), "high": torch.maximum(a["high"], b["high"]),
            "finite_low": low, "finite_high": high, "near_zero": a["near_zero"] + b["near_zero"],
            "norm_low": torch.minimum(a["norm_low"], b["norm_low"]),
            "norm_high": torch.maximum(a["norm_high"], b["norm_high"]),
            "hist_width": width, "hist_first": first, "hist_counts": counts,
        }

    def summaries(self, names: Mapping[int, str]) -> dict[str, StatsSummary]:
        """The summary of each group named in ``names`` (``{group: address}``), read from the
        device in one copy."""
        if self.moments is None or self.norms is None:  # nothing streamed in
            zero_norms = {"mean": 0.0, "std": 0.0, "count": 0, "min": 0.0, "max": 0.0}
            return {address: StatsSummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, dict(zero_norms), [0] * self.bins,
                                          [0.0] * (self.bins + 1), address, self.width) for address in names.values()}
        m, norms, s = self.moments, self.norms, self.state
        floats = torch.stack([m.mean, m.m2, m.m3, m.m4, norms.mean, norms.m2, s["low"].to(F64), s["high"].to(F64),
                              s["near_zero"].to(F64), s["norm_low"].to(F64), s["norm_high"].to(F64),
                              s["hist_width"], s["hist_first"]], dim=1).cpu().tolist()
        counts = s["hist_counts"].cpu().tolist()
        return {address: self._summary(address, floats[g], counts[g], m.count, norms.count)
                for g, address in names.items()}

    def _summary(self, address: str, row: list[float], counts: list[int], n: int, rows: int) -> StatsSummary:
        mean, m2, _m3, m4, norm_mean, norm_m2, low, high, near_zero, norm_low, norm_high, width, first = row
        kurtosis = n * m4 / (m2 * m2) - 3.0 if m2 > 0 else 0.0
        return StatsSummary(
            count=n, mean=mean, std=_sqrt(m2 / n), rms=_sqrt((m2 + n * mean * mean) / n),
            min=low, max=high, absmax=max(abs(low), abs(high)), sparsity=near_zero / n, kurtosis=kurtosis,
            token_l2={"mean": norm_mean, "std": _sqrt(norm_m2 / rows), "count": rows,
                      "min": norm_low, "max": norm_high},
            hist_counts=[int(c) for c in counts], hist_edges=[(first + k) * width for k in range(self.bins + 1)],
            address=address, width=self.width,
        )


def _sqrt(value: float) -> float:
    """Square root that passes inf/NaN through and reads a rounding-negative variance as 0."""
    return math.sqrt(value) if value >= 0 else (value if math.isnan(value) else 0.0)
