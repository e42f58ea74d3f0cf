"""Batched per-head statistics: one op per layer, no host sync in the forward pass, exact histograms."""

from __future__ import annotations

import math

import pytest
import torch

from engine import stats_device
from engine.stats import StreamingStats, every_layer_and_head, stream_stats
from engine.stats_device import GroupStats, Workspace


def _heavy_tailed(rows: int = 96, heads: int = 5, width: int = 12) -> torch.Tensor:
    torch.manual_seed(3)
    values = torch.randn(rows, heads, width) * torch.tensor([0.01, 1.0, 30.0, 1e-4, 5.0]).view(1, heads, 1)
    values[::7, 1] *= 40.0  # outliers in one head
    values[:, 3, :4] = 0.0  # exact zeros: sparsity
    values[5, 4, 0] = -1e-30  # a tiny negative next to the zero edge
    return values


def _reference_counts(edges: list[float], values: torch.Tensor) -> list[int]:
    bounds = torch.tensor(edges, dtype=torch.float64)
    index = torch.searchsorted(bounds, values.double().reshape(-1), right=True) - 1
    return torch.bincount(index, minlength=len(edges) - 1).tolist()


def test_all_heads_at_once_equal_each_head_alone():
    values = _heavy_tailed()
    batched = GroupStats(values.shape[1], 16)  # every head in one batched op
    batched.update(values)
    names = {head: f"h{head}" for head in range(values.shape[1])}
    got = batched.summaries(names)
    for head, name in names.items():
        alone = StreamingStats(16, name)  # the float64 reference, one head at a time
        alone.update(values[:, head])
        want, summary = alone.summary(), got[name]
        assert summary.count == want.count == values.shape[0] * values.shape[2]
        for field in ("mean", "std", "rms", "min", "max", "absmax", "sparsity", "kurtosis"):
            assert math.isclose(getattr(summary, field), getattr(want, field), rel_tol=1e-12, abs_tol=1e-15), \
                (name, field, getattr(summary, field), getattr(want, field))
        for field in ("mean", "std", "min", "max"):
            assert math.isclose(summary.token_l2[field], want.token_l2[field], rel_tol=1e-12), (name, field)
        # exact, not close: the counts are the full head's counts over the edges in use
        assert summary.hist_counts == _reference_counts(summary.hist_edges, values[:, head]), name
        assert summary.hist_edges[0] <= want.min and want.max < summary.hist_edges[-1]
    assert got["h3"].sparsity >= 4 / 12


def test_pieces_in_any_order_keep_exact_counts():
    values = _heavy_tailed()
    whole = GroupStats(values.shape[1], 8)
    whole.update(values)
    names = {head: f"h{head}" for head in range(values.shape[1])}
    want = whole.summaries(names)
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 0, 3, 1]):
        pieces = GroupStats(values.shape[1], 8)
        chunks = values.chunk(4)
        for index in order:
            pieces.update(chunks[index])
        got = pieces.summaries(names)
        for head, name in names.items():
            assert got[name].hist_counts == _reference_counts(got[name].hist_edges, values[:, head])
            assert sum(got[name].hist_counts) == values[:, head].numel()
            width, whole_width = (s[name].hist_edges[1] - s[name].hist_edges[0] for s in (got, want))
            assert width >= whole_width
            assert math.isclose(got[name].kurtosis, want[name].kurtosis, rel_tol=1e-9, abs_tol=1e-12)
            assert math.isclose(got[name].std, want[name].std, rel_tol=1e-12)


def test_update_never_waits_for_the_host(monkeypatch):
    """No .item()/.tolist()/bool()/float() inside update off the CPU: the forward pass never syncs.

    Meta tensors take the accelerator path (no data, so any host read fails); on the CPU, where
    nothing waits, the histogram's placement and the float32 path's flags are numpy math on the extremes.
    """
    values = _heavy_tailed()
    stats, off_cpu = GroupStats(values.shape[1], 16), GroupStats(values.shape[1], 16)
    reads = []

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation inside the forward pass")

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"):
            patched.setattr(torch.Tensor, name, refuse)
        off_cpu.update(values[:40].to("meta"))
        off_cpu.update(values[40:].to("meta"))
        off_cpu.fold()  # the merge path too
        off_cpu.update(values[40:].to("meta"))
        off_cpu.fold()  # and a merge into a total
        patched.undo()  # the CPU: count the host reads instead
        for name in ("__bool__", "tolist"):
            original = getattr(torch.Tensor, name)
            patched.setattr(torch.Tensor, name, lambda t, original=original: reads.append(t.numel()) or original(t))
        stats.update(values[:40])
        stats.update(values[40:])
    assert off_cpu.total is not None and off_cpu.total.counts.shape == (values.shape[1], 16)
    assert reads == []  # the CPU's flags come from host math on the extremes, not from reading tensors
    assert sum(stats.summaries({1: "h1"})["h1"].hist_counts) == 40 * 12 + 56 * 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sync debugging needs CUDA")
def test_update_never_syncs_on_cuda():
    values = _heavy_tailed().cuda()
    stats = GroupStats(values.shape[1], 16)
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats.update(values[:40])
        stats.update(values[40:])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    summary = stats.summaries({2: "h2"})["h2"]
    assert summary.hist_counts == _reference_counts(summary.hist_edges, values[:, 2].cpu())


def test_non_finite_values_have_no_bin_and_leave_the_others_exact():
    values = _heavy_tailed(rows=20)
    values[3, 0, 1] = float("inf")
    values[4, 0, 2] = float("-inf")
    values[5, 0, 3] = float("nan")
    stats = GroupStats(values.shape[1], 8)
    stats.update(values)
    summary = stats.summaries({0: "h0"})["h0"]
    finite = values[:, 0][torch.isfinite(values[:, 0])]
    assert summary.count == values[:, 0].numel() and sum(summary.hist_counts) == finite.numel()
    assert summary.hist_counts == _reference_counts(summary.hist_edges, finite)
    assert summary.hist_edges[0] <= float(finite.min()) and float(finite.max()) < summary.hist_edges[-1]


@pytest.mark.slow
def test_every_layer_and_head_is_one_update_per_layer_site(smollm2, monkeypatch):
    calls: list[tuple[int, ...]] = []
    update = GroupStats.update

    def counted(self, grouped):
        calls.append(tuple(grouped.shape))
        update(self, grouped)

    monkeypatch.setattr(GroupStats, "update", counted)
    summaries = stream_stats(smollm2, "The garage door was open.", every_layer_and_head(smollm2), bins=16)
    layers, heads = smollm2.anatomy.n_layers, smollm2.anatomy.geometry.n_heads
    assert len(summaries) == layers * (1 + heads)
    # one batched update for each layer's output and one for all of a layer's heads, not 300
    assert len(calls) == 2 * layers
    assert sum(1 for shape in calls if shape[1] == heads) == layers
    head = summaries["L7.attn.h4.z"]
    reference = StreamingStats(16)
    from engine.capture import capture_prompt

    z = capture_prompt(smollm2, "The garage door was open.", ["L7.attn.z"])[0]["L7.attn.z"]
    d_head = z.shape[-1] // heads
    reference.update(z[..., 4 * d_head:5 * d_head])
    want = reference.summary()
    assert math.isclose(head.kurtosis, want.kurtosis, rel_tol=1e-5) and head.count == want.count
    assert head.hist_counts == _reference_counts(head.hist_edges, z[..., 4 * d_head:5 * d_head])


def test_the_reference_accumulator_leaves_its_input_alone():
    values = _heavy_tailed().double()
    before = values.clone()
    stats = StreamingStats(8)
    stats.update(values)
    assert torch.equal(values, before)  # the histogram's index math runs on its own copy
    assert sum(stats.summary().hist_counts) == values.numel()


def test_a_shared_workspace_gives_the_same_numbers_and_stops_allocating(monkeypatch):
    # groups of one sweep share scratch buffers; stale contents from a bigger or smaller site,
    # and row chunking, must not change a single bit of any summary
    torch.manual_seed(5)
    pieces = [(_heavy_tailed(96), 5), (torch.randn(40, 1, 30) * 3, 1), (_heavy_tailed(7), 5),
              (torch.randn(300, 1, 30).to(torch.bfloat16), 1)]
    alone = {5: GroupStats(5, 16), 1: GroupStats(1, 16)}  # private buffers, one chunk per update
    for values, groups in pieces:
        alone[groups].update(values)
    monkeypatch.setattr(stats_device, "CHUNK", 500)  # several row chunks per update
    workspace = Workspace()
    shared = {5: GroupStats(5, 16, workspace=workspace), 1: GroupStats(1, 16, workspace=workspace)}
    for values, groups in pieces:
        shared[groups].update(values)
    for groups in (5, 1):
        names = {g: f"g{g}" for g in range(groups)}
        got, want = shared[groups].summaries(names), alone[groups].summaries(names)
        assert {k: s.to_dict() for k, s in got.items()} == {k: s.to_dict() for k, s in want.items()}
    want_counts = _reference_counts(got["g0"].hist_edges, torch.cat([p[0].double().reshape(-1) for p in pieces[1::2]]))
    assert got["g0"].hist_counts == want_counts  # exact over the final edges
    # once grown, the buffers are reused: a repeat of the biggest site allocates none
    before = {key: buffer.data_ptr() for key, buffer in workspace.buffers.items()}
    shared[5].update(_heavy_tailed(96))
    assert {key: buffer.data_ptr() for key, buffer in workspace.buffers.items()} == before


def test_an_all_zero_group_counts_every_value_in_its_histogram(monkeypatch):
    """A zero-ablated head's z is all zeros: each of its values is in a bin, none lost to NaN; finite
    extremes spare the update the finite-extremes scan even where float32 indices are not exact."""
    values = torch.randn(16, 3, 8)
    values[:, 1] = 0.0
    group = GroupStats(3, bins=8)

    def no_scan(*_args, **_kwargs):
        raise AssertionError("finite extremes were scanned again")

    monkeypatch.setattr(stats_device, "_finite_extremes", no_scan)
    group.update(values)
    summaries = group.summaries({0: "a", 1: "zeros", 2: "c"})
    zeros = summaries["zeros"]
    assert sum(zeros.hist_counts) == zeros.count == 16 * 8
    assert zeros.hist_edges[0] <= 0.0 <= zeros.hist_edges[-1] and math.isfinite(zeros.hist_edges[-1])
    for head, name in ((0, "a"), (1, "zeros"), (2, "c")):
        summary = summaries[name]
        assert summary.hist_counts == _reference_counts(summary.hist_edges, values[:, head]), name


def _as_dicts(group: GroupStats) -> dict:
    return {k: s.to_dict() for k, s in group.summaries({g: f"g{g}" for g in range(group.groups)}).items()}


def test_chunking_across_many_blocks_changes_no_bit(monkeypatch):
    # a value of many blocks (sums are taken per row and per block), chunked three ways
    torch.manual_seed(7)
    values = torch.randn(2000, 3, 40) * torch.tensor([0.5, 3.0, 0.02]).view(1, 3, 1) + 0.25
    values[::13, 1] *= 25.0
    results = []
    for block, chunk in ((1 << 12, 1 << 16), (1 << 12, 1 << 12), (1 << 12, 3 << 12)):
        monkeypatch.setattr(stats_device, "BLOCK", block)
        monkeypatch.setattr(stats_device, "CHUNK", chunk)
        group = GroupStats(3, 32)
        group.update(values)
        results.append(_as_dicts(group))
    assert results[0] == results[1] == results[2]
    for g in range(3):
        got = results[0][f"g{g}"]
        assert got["histogram"]["counts"] == _reference_counts(got["histogram"]["edges"], values[:, g])


def test_a_short_last_block_is_counted_once():
    # 1009 rows (prime): no divisor near the block size, so the last block is short
    torch.manual_seed(8)
    values = torch.randn(1009, 2, 64)
    group = GroupStats(2, 16)
    group.update(values)
    got = group.summaries({0: "a", 1: "b"})
    for g, name in enumerate(("a", "b")):
        x = values[:, g].double()
        assert got[name].count == x.numel()
        assert math.isclose(got[name].mean, float(x.mean()), rel_tol=1e-12, abs_tol=1e-15)
        assert math.isclose(got[name].std, float(x.std(unbiased=False)), rel_tol=1e-12)
        centred = x - x.mean()
        kurtosis = float(centred.pow(4).mean() / centred.square().mean().square() - 3.0)
        assert math.isclose(got[name].kurtosis, kurtosis, rel_tol=1e-9, abs_tol=1e-12)
        norms = x.norm(dim=-1)
        assert math.isclose(got[name].token_l2["mean"], float(norms.mean()), rel_tol=1e-12)
        assert math.isclose(got[name].token_l2["std"], float(norms.std(unbiased=False)), rel_tol=1e-9)
        assert got[name].hist_counts == _reference_counts(got[name].hist_edges, x)


@pytest.mark.parametrize("scales", [(1e-6, 1e-6), (1.0, 1.0), (300.0, 300.0), (5e5, 5e5), (1e-3, 300.0)])
def test_the_float32_bin_index_equals_the_float64_one(scales, monkeypatch):
    """Values on and a hair either side of bin edges, tiny negatives and subnormals, at widths
    below and above 1 in both groups or one of each (each path of the float32 index): the
    float32 index path counts what the float64 path counts."""
    calls = []
    add_float32 = stats_device._Histogram.add_float32
    monkeypatch.setattr(stats_device._Histogram, "add_float32",
                        lambda self, *args: calls.append((self.fine, self.coarse)) or add_float32(self, *args))
    torch.manual_seed(9)
    values = torch.randn(64, 2, 33) * torch.tensor(scales).view(1, 2, 1)
    for group, scale in enumerate(scales):
        edge = 2.0 ** math.floor(math.log2(scale))  # a likely bin width or a multiple of it
        specials = torch.tensor([0.0, -0.0, -1e-30, 1e-30, -1e-45, 1e-45, -edge, edge, 3 * edge, -3 * edge])
        specials = torch.cat([specials, torch.nextafter(specials, torch.tensor(math.inf)),
                              torch.nextafter(specials, torch.tensor(-math.inf))])
        values[0, group, :specials.numel()] = specials
    fast, slow = GroupStats(2, 64), GroupStats(2, 64)
    fast.update(values)  # float32: the float32 index
    slow.update(values.double())  # float64: the float64 index, over the same numbers
    # the float32 path ran for the float32 values only, skipping the scaling that is 1 in both groups
    fine, coarse = scales[1] < 10, scales[0] > 10
    assert calls == [(fine, coarse)]
    for g in range(2):
        a, b = (s.summaries({g: "x"})["x"] for s in (fast, slow))
        assert a.hist_edges == b.hist_edges
        assert a.hist_counts == b.hist_counts == _reference_counts(a.hist_edges, values[:, g])
        assert a.sparsity == b.sparsity
        assert math.isclose(a.kurtosis, b.kurtosis, rel_tol=1e-12, abs_tol=1e-12)


def test_an_update_runs_on_one_cpu_thread_and_gives_the_same_bits_at_any_thread_count(monkeypatch):
    # stats ops are small memory-bound passes: a second thread's fork/join costs more than it saves
    values = torch.randn(3000, 4, 64) * torch.tensor([0.1, 1.0, 7.0, 40.0]).view(1, 4, 1)
    before = torch.get_num_threads()
    seen: list[int] = []
    inner = GroupStats._update

    def recording(self, raw):
        seen.append(torch.get_num_threads())
        inner(self, raw)

    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with monkeypatch.context() as patched:
                patched.setattr(GroupStats, "_update", recording)
                group = GroupStats(4, 32)
                group.update(values)
            assert torch.get_num_threads() == threads  # restored after the update
            results.append(_as_dicts(group))
        assert seen == [1, 1]
        assert results[0] == results[1]

        def failing(self, raw):
            raise RuntimeError("boom")

        monkeypatch.setattr(GroupStats, "_update", failing)
        with pytest.raises(RuntimeError):
            GroupStats(4, 32).update(values)
        assert torch.get_num_threads() == 2  # restored when the update raises too
    finally:
        torch.set_num_threads(before)


def test_many_updates_fold_into_the_whole_values_statistics(monkeypatch):
    # merges wait in a queue and fold in batches: folds mid-stream (a total plus a queue) and the
    # last one at summaries() give the whole value's numbers
    monkeypatch.setattr(stats_device, "FOLD_AFTER", 7)
    torch.manual_seed(11)
    values = torch.randn(564, 3, 16) * torch.tensor([0.02, 1.5, 80.0]).view(1, 3, 1)
    values += torch.tensor([5.0, -0.3, 0.0]).view(1, 3, 1)
    values[::17, 2] *= 30.0
    whole, pieces = GroupStats(3, 32), GroupStats(3, 32)
    whole.update(values)
    sizes = [1, 5, 30, 2, 9] * 12  # 60 updates of uneven sizes (all 564 rows): eight folds on the way
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for start, size in zip(starts, sizes, strict=True):
        pieces.update(values[start:start + size])
    assert len(pieces.pending) == 60 % 7 and pieces.total is not None
    names = {g: f"g{g}" for g in range(3)}
    got, want = pieces.summaries(names), whole.summaries(names)
    for g, name in names.items():
        a, b = got[name], want[name]
        x = values[:, g].double()
        assert a.count == x.numel() and a.token_l2["count"] == sum(sizes)
        assert a.hist_counts == _reference_counts(a.hist_edges, x)  # exact over the final edges
        assert math.isclose(a.mean, float(x.mean()), rel_tol=1e-12)
        assert math.isclose(a.std, float(x.std(unbiased=False)), rel_tol=1e-12)
        centred = x - x.mean()
        assert math.isclose(a.kurtosis, float(centred.pow(4).mean() / centred.square().mean().square() - 3.0),
                            rel_tol=1e-9)
        norms = x.norm(dim=-1)
        assert math.isclose(a.token_l2["mean"], float(norms.mean()), rel_tol=1e-12)
        assert math.isclose(a.token_l2["std"], float(norms.std(unbiased=False)), rel_tol=1e-9)
        assert (a.min, a.max, a.token_l2["min"], a.token_l2["max"]) == (float(x.min()), float(x.max()),
                                                                        float(norms.min()), float(norms.max()))
        assert a.sparsity == float((x.abs() <= 1e-3).sum()) / x.numel()
        assert math.isclose(a.kurtosis, b.kurtosis, rel_tol=1e-9) and a.hist_edges[0] <= b.hist_edges[0]


def test_a_sweep_folds_every_accumulator_together_and_reads_each_as_alone(monkeypatch):
    # accumulators of different group counts, queue lengths, with and without a total, and one
    # never fed: read together (one fold per kind, one copy) each equals its own summaries()
    monkeypatch.setattr(stats_device, "FOLD_AFTER", 3)
    torch.manual_seed(12)
    feeds = {(4, 1): [torch.randn(20, 4, 6) * 3], (1, 1): [torch.randn(9, 1, 30) + 2],
             (4, 2): [torch.randn(11, 4, 6) for _ in range(5)], (2, 0): []}
    together, alone = {}, {}
    for (groups, key), values in feeds.items():
        together[groups, key], alone[groups, key] = GroupStats(groups, 16), GroupStats(groups, 16)
        for value in values:
            together[groups, key].update(value)
            alone[groups, key].update(value)
    assert together[4, 2].total is not None and len(together[4, 2].pending) == 2
    names = {key: {g: f"{key}:g{g}" for g in range(key[0])} for key in feeds}
    got = stats_device.summaries_of([(together[key], names[key]) for key in feeds])
    want = {address: summary for key in feeds for address, summary in alone[key].summaries(names[key]).items()}
    assert {a: s.to_dict() for a, s in got.items()} == {a: s.to_dict() for a, s in want.items()}
    assert got["(2, 0):g1"].count == 0 and got["(4, 2):g3"].count == 5 * 11 * 6


def test_the_queue_of_updates_stays_small_with_many_bins():
    # an update queues (19 + bins) float64s per group: wide histograms fold at once, narrow ones wait
    wide, narrow = GroupStats(4, 4096), GroupStats(1, 16)
    for _ in range(3):
        wide.update(torch.randn(10, 4, 8))
        narrow.update(torch.randn(10, 1, 8))
    assert wide.fold_after == 1 and wide.pending == [] and wide.total is not None
    assert len(narrow.pending) == 3 and narrow.total is None
    queued = narrow.fold_after * sum(t.numel() * t.element_size() for t in (narrow.pending[0].floats,
                                                                           narrow.pending[0].counts))
    assert queued <= stats_device.QUEUE_BYTES
    assert sum(wide.summaries({0: "a"})["a"].hist_counts) == 3 * 10 * 8
