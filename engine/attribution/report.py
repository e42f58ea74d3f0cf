"""Typed attribution results, their JSON form and their snapshot (safetensors + metadata) form."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from engine.attribution.atp import NodeScores
from engine.attribution.eap import EdgeScores, ScoredEdge
from engine.attribution.faithfulness import Faithfulness
from engine.attribution.nodes import Node
from engine.attribution.recheck import Agreement

METHODS = ("atp", "eap", "eap-ig")


@dataclass
class ScoredNode:
    node: Node
    address: str
    score: float
    exact: float | None = None  # filled by the re-check

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "kind": self.node.kind, "layer": self.node.layer, "head": self.node.head,
                "position": self.node.position, "score": self.score, "exact": self.exact}


@dataclass
class AttributionReport:
    model: str
    config_hash: str
    method: str
    ig_steps: int
    convention: str
    task: str | None
    n_pairs: int
    lengths: list[int]  # token length of each group of pairs
    tokens: list[str]  # the first clean prompt's tokens
    clean_metric: float  # mean logit difference on the clean prompts
    corrupt_metric: float
    n_layers: int
    n_heads: int
    scores: NodeScores
    nodes: list[ScoredNode] = field(default_factory=list)  # every node, by |score|, largest first
    edges: EdgeScores | None = None
    recheck: Agreement | None = None  # the top-k nodes, patched exactly
    head_check: Agreement | None = None  # every head, patched exactly (optional, slower)
    exact_heads: list[list[float]] | None = None
    faithfulness: Faithfulness | None = None  # the top-n heads and MLPs patched together
    seconds: float = 0.0

    def top_nodes(self, n: int) -> list[ScoredNode]:
        return self.nodes[:n]

    def top_edges(self, n: int) -> list[ScoredEdge]:
        return self.edges.ranked(n) if self.edges is not None else []

    def head_grid(self) -> list[list[float]]:
        """Head scores as ``[layer][head]``, for heat maps."""
        return self.scores.heads.tolist()

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        return {
            "model": self.model, "method": self.method, "ig_steps": self.ig_steps, "convention": self.convention,
            "task": self.task, "pairs": self.n_pairs, "lengths": self.lengths, "tokens": self.tokens,
            "clean_metric": self.clean_metric, "corrupt_metric": self.corrupt_metric, "seconds": self.seconds,
            "recheck": self.recheck.to_dict() if self.recheck else None,
            "head_check": self.head_check.to_dict() if self.head_check else None,
            "faithfulness": self.faithfulness.to_dict() if self.faithfulness else None,
            "top_nodes": [n.to_dict() for n in self.top_nodes(top)],
            "top_edges": [{"source": e.source, "target": e.target, "score": e.score} for e in self.top_edges(top)],
            "heads": self.head_grid(), "attn": self.scores.attn.tolist(), "mlp": self.scores.mlp.tolist(),
            "resid": self.scores.resid.tolist(), "exact_heads": self.exact_heads,
        }


def to_snapshot(report: AttributionReport):
    """The report as a garage snapshot, so ``garage diff`` compares two attributions address by address."""
    from engine.snapshots import SNAPSHOT_FORMAT, Snapshot

    tensors = {"attribution.heads": report.scores.heads, "attribution.attn": report.scores.attn,
               "attribution.mlp": report.scores.mlp, "attribution.resid": report.scores.resid}
    if report.edges is not None:
        tensors["attribution.edges"] = report.edges.scores
    # the re-checked nodes differ run to run, so they travel in the metadata, not as a tensor to diff
    checked = [n for n in report.nodes if n.exact is not None]
    metadata = {
        "format": SNAPSHOT_FORMAT, "kind": "attribution", "model": report.model, "config_hash": report.config_hash,
        "prompt": report.task or (report.tokens and "".join(report.tokens)) or "", "method": report.method,
        "ig_steps": report.ig_steps, "convention": report.convention, "pairs": report.n_pairs,
        "clean_metric": report.clean_metric, "corrupt_metric": report.corrupt_metric,
        "recheck": report.recheck.to_dict() if report.recheck else None,
        "faithfulness": report.faithfulness.to_dict() if report.faithfulness else None,
        "checked_nodes": [n.to_dict() for n in checked], "interventions": [],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metadata["addresses"] = list(tensors)
    return Snapshot({name: value.contiguous() for name, value in tensors.items()}, metadata)
