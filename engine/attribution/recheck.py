"""The exact re-check: real activation patching of chosen nodes, and how well the estimate agrees.

Each node's clean activation is patched into the corrupted run (denoising, like the
estimate) and the metric's change measured. Nodes are batched: one batch row per (node,
pair), each row patched only at its own node, so one forward pass checks many nodes.
Agreement is Spearman's ρ (signed scores) and top-k recall (by |score|).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.attribution.atp import Forward, metric_rows
from engine.attribution.nodes import Graph, Node
from engine.attribution.passes import PassRecord, SiteEdit, instrumented, replayed, row_patch
from engine.attribution.tasks import PairGroup
from engine.errors import Cancelled

ROWS_PER_PASS = 48


def _patch_site(node: Node, graph: Graph, length: int) -> tuple[tuple[str, int], int | None, slice | None]:
    if node.kind == "head":
        d_head, head = graph.d_head, int(node.head or 0)
        return ("z", node.layer), None, slice(head * d_head, (head + 1) * d_head)
    if node.kind in ("attn", "mlp"):
        return (node.kind, node.layer), None, None
    return ("resid", node.layer), length + int(node.position or 0), None


def exact_effects(model: nn.Module, graph: Graph, forward: Forward, group: PairGroup, clean: PassRecord,
                  corrupt: PassRecord, corrupt_metric: Tensor, nodes: Sequence[Node], n_total: int, *,
                  cancel: threading.Event | None = None,
                  on_chunk: Callable[[list[int], list[float]], None] | None = None) -> list[float]:
    """Each node's true metric change when patched clean into the corrupted run (this group's share).

    Nodes are checked deepest layer first, batched, with the corrupted run replayed up to the
    shallowest patched layer of each batch. ``on_chunk(indices, values)`` is called after every
    pass with the positions in ``nodes`` it settled, so a view can fill in.
    """
    size = group.size
    per_pass = max(1, ROWS_PER_PASS // size)
    order = sorted(range(len(nodes)), key=lambda i: (-nodes[i].layer, i))
    effects = [0.0] * len(nodes)
    for start in range(0, len(order), per_pass):
        if cancel is not None and cancel.is_set():
            raise Cancelled("the exact re-check was cancelled; no partial report was kept")
        chunk = order[start:start + per_pass]
        edits: dict[tuple[str, int], list[SiteEdit]] = {}
        for slot, index in enumerate(chunk):
            key, position, columns = _patch_site(nodes[index], graph, group.length)
            where = slice(slot * size, (slot + 1) * size)
            edits.setdefault(key, []).append(row_patch(where, position, columns, clean.values[key]))
        first_layer = min(nodes[index].layer for index in chunk)
        # hooks go on first: the replayed blocks' submodules are out of the model while it runs
        with torch.no_grad(), instrumented(model, graph, edits=edits, cancel=cancel), \
                replayed(model, graph, corrupt, first_layer, len(chunk) * size):
            logits = forward(model, group.corrupt_ids.repeat(len(chunk), 1))
        rows = metric_rows(logits, group, len(chunk)).double().view(len(chunk), size)
        values = ((rows - corrupt_metric.double()[None]).sum(dim=1) / n_total).tolist()
        for index, value in zip(chunk, values, strict=True):
            effects[index] = value
        if on_chunk is not None:
            on_chunk(chunk, values)
    return effects


def _ranks(values: Tensor) -> Tensor:
    """Ranks 1…n with ties given their average rank."""
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    for value in torch.unique(values):
        tied = values == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equal-length sequences (NaN when either is constant)."""
    x, y = _ranks(torch.tensor(a, dtype=torch.float64)), _ranks(torch.tensor(b, dtype=torch.float64))
    x, y = x - x.mean(), y - y.mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else float("nan")


def top_k_recall(estimate: Sequence[float], exact: Sequence[float], k: int) -> float:
    """Of the ``k`` largest |exact| effects, the fraction also among the ``k`` largest |estimates|."""
    k = min(k, len(exact))
    top_estimate = set(torch.argsort(torch.tensor(estimate).abs(), descending=True, stable=True)[:k].tolist())
    top_exact = set(torch.argsort(torch.tensor(exact).abs(), descending=True, stable=True)[:k].tolist())
    return len(top_estimate & top_exact) / k if k else float("nan")


@dataclass
class Agreement:
    """How the estimate compares with exact patching over ``scope``."""

    scope: str  # e.g. "top 20 nodes" or "all 270 heads"
    n: int
    spearman: float
    recall: float | None  # top-k recall; None where the exact ranking of every node is unknown
    k: int | None
    mean_abs_error: float

    def to_dict(self) -> dict:
        return {"scope": self.scope, "n": self.n, "spearman": self.spearman, "top_k_recall": self.recall,
                "k": self.k, "mean_abs_error": self.mean_abs_error}


def agreement(scope: str, estimate: Sequence[float], exact: Sequence[float], k: int | None) -> Agreement:
    error = float(torch.tensor(estimate, dtype=torch.float64).sub(torch.tensor(exact, dtype=torch.float64))
                  .abs().mean()) if estimate else float("nan")
    recall = top_k_recall(estimate, exact, k) if k is not None else None
    return Agreement(scope, len(estimate), spearman(estimate, exact), recall, k, error)
