"""Attribution at scale: AtP, EAP and EAP-IG over heads, blocks, positions and edges, with an exact re-check."""

from __future__ import annotations

from engine.attribution.atp import CONVENTION, NodeScores
from engine.attribution.attributor import DEFAULT_IG_STEPS, DEFAULT_TOP, Attributor, attribute, attributor_for
from engine.attribution.faithfulness import Faithfulness
from engine.attribution.nodes import Graph, LayerSites, Node, graph_for
from engine.attribution.recheck import Agreement, spearman, top_k_recall
from engine.attribution.report import METHODS, AttributionReport, ScoredNode, to_snapshot
from engine.attribution.tasks import PromptPair, load_task, task_names

__all__ = [
    "CONVENTION", "DEFAULT_IG_STEPS", "DEFAULT_TOP", "METHODS", "Agreement", "AttributionReport", "Attributor",
    "Faithfulness", "Graph", "LayerSites", "Node", "NodeScores", "PromptPair", "ScoredNode", "attribute",
    "attributor_for", "graph_for", "load_task", "spearman", "task_names", "to_snapshot", "top_k_recall",
]
