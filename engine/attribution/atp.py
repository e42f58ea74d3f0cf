"""Attribution patching (AtP) and its integrated-gradients variant, per node.

Convention: **denoising**. A node's score estimates how much the metric (the logit
difference ``logit(answer) − logit(wrong)`` at the last position, averaged over pairs) rises
when that node's clean activation is patched into the corrupted run:
``(a_clean − a_corrupt) · ∂metric/∂a``, the gradient taken on the corrupted run. Cost: one
forward pass over the clean and corrupted rows together and one backward (activation
gradients only).
With integrated gradients (``ig_steps`` K) the gradient is averaged over K points on the
straight line from the corrupted to the clean token embeddings (midpoints), run as one batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.attribution.nodes import Graph, Node
from engine.attribution.passes import Key, PassRecord, SiteEdit, answer_readout, instrumented
from engine.attribution.tasks import PairGroup

Forward = Callable[[nn.Module, Tensor], Tensor]  # (model, ids [B, T]) -> last-position logits [B, V]
CONVENTION = ("denoising: score ≈ metric(corrupted run with the node's clean activation patched in) "
              "− metric(corrupted run); metric = logit(answer) − logit(wrong) at the last token, mean over pairs")


def metric_rows(logits: Tensor, group: PairGroup, repeat: int = 1) -> Tensor:
    """Per-row logit difference ``logit(answer) − logit(wrong)`` (rows repeat the group ``repeat`` times)."""
    answer = group.answer_ids.repeat(repeat)[:, None]
    wrong = group.wrong_ids.repeat(repeat)[:, None]
    return (logits.gather(1, answer) - logits.gather(1, wrong)).squeeze(1)


@dataclass
class NodeScores:
    """Scores per node family: heads ``[L, H]``, blocks ``[L]``, residual positions ``[L, P]`` (last P tokens)."""

    heads: Tensor
    attn: Tensor
    mlp: Tensor
    resid: Tensor

    @classmethod
    def zeros(cls, graph: Graph, positions: int) -> NodeScores:
        layers = graph.n_layers
        return cls(torch.zeros(layers, graph.n_heads, dtype=torch.float64),
                   torch.zeros(layers, dtype=torch.float64), torch.zeros(layers, dtype=torch.float64),
                   torch.zeros(layers, positions, dtype=torch.float64))

    def add(self, other: NodeScores) -> None:
        self.heads += other.heads
        self.attn += other.attn
        self.mlp += other.mlp
        self.resid += other.resid

    def value(self, node: Node) -> float:
        if node.kind == "head":
            return float(self.heads[node.layer, node.head])
        if node.kind in ("attn", "mlp"):
            return float(getattr(self, node.kind)[node.layer])
        return float(self.resid[node.layer, self.resid.shape[1] + int(node.position or 0)])


def node_scores(graph: Graph, clean: PassRecord, corrupt: PassRecord, grads: dict, positions: int) -> NodeScores:
    """``(a_clean − a_corrupt) · gradient`` summed over pairs, positions and features, per node."""
    layers = range(graph.n_layers)

    def products(role: str) -> Tensor:  # [L, B, T, D]: one product per family, not one per layer
        keys = [(role, layer) for layer in layers]
        delta = (torch.stack([clean.values[key] for key in keys]).double()
                 - torch.stack([corrupt.values[key] for key in keys]).double())
        return delta * torch.stack([grads[key] for key in keys]).double()

    return NodeScores(products("z").unflatten(-1, (graph.n_heads, -1)).sum(dim=(1, 2, 4)),
                      products("attn").sum(dim=(1, 2, 3)), products("mlp").sum(dim=(1, 2, 3)),
                      products("resid").sum(dim=(1, 3))[:, -positions:])


@dataclass
class GroupPasses:
    """One group's clean and corrupted records, the gradients used, and the metric on both runs."""

    clean: PassRecord
    corrupt: PassRecord
    grads: dict
    clean_metric: Tensor  # [B]
    corrupt_metric: Tensor  # [B]


def gradient_passes(model: nn.Module, graph: Graph, forward: Forward, group: PairGroup, n_total: int, *,
                    ig_steps: int = 0, edges: bool = False,
                    cancel: threading.Event | None = None) -> GroupPasses:
    """The passes AtP (``ig_steps`` 0) or integrated gradients (``ig_steps`` K) need for one group.

    They run as one batch: the clean rows, the corrupted rows and, for integrated gradients, K
    rows per pair on the path between their embeddings; the metric is summed over the corrupted
    (or path) rows only, so the clean rows get a zero gradient. At a few tokens a pass costs
    about one read of the weights however many rows it has, so one pass forward and one
    backward is close to two forward passes. The metric is divided by ``n_total`` (all pairs in
    all groups), so scores add up over groups into the mean over pairs.
    """
    size, steps = group.size, max(ig_steps, 0)
    ids = torch.cat([group.clean_ids, group.corrupt_ids] + [group.corrupt_ids] * steps)
    edits: dict[Key, list[SiteEdit]] = {}
    if steps:
        def interpolate(embedded: Tensor) -> Tensor:
            e_clean, e_corrupt = embedded[:size], embedded[size:2 * size]
            alphas = (torch.arange(steps, dtype=e_clean.dtype, device=e_clean.device) + 0.5) / steps
            alphas = alphas.repeat_interleave(size)[:, None, None]  # row k*B + b is step k of pair b
            path = e_corrupt.repeat(steps, 1, 1) + alphas * (e_clean - e_corrupt).repeat(steps, 1, 1)
            return torch.cat([embedded[:2 * size], path])

        edits[("embed", -1)] = [interpolate]
    record = PassRecord()
    scored = size if steps == 0 else 2 * size  # the rows the metric's gradient comes from
    with answer_readout(model, graph, group) as readout, torch.enable_grad(), \
            instrumented(model, graph, record, grads=True, edges=edges, edits=edits, cancel=cancel):
        rows = metric_rows(forward(model, ids), readout, 2 + steps)
        (rows[scored:].sum() / (n_total * max(steps, 1))).backward()
    grads = {key: g[scored:].unflatten(0, (max(steps, 1), size)).sum(dim=0) for key, g in record.grads.items()}
    clean, corrupt = _split(record, size, copy=steps > 0)
    rows = rows.detach()
    return GroupPasses(clean, corrupt, grads, rows[:size], rows[size:2 * size])


def _split(record: PassRecord, size: int, *, copy: bool) -> tuple[PassRecord, PassRecord]:
    """The clean rows and the corrupted rows of a batched pass as two records.

    ``copy`` keeps only those rows alive (not the integrated-gradient path rows beside them).
    """
    def rows(value: Tensor, part: slice) -> Tensor:
        return value[part].clone() if copy else value[part]

    first, second = slice(0, size), slice(size, 2 * size)
    return (PassRecord({key: rows(value, first) for key, value in record.values.items()},
                       tuple_outputs=set(record.tuple_outputs)),
            PassRecord({key: rows(value, second) for key, value in record.values.items()},
                       tuple_outputs=set(record.tuple_outputs)))
