"""Circuit faithfulness: how much of the clean−corrupted difference the top-n nodes recover together.

The per-node re-check asks "does the estimate rank each node's *lone* patch right?"; a circuit
method (EAP-IG, Hanna et al. 2024) is judged instead by the set it picks. For each size n the
n components (heads and MLPs) with the largest |score| form the circuit: the clean prompt runs
with every *other* head and MLP held at its corrupted activation, the circuit's components
computing freely from what reaches them (the node form of the paper's faithfulness, where edges
outside the circuit carry corrupted values). Recovered = (metric − corrupted) / (clean −
corrupted): 1.0 means the n components alone carry the clean behaviour. Patching only the
top-n *in* (fixed clean values) would not do: one late MLP's clean output alone restores ~84%
of the capitals difference, so every ranking would look faithful at n = 1.
One batched pass per group: one row per (size, pair).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.attribution.atp import Forward, NodeScores, metric_rows
from engine.attribution.nodes import Graph, Node
from engine.attribution.passes import PassRecord, SiteEdit, instrumented
from engine.attribution.tasks import PairGroup

DEFAULT_SIZES = (1, 2, 5, 10, 20, 50)


@dataclass
class Faithfulness:
    """Fraction of ``clean − corrupted`` the top ``sizes[i]`` components carry with all others corrupted."""

    scope: str  # what was ranked, e.g. "heads and MLPs"
    sizes: list[int]
    recovered: list[float]
    difference: float  # mean clean − corrupted metric the fractions are of

    def to_dict(self) -> dict:
        return {"scope": self.scope, "sizes": self.sizes, "recovered": self.recovered,
                "difference": self.difference}


def ranked_components(graph: Graph, scores: NodeScores) -> list[Node]:
    """Heads and MLPs by |score|, largest first (ties in run order): the candidates of a circuit."""
    nodes = [Node("head", layer, head) for layer in range(graph.n_layers) for head in range(graph.n_heads)]
    nodes += [Node("mlp", layer) for layer in range(graph.n_layers)]
    values = torch.cat([scores.heads.flatten(), scores.mlp]).abs()
    order = torch.argsort(values, descending=True, stable=True).tolist()
    return [nodes[i] for i in order]


def _masked_patch(mask: Tensor, source: Tensor) -> SiteEdit:
    """Where ``mask`` ([rows, 1, width], bool) is set, take ``source`` ([rows, T, width]); keep the run elsewhere."""
    def edit(value: Tensor) -> Tensor:
        return torch.where(mask, source.to(value.dtype), value)
    return edit


def circuit_effects(model: nn.Module, graph: Graph, forward: Forward, group: PairGroup, corrupt: PassRecord,
                    corrupt_metric: Tensor, circuits: Sequence[Sequence[Node]], n_total: int, *,
                    cancel: threading.Event | None = None) -> list[float]:
    """This group's share of ``metric − corrupted`` per circuit: the clean prompt with every head and MLP
    outside the circuit held at its corrupted activation."""
    size, rows = group.size, group.size * len(circuits)
    keep: dict[tuple[str, int], Tensor] = {}  # True where the run's own value stays (the circuit)
    for layer in range(graph.n_layers):
        for key in (("z", layer), ("mlp", layer)):
            keep[key] = torch.zeros(rows, 1, corrupt.values[key].shape[-1], dtype=torch.bool)
    for slot, chosen in enumerate(circuits):
        where = slice(slot * size, (slot + 1) * size)
        for node in chosen:
            if node.kind == "head":
                start = int(node.head or 0) * graph.d_head
                keep[("z", node.layer)][where, :, start:start + graph.d_head] = True
            elif node.kind == "mlp":
                keep[("mlp", node.layer)][where] = True
            else:
                raise ValueError(f"a circuit holds heads and MLPs, not {node.kind} nodes")
    edits: dict[tuple[str, int], list[SiteEdit]] = {
        key: [_masked_patch(~mask.to(corrupt.values[key].device), corrupt.values[key].repeat(len(circuits), 1, 1))]
        for key, mask in keep.items()}
    with torch.no_grad(), instrumented(model, graph, edits=edits, cancel=cancel):
        logits = forward(model, group.clean_ids.repeat(len(circuits), 1))
    values = metric_rows(logits, group, len(circuits)).double().view(len(circuits), size)
    return ((values - corrupt_metric.double()[None]).sum(dim=1) / n_total).tolist()
