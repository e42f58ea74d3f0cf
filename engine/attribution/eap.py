"""Edge attribution patching (EAP, and EAP-IG with integrated gradients) between components.

Upstream nodes write into the residual stream: the token embedding, every head (its ``z``
slice through the output projection) and every MLP. Downstream nodes read it: every
attention block and MLP (through their pre-norm) and the unembedding (through the final
norm). An edge's score is ``Δ(upstream output) · ∂metric/∂(downstream input)``, with the
gradient on a copy of the downstream input so it holds that component's path only. A
head's outgoing edges therefore sum to its node score, which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.attribution.nodes import Graph
from engine.attribution.passes import PassRecord


@dataclass(frozen=True)
class ScoredEdge:
    source: str
    target: str
    score: float


@dataclass
class EdgeScores:
    sources: list[str]  # embed, then per layer its heads and its MLP
    targets: list[str]  # per layer its attention block and MLP, then logits
    scores: Tensor  # [sources, targets], float64; zero where no edge exists
    allowed: Tensor  # [sources, targets], bool: the source runs before the target

    def add(self, other: EdgeScores) -> None:
        self.scores += other.scores

    def ranked(self, n: int) -> list[ScoredEdge]:
        """The ``n`` edges with the largest |score|; ties by source then target order."""
        flat = self.scores.masked_fill(~self.allowed, 0.0).abs().flatten()
        count = min(n, int(self.allowed.sum()))
        order = torch.argsort(flat, descending=True, stable=True)[:count]
        width = len(self.targets)
        return [ScoredEdge(self.sources[i // width], self.targets[i % width], float(self.scores.flatten()[i]))
                for i in order.tolist()]

    def outgoing(self) -> Tensor:
        """Each source's total over its edges (for a head: its node score)."""
        return (self.scores * self.allowed).sum(dim=1)


def edge_layout(graph: Graph) -> tuple[list[str], list[str], Tensor]:
    """Source and target names, and which edges exist (a source feeds only later components)."""
    layers, heads = graph.n_layers, graph.n_heads
    sources, source_stage = ["embed"], [-1.0]
    for layer in range(layers):
        sources += [f"L{layer}.attn.h{h}" for h in range(heads)] + [f"L{layer}.mlp"]
        source_stage += [layer + 0.25] * heads + [layer + 0.75]
    targets, target_stage = [], []
    for layer in range(layers):
        targets += [f"L{layer}.attn", f"L{layer}.mlp"]
        target_stage += [layer + 0.0, layer + 0.5]
    targets.append("logits")
    target_stage.append(float(layers))
    allowed = torch.tensor(source_stage)[:, None] < torch.tensor(target_stage)[None, :]
    return sources, targets, allowed


def _head_outputs(o_proj: nn.Module, delta_z: Tensor, n_heads: int) -> Tensor:
    """Each head's change in the residual stream, ``[H, B, T, d_model]``, through the output projection."""
    batch, length, width = delta_z.shape
    if type(o_proj) is nn.Linear:  # each head through its own columns: 1/H of the masked product's work
        per_head_weight = o_proj.weight.unflatten(1, (n_heads, width // n_heads))  # [d_model, H, dh]
        return torch.einsum("bthk,dhk->hbtd", delta_z.unflatten(-1, (n_heads, -1)), per_head_weight)
    mask = torch.eye(n_heads, dtype=delta_z.dtype, device=delta_z.device).repeat_interleave(width // n_heads, dim=1)
    per_head = delta_z[None] * mask[:, None, None, :]  # [H, B, T, H*dh], one head kept per slice
    zero = o_proj(torch.zeros_like(delta_z[:1, :1]))  # the bias, if any, is no head's contribution
    return o_proj(per_head) - zero


def edge_scores(model: nn.Module, graph: Graph, clean: PassRecord, corrupt: PassRecord, grads: dict) -> EdgeScores:
    """Every edge's ``Δ(source output) · gradient at the target input``, summed over pairs and positions."""
    sources, targets, allowed = edge_layout(graph)

    def delta(key) -> Tensor:
        return clean.values[key] - corrupt.values[key]

    with torch.no_grad():
        outputs = [delta(("embed", -1))[None]]
        for layer, sites in enumerate(graph.layers):
            o_proj = model.get_submodule(sites.z)
            outputs.append(_head_outputs(o_proj, delta(("z", layer)), graph.n_heads))
            outputs.append(delta(("mlp", layer))[None])
        upstream = torch.cat(outputs).double()  # [U, B, T, D]
        keys = [(role, layer) for layer in range(graph.n_layers) for role in ("attn_in", "mlp_in")]
        downstream = torch.stack([grads[key] for key in keys] + [grads[("logits_in", -1)]]).double()
        scores = torch.einsum("ubtd,vbtd->uv", upstream, downstream)
    return EdgeScores(sources, targets, scores * allowed, allowed)
