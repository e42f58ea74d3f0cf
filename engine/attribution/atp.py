"""Attribution patching (AtP) and its integrated-gradients variant, per node.

Convention: **denoising**. A node's score estimates how much the metric (the logit
difference ``logit(answer) − logit(wrong)`` at the last position, averaged over pairs) rises
when that node's clean activation is patched into the corrupted run:
``(a_clean − a_corrupt) · ∂metric/∂a``, the gradient taken on the corrupted run. Cost: one
clean forward, one corrupted forward and one backward (activation gradients only).
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
from engine.attribution.passes import PassRecord, instrumented, no_grad_pass
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
    scores = NodeScores.zeros(graph, positions)

    def product(role: str, layer: int) -> Tensor:
        key = (role, layer)
        delta = clean.values[key].double() - corrupt.values[key].double()
        return delta * grads[key].double()

    for layer in range(graph.n_layers):
        scores.heads[layer] = product("z", layer).unflatten(-1, (graph.n_heads, -1)).sum(dim=(0, 1, 3))
        scores.attn[layer] = product("attn", layer).sum()
        scores.mlp[layer] = product("mlp", layer).sum()
        scores.resid[layer] = product("resid", layer).sum(dim=(0, 2))[-positions:]
    return scores


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

    The metric is divided by ``n_total`` (all pairs in all groups), so scores add up over groups
    into the mean over pairs.
    """
    if ig_steps <= 0:
        clean_logits, clean = no_grad_pass(model, graph, forward, group.clean_ids, cancel=cancel)
        corrupt = PassRecord()
        with torch.enable_grad(), instrumented(model, graph, corrupt, grads=True, edges=edges, cancel=cancel):
            logits = forward(model, group.corrupt_ids)
            rows = metric_rows(logits, group)
            (rows.sum() / n_total).backward()
        return GroupPasses(clean, corrupt, corrupt.grads, metric_rows(clean_logits, group).detach(), rows.detach())
    size = group.size
    # clean and corrupted rows share one pass: integrated gradients needs no gradient on either
    both_logits, both = no_grad_pass(model, graph, forward, torch.cat([group.clean_ids, group.corrupt_ids]),
                                     cancel=cancel)
    clean, corrupt = _split(both, size)
    clean_logits, corrupt_logits = both_logits[:size], both_logits[size:]
    e_clean, e_corrupt = clean.values[("embed", -1)], corrupt.values[("embed", -1)]
    alphas = ((torch.arange(ig_steps, dtype=e_clean.dtype, device=e_clean.device) + 0.5) / ig_steps)
    alphas = alphas.repeat_interleave(size)[:, None, None]  # row k*B + b is step k of pair b
    path = (e_corrupt.repeat(ig_steps, 1, 1) + alphas * (e_clean - e_corrupt).repeat(ig_steps, 1, 1))
    path.requires_grad_(True)
    steps = PassRecord()
    with torch.enable_grad(), instrumented(model, graph, steps, grads=True, edges=edges,
                                           embed_override=path, cancel=cancel):
        logits = forward(model, group.corrupt_ids.repeat(ig_steps, 1))
        (metric_rows(logits, group, ig_steps).sum() / (n_total * ig_steps)).backward()
    grads = {key: g.unflatten(0, (ig_steps, size)).sum(dim=0) for key, g in steps.grads.items()}
    return GroupPasses(clean, corrupt, grads, metric_rows(clean_logits, group), metric_rows(corrupt_logits, group))


def _split(record: PassRecord, size: int) -> tuple[PassRecord, PassRecord]:
    """A two-halves pass (clean rows, then corrupted rows) as two records."""
    first = PassRecord({key: value[:size] for key, value in record.values.items()},
                       tuple_outputs=set(record.tuple_outputs))
    second = PassRecord({key: value[size:] for key, value in record.values.items()},
                        tuple_outputs=set(record.tuple_outputs))
    return first, second
