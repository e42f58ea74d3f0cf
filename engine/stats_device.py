"""Statistics of a group of heads accumulated on the model's device, read by the host once.

``GroupStats`` takes a site's value viewed as ``[rows, groups, width]`` (``groups`` heads of
``width`` numbers each, or one group for a whole residual) and folds every group's moments,
extrema, near-zero count, per-row L2 norms and histogram into small ``[groups]`` tensors with
batched ops: no ``.item()``, no Python loop over heads or tokens, so the forward pass never
waits for an accelerator. On the CPU, where nothing waits, the histogram's placement is numpy
math on the extremes (a few dozen tiny torch ops cost more than the data passes of a small
value), which also tells whether the cheap float32 path below is exact for this value and
which of its scalings it can skip. ``summaries`` copies the totals to the host once, at the end.

Moments and norms are computed in float64 (the accumulators hold float64 too): a float32 pass
would be cheaper but its mean and std drift by ~1e-7 relative, and the statistics promise
float64 arithmetic over the model's values whatever its dtype (tests/test_dtypes.py). Each
row chunk is copied to float64 once, head-major (``[groups, blocks, 2, rows, width]``), with
``x - shift`` in the first plane and its square in the second; one batched matmul of each
block's two planes with themselves then gives Σd², Σd³ and Σd⁴ per group and block, so the
cube and fourth power are never written out. Every sum is taken per row (norms, Σd) or per
block of rows (the matmuls), and blocks have a fixed size that chunks never split, so how the
work is chunked never changes a bit of the result. The scratch lives in a ``Workspace`` of
reusable buffers (shared by every ``GroupStats`` of one sweep), written with ``out=`` and
in-place ops: a fresh multi-megabyte buffer per hook call makes glibc's growing mmap threshold
fragment the heap (hundreds of MB of peak RSS over a sweep), and costs page faults besides.
Moments are taken about a shift and corrected exactly when merged. An update leaves its sums
(``engine.stats_merge.Partial``) in a queue, and ``fold`` merges the queue into the total in a
few batched ops, every ``FOLD_AFTER`` updates and before ``summaries``: the merge's hundred-odd
tiny ops no longer run once per hook call. Feeding a tensor in pieces gives the same summary as
feeding it whole.

Histograms stay exact. Each group's bins have a power-of-two width ``w`` and start at a
multiple of it, so a value's bin is ``floor(x / w) - low``: a power-of-two scaling and a floor,
both exact. On the CPU, for float32 (bf16, fp16) values whose bin indices stay below 2^23,
that index is computed in float32 as ``floor(floor(x · a) · b)`` with ``a · b = 1 / w``, ``a ≥ 1``
and ``b ≤ 1`` powers of two: scaling up first never underflows (a tiny negative value keeps
its ``-1``), and ``floor(floor(y) / m) = floor(y / m)`` for whole ``m``. Anything else
(non-finite values, huge indices, float64 values, an accelerator) takes the float64 index.
A call picks the narrowest such width that holds its own finite range; merging histograms picks
the narrowest width that holds every range and is at least every width, and every old bin then
falls inside exactly one new bin. The counts always equal the full tensor's counts
over the final edges, whatever order the pieces came in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy
import torch
from torch import Tensor

from engine.errors import GarageError
from engine.stats_merge import F64, PARTIAL, TOTAL, Partial, Total, fold, fold_many, width_for

NEAR_ZERO = 1e-3  # |x| at or below this counts toward sparsity
F32 = torch.float32
# numbers per block of rows: every sum of the moments is taken over one block (or one row), so
# a block's size is fixed whatever the chunking; big enough that a block's matmul is efficient
BLOCK = 1 << 15
# numbers per row chunk of the per-call scratch work (rounded to whole blocks): small enough
# (a 512 KB float64 plane) that a chunk's passes run out of the L2 cache
CHUNK = 1 << 16
# numbers per chunk of the float32 histogram pass, which reads each value once and gains
# nothing from smaller chunks but fewer ops
HIST_CHUNK = 1 << 19
# updates queued before they are merged into the total: at most FOLD_AFTER, and at most
# QUEUE_BYTES of them (an update queues (19 + bins) float64s per group; bins may be 100k)
FOLD_AFTER = 64
QUEUE_BYTES = 1 << 16
SHORT_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
# integers below this magnitude, and the bin offsets subtracted from them, are exact in float32
F32_EXACT = 2.0 ** 23


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


class Workspace:
    """Reusable flat buffers, one per (role, dtype, device), grown when a bigger value comes.

    ``take`` hands out a contiguous view of the first ``numel`` elements, so one buffer serves
    every site of a sweep. Safe to share while updates run one after another (hooks of one
    forward do); two updates in flight at once need two workspaces.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}
        # small tensors that depend on a site's shape only (slot bases, the spread pattern): made
        # once per sweep, not once per hook call
        self.constants: dict[tuple, Any] = {}

    def constant(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The tensor (or host array) ``make()`` gave for ``key`` the first time it was asked for."""
        value = self.constants.get(key)
        if value is None:
            value = self.constants[key] = make()
        return value

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


def _row_chunks(rows: int, groups: int, width: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``chunk`` numbers each (at least one row)."""
    step = max(1, chunk // max(1, groups * width))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _blocks(rows: int, per_row: int) -> tuple[int, int]:
    """``(block_rows, chunk_blocks)``: the rows of one block of about ``BLOCK`` numbers (a divisor
    of ``rows`` where one is near, so no short block is left over), and the blocks of one chunk
    of about ``CHUNK`` numbers. Both depend on the call's shape only, never on what came before."""
    target = max(1, BLOCK // max(1, per_row))
    if rows <= target:
        block_rows = rows
    else:
        block_rows = next((b for b in range(target, target // 2, -1) if rows % b == 0), target)
    return block_rows, max(1, CHUNK // (per_row * block_rows))


def _finite_extremes(raw: Tensor, workspace: Workspace) -> tuple[Tensor, Tensor]:
    """Per group, the least and greatest finite value of ``raw`` (inf/NaN have no bin), as float64;
    ``low > high`` for a group with none. Exact in ``raw``'s own dtype."""
    lows, highs = [], []
    rows, groups, width = raw.shape
    for start, stop in _row_chunks(rows, groups, width, CHUNK):
        part = raw[start:stop]
        masked = workspace.take("masked", part.shape, raw.dtype, raw.device)
        lows.append(torch.nan_to_num(part, nan=math.inf, neginf=math.inf, out=masked).amin((0, 2)))
        highs.append(torch.nan_to_num(part, nan=-math.inf, posinf=-math.inf, out=masked).amax((0, 2)))
    return torch.stack(lows).amin(0).to(F64), torch.stack(highs).amax(0).to(F64)


class _Histogram:
    """One call's bin counts per group over the finite range ``[low, high]``, filled a chunk at a time."""

    def __init__(self, low: Tensor, high: Tensor, bins: int, device: torch.device, may_be_empty: bool = True,
                 workspace: Workspace | None = None) -> None:
        """``may_be_empty``: ``low > high`` can mark a group with no finite value (from ``_finite_extremes``);
        ``workspace`` keeps the shape-only constants across calls."""
        groups = low.shape[0]
        # on the CPU the placement's few dozen tiny ops run as numpy on views of the extremes: the
        # same float64 arithmetic at a fraction of torch's per-op cost, and nothing to wait for
        self.host = device.type == "cpu"
        xp: Any = numpy if self.host else torch
        lo: Any = low.numpy() if self.host else low
        hi: Any = high.numpy() if self.host else high
        if may_be_empty:
            empty = lo > hi
            lo, hi = xp.where(empty, 0.0, lo), xp.where(empty, 0.0, hi)
        width, first = width_for(lo, hi, bins, xp=xp)
        # slot of x in group g: base_g + floor(x / w_g) - first_g, base_g = 1 + g (bins + 2); every
        # finite value lands inside its group's bins by construction, and what has no bin goes
        # to a slot that is dropped: NaN and -inf to slot 0, +inf to the last one
        workspace = workspace if workspace is not None else Workspace()
        self.workspace = workspace
        base = workspace.constant(("base", groups, bins, device),
                                  lambda: xp.arange(groups, dtype=xp.float64) * (bins + 2) + 1 if self.host
                                  else torch.arange(groups, device=device, dtype=F64) * (bins + 2) + 1)
        scale, offset = 1.0 / width, first - base
        self.placement = (lo, hi, first, scale, offset)
        if self.host:
            width, first, scale, offset = (torch.from_numpy(value) for value in (width, first, scale, offset))
        self.width, self.first, self.scale, self.offset = width, first, scale, offset
        self.bins, self.groups = bins, groups
        self.slots = torch.zeros(groups * (bins + 2), dtype=torch.int64, device=device)

    def float32_exact(self, width: int) -> bool:
        """On the CPU: whether ``add_float32`` bins every value of ``[low, high]`` exactly (false
        for a NaN or infinite extreme: every scaled value and every offset below 2^23, where
        float32 holds integers exactly). Keeps the float32 factors for ``add_float32`` on rows of
        ``width`` numbers, and whether every width is at most 1 (``fine``) or at least 1
        (``coarse``), where ``add_float32`` skips a scaling."""
        low, high, first, scale, offset = self.placement
        with numpy.errstate(all="ignore"):
            up = numpy.maximum(scale, 1.0)  # a: widths below 1 scale up here …
            down = numpy.minimum(scale, 1.0)  # b: … and widths of 1 or more divide here
            # and a itself a float32 number: a below 2^100 (a width below 2^-100 comes only with
            # values below 2^-55) is up · 2^-77 below 2^23
            bound = numpy.stack([numpy.maximum(abs(low), abs(high)) * up, abs(first) + self.bins, up * 2.0 ** -77])
            exact = bool((bound < F32_EXACT).all())
            # (where it is not, a factor may overflow float32: that path never runs)
            up32, down32, offset32 = (value.astype(numpy.float32) for value in (up, down, offset))
        self.up, self.down = (torch.from_numpy(factor).view(1, self.groups, 1) for factor in (up32, down32))
        # neighbouring values count into two copies of the slots (a run of equal bins then does
        # not wait on one counter): odd positions of a row shift into the second copy
        slots = self.slots.numel()
        odd = self.workspace.constant(("odd", width, slots),
                                      lambda: (numpy.arange(width) % 2 * slots).astype(numpy.float32))
        self.spread_offset = torch.from_numpy(offset32[:, None] - odd).view(1, self.groups, width)
        self.fine, self.coarse = bool((down == 1.0).all()), bool((up == 1.0).all())
        return exact

    def add_float32(self, part: Tensor, workspace: Workspace) -> Tensor:
        """Count ``part`` (``[rows, groups, width]``, float32, ``float32_exact``); returns the
        scratch it worked in, free again."""
        scaled = workspace.take("scaled", part.shape, F32, part.device)
        if self.fine:
            torch.mul(part, self.up, out=scaled).floor_()
        elif self.coarse:
            torch.floor(part, out=scaled).mul_(self.down).floor_()
        else:
            torch.mul(part, self.up, out=scaled).floor_().mul_(self.down).floor_()
        scaled.sub_(self.spread_offset)
        self._count(scaled, workspace, spread=2)
        return scaled

    def add(self, values: Tensor, scratch: Tensor, view: tuple[int, ...], workspace: Workspace, clean: bool) -> None:
        """Count ``values`` (float64), working in ``scratch`` (same shape); ``view`` puts the groups
        on ``values``' group axis; ``clean``: every value is finite."""
        # floor before shifting: both terms are then exact integers, so the shift is exact too
        index = torch.mul(values, self.scale.view(view), out=scratch).floor_().sub_(self.offset.view(view))
        if not clean:
            index.nan_to_num_(nan=0.0, posinf=float(self.slots.numel() - 1), neginf=0.0)
        self._count(index, workspace)

    def _count(self, index: Tensor, workspace: Workspace, spread: int = 1) -> None:
        """Add the slots ``index`` holds (``spread`` copies of the slots, one after another)."""
        # int16 or int32 slots: fewer bytes to write than int64 (groups·(bins+2) is far below 2^31)
        # (int16 on the CPU only: bincount takes it, index_add_ does not)
        small = index.device.type == "cpu" and spread * self.slots.numel() <= torch.iinfo(torch.int16).max
        slot_of = workspace.take("slot_of", (index.numel(),), torch.int16 if small else torch.int32, index.device)
        slot_of.copy_(index.reshape(-1))  # floored: exact
        if index.device.type == "cpu":
            counted = torch.bincount(slot_of, minlength=spread * self.slots.numel())
            self.slots += counted.view(spread, -1).sum(0) if spread > 1 else counted
        else:
            # a fixed-size accumulate, not bincount: bincount sizes its output from the data's
            # max, which on an accelerator waits for the device
            self.slots.index_add_(0, slot_of, self.slots.new_ones(()).expand(slot_of.numel()))

    def counts(self) -> Tensor:
        return self.slots.view(self.groups, self.bins + 2)[:, 1:self.bins + 1]


@functools.lru_cache(maxsize=16)
def _largest_float32_at_most(value: float) -> float:
    """The largest float32 number ≤ ``value``: ``|x| ≤ it`` in float32 is ``|x| ≤ value`` exactly."""
    near = torch.tensor(value, dtype=F32)
    if float(near) > value:
        near = torch.nextafter(near, torch.tensor(-math.inf, dtype=F32))
    return float(near)


class _Sums:
    """One call's per-row and per-block sums, filled a chunk at a time."""

    def __init__(self, rows: int, groups: int, blocks: int, device: torch.device) -> None:
        self.norms = torch.empty(rows, groups, dtype=F64, device=device)  # each row's L2 norm
        self.first = torch.empty(rows, groups, dtype=F64, device=device)  # each row's Σd
        self.grams = torch.empty(blocks, groups, 2, 2, dtype=F64, device=device)  # Σd², Σd³, Σd⁴ per block
        self.near = torch.zeros(groups, dtype=F64, device=device)


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
        self.near_zero32 = _largest_float32_at_most(near_zero)
        self.width = 0
        self.total: Total | None = None
        self.pending: list[Partial] = []  # updates not merged into the total yet
        self.fold_after = max(1, min(FOLD_AFTER, QUEUE_BYTES // (groups * (len(PARTIAL) + self.bins) * 8)))

    def update(self, grouped: Tensor) -> None:
        """Fold ``grouped`` (``[rows, groups, width]``) in, without waiting for an accelerator."""
        raw = grouped.detach()
        if raw.numel() == 0:
            return
        if raw.device.type != "cpu" or torch.get_num_threads() == 1:
            self._update(raw)
            return
        # One CPU thread: the work is a hundred-odd memory-bound ops over L2-sized chunks, where
        # each parallel region's fork and join costs more than the second thread saves, and on a
        # busy machine every region waits for a descheduled thread (measured: 2 threads made a
        # stats-all pass 5-15× slower in wall time than 1 on 2 busy cores). The sums' order then
        # no longer depends on the thread count either.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._update(raw)
        finally:
            torch.set_num_threads(threads)

    def _update(self, raw: Tensor) -> None:
        rows, groups, width = raw.shape
        self.width = width
        dims = (0, 2)
        workspace, device = self.workspace, raw.device
        if groups > 1:
            # rows first, then width: the row reduction runs over contiguous memory (several times
            # faster than one strided (0, 2) reduction); a min is a min in any order
            low, high = raw.amin(0).amin(-1), raw.amax(0).amax(-1)  # exact in any dtype; NaN if a NaN is there
        else:
            low, high = raw.amin(dims), raw.amax(dims)
        finite_low, finite_high = low64, high64 = low.to(F64), high.to(F64)
        # two copies of the slots below 2^22: offsets and slots then stay exact float32 integers
        short = raw.dtype in SHORT_FLOATS and max(width, 4 * groups * (self.bins + 2)) < F32_EXACT
        fast = clean = False
        hist: _Histogram | None = None
        if device.type == "cpu":
            # host decisions (no wait on the CPU). Short floats: the float32 bin index is exact,
            # which needs finite extremes; other dtypes: every value is finite. Finite extremes
            # place the histogram, and no value needs a dropped slot.
            if short:
                hist = _Histogram(finite_low, finite_high, self.bins, device, may_be_empty=False,
                                  workspace=workspace)
                fast = hist.float32_exact(width)
                # a constant group (a zero-ablated head) pins its width too fine for float32 indices;
                # finite extremes still let the float64 pass skip the finite-extremes scan
                clean = not fast and bool(torch.isfinite(finite_low + finite_high).all())
            else:
                clean = bool(torch.isfinite(finite_low + finite_high).all())
                hist = _Histogram(finite_low, finite_high, self.bins, device, may_be_empty=False,
                                  workspace=workspace)
        if hist is None or not (fast or clean):
            finite_low, finite_high = _finite_extremes(raw, workspace)
            hist = _Histogram(finite_low, finite_high, self.bins, device, workspace=workspace)
        # any shift near the mean keeps the moment sums small, and the shift is corrected exactly:
        # the mean of up to 64 evenly spaced rows will do (an overflowing float32 mean falls back
        # to 0: still exact, only less well conditioned)
        sample = raw[::max(1, rows // 64)]
        shift = sample.mean(dims, dtype=None if raw.is_floating_point() else F64)
        shift = torch.nan_to_num(shift, nan=0.0, posinf=0.0, neginf=0.0).to(F64)
        sums = self._moment_pass(raw, shift, None if fast else hist, clean)
        if fast:
            self._float32_pass(raw, hist, sums)
        # the merge with what came before waits for ``fold``: a few batched ops for many updates
        grams = sums.grams.sum(0)  # [groups, 2, 2]
        norm_mean = sums.norms.mean(0)
        norm_m2 = torch.sub(sums.norms, norm_mean).square_().sum(0)
        columns = [shift.reshape(-1), sums.first.sum(0), norm_mean, norm_m2, low64, high64, finite_low,
                   finite_high, sums.near, sums.norms.amin(0), sums.norms.amax(0), hist.width, hist.first]
        self.pending.append(Partial.pack(rows * width, rows, grams, columns, hist.counts()))
        if len(self.pending) >= self.fold_after:
            self.fold()

    def fold(self) -> None:
        """Merge the pending updates into the total (batched ops, no host read)."""
        if self.pending:
            self.total, self.pending = fold(self.total, self.pending, self.bins), []

    def _moment_pass(self, raw: Tensor, shift: Tensor, hist: _Histogram | None, clean: bool) -> _Sums:
        """Per-row norms and Σd, per-block Σd², Σd³, Σd⁴ of ``d = x - shift``; the histogram and
        the near-zero count too when ``hist`` is given (the float64 path)."""
        rows, groups, width = raw.shape
        block_rows, chunk_blocks = _blocks(rows, groups * width)
        whole = rows // block_rows
        sums = _Sums(rows, groups, whole + (rows > whole * block_rows), raw.device)
        shift = shift.view(1, groups, 1, 1)
        views: tuple[Tensor, ...] = ()
        for first in range(0, whole, chunk_blocks):
            blocks = min(chunk_blocks, whole - first)
            if not views or views[0].shape[0] != blocks:
                views = self._planes(blocks, block_rows, groups, width, raw.device)
            self._fold_blocks(raw, first, blocks, block_rows, shift, views, sums, hist, clean)
        if rows > whole * block_rows:  # the short block at the end (when no divisor was near)
            views = self._planes(1, rows - whole * block_rows, groups, width, raw.device)
            self._fold_blocks(raw, whole, 1, block_rows, shift, views, sums, hist, clean)
        return sums

    def _planes(self, blocks: int, per: int, groups: int, width: int, device: torch.device) -> tuple[Tensor, ...]:
        """Block-major float64 planes ``[blocks, groups, 2, per, width]`` (``x - shift``, then its
        square) and their views: each plane, and each block's two planes as one matrix."""
        planes = self.workspace.take("planes", (blocks, groups, 2, per, width), F64, device)
        matrices = planes.view(blocks * groups, 2, per * width)
        return planes, planes[:, :, 0], planes[:, :, 1], matrices, matrices.transpose(1, 2)

    def _fold_blocks(self, raw: Tensor, first: int, blocks: int, block_rows: int, shift: Tensor,
                     views: tuple[Tensor, ...], sums: _Sums, hist: _Histogram | None, clean: bool) -> None:
        """Blocks ``first …`` (``views``' shape; the last may be short) into ``sums``."""
        _, groups, width = raw.shape
        planes, d, square, matrices, transposed = views
        per = planes.shape[3]
        begin = first * block_rows
        end = begin + blocks * per
        d.copy_(raw[begin:end].view(blocks, per, groups, width).transpose(1, 2))
        torch.linalg.vector_norm(d, dim=-1, out=sums.norms[begin:end].view(blocks, per, groups).transpose(1, 2))
        if hist is not None:
            # 1.0 where |x| ≤ near_zero, summed in float64: exact counts, and no bool pass to widen
            sums.near += torch.abs(d, out=square).le_(self.near_zero).sum((0, 2, 3))
            hist.add(d, square, (1, groups, 1, 1), self.workspace, clean)
        d.sub_(shift)
        torch.sum(d, -1, out=sums.first[begin:end].view(blocks, per, groups).transpose(1, 2))
        torch.mul(d, d, out=square)
        torch.bmm(matrices, transposed, out=sums.grams[first:first + blocks].view(blocks * groups, 2, 2))

    def _float32_pass(self, raw: Tensor, hist: _Histogram, sums: _Sums) -> None:
        """The histogram and the near-zero count from float32 values (``hist.float32_exact``)."""
        rows, groups, width = raw.shape
        for start, stop in _row_chunks(rows, groups, width, HIST_CHUNK):
            part = raw[start:stop]
            if part.dtype != F32:
                part = self.workspace.take("float32", part.shape, F32, part.device).copy_(part)  # exact
            scratch = hist.add_float32(part, self.workspace)
            # 1.0 where |x| ≤ near_zero; a float32 sum of ones is exact below 2^24 (a chunk holds fewer)
            # (rows first, then width, as for the extremes: whole-number sums, so the order changes nothing)
            sums.near += torch.abs(part, out=scratch).le_(self.near_zero32).sum(0).sum(-1)

    def summaries(self, names: Mapping[int, str]) -> dict[str, StatsSummary]:
        """The summary of each group named in ``names`` (``{group: address}``), read from the
        device in one copy."""
        return summaries_of([(self, names)])

    def empty_summary(self, address: str) -> StatsSummary:
        """The summary of a group nothing was streamed into."""
        zero_norms = {"mean": 0.0, "std": 0.0, "count": 0, "min": 0.0, "max": 0.0}
        return StatsSummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, zero_norms, [0] * self.bins,
                            [0.0] * (self.bins + 1), address, self.width)

    def _summary(self, address: str, row: dict[str, float], counts: list[int], n: int, rows: int) -> StatsSummary:
        mean, m2, m4 = row["mean"], row["m2"], row["m4"]
        low, high, width, first = row["low"], row["high"], row["hist_width"], row["hist_first"]
        kurtosis = n * m4 / (m2 * m2) - 3.0 if m2 > 0 else 0.0
        return StatsSummary(
            count=n, mean=mean, std=_sqrt(m2 / n), rms=_sqrt((m2 + n * mean * mean) / n),
            min=low, max=high, absmax=max(abs(low), abs(high)), sparsity=row["near_zero"] / n, kurtosis=kurtosis,
            token_l2={"mean": row["norm_mean"], "std": _sqrt(row["norm_m2"] / rows), "count": rows,
                      "min": row["norm_low"], "max": row["norm_high"]},
            hist_counts=[int(c) for c in counts], hist_edges=[(first + k) * width for k in range(self.bins + 1)],
            address=address, width=self.width,
        )


def summaries_of(accumulators: Sequence[tuple[GroupStats, Mapping[int, str]]]) -> dict[str, StatsSummary]:
    """The summaries of several accumulators (``(stats, {group: address})``, as ``summaries``):
    their queued updates folded together and every total read from the device in one copy."""
    waiting = [stats for stats, _ in accumulators if stats.pending]
    by_kind: dict[tuple[int, torch.device], list[GroupStats]] = {}
    for stats in waiting:
        by_kind.setdefault((stats.bins, stats.pending[0].floats.device), []).append(stats)
    for (bins, _), members in by_kind.items():
        for stats, total in zip(members, fold_many([(m.total, m.pending) for m in members], bins), strict=True):
            stats.total, stats.pending = total, []
    read = [stats.total for stats, _ in accumulators if stats.total is not None]
    floats = torch.cat([total.floats for total in read]).cpu().tolist() if read else []
    counts = torch.cat([total.counts.reshape(-1) for total in read]).cpu().tolist() if read else []
    found: dict[str, StatsSummary] = {}
    row = spot = 0
    for stats, names in accumulators:
        if stats.total is None:  # nothing streamed in
            found.update({address: stats.empty_summary(address) for address in names.values()})
            continue
        for g, address in names.items():
            found[address] = stats._summary(address, dict(zip(TOTAL, floats[row + g], strict=True)),
                                            counts[spot + g * stats.bins:spot + (g + 1) * stats.bins],
                                            stats.total.count, stats.total.rows)
        row, spot = row + stats.groups, spot + stats.groups * stats.bins
    return found


def _sqrt(value: float) -> float:
    """Square root that passes inf/NaN through and reads a rounding-negative variance as 0."""
    return math.sqrt(value) if value >= 0 else (value if math.isnan(value) else 0.0)
