"""One attribution job: score every node (and edge), then re-check the top nodes exactly.

``Attributor`` works on any module with a graph and a forward function, so a test can drive
it on a hand-built linear model; ``attribute`` is the entry point for an open model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from engine.attribution.atp import CONVENTION, Forward, GroupPasses, NodeScores, gradient_passes, node_scores
from engine.attribution.eap import EdgeScores, edge_scores
from engine.attribution.faithfulness import DEFAULT_SIZES, Faithfulness, circuit_effects, ranked_components
from engine.attribution.nodes import Graph, Node, all_nodes, graph_for
from engine.attribution.recheck import Agreement, agreement, exact_effects
from engine.attribution.report import METHODS, AttributionReport, ScoredNode
from engine.attribution.tasks import PairGroup, PromptPair, encode_pairs
from engine.errors import GarageError
from engine.limits import MAX_IG_STEPS, check_count
from engine.progress import Progress
from engine.progress import notify as _notify

DEFAULT_TOP = 20
DEFAULT_IG_STEPS = 5


def causal_lm_forward(model: nn.Module, ids: Tensor) -> Tensor:
    """Last-position logits of a transformers causal LM (the LM head runs on the last token only)."""
    return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]


class Attributor:
    """Scores nodes of ``graph`` in ``model`` for prompt ``groups``; keeps the passes for the re-check."""

    def __init__(self, model: nn.Module, graph: Graph, forward: Forward, groups: Sequence[PairGroup], *,
                 name: str = "model", config_hash: str = "", tokens: list[str] | None = None,
                 task: str | None = None) -> None:
        self.model, self.graph, self.forward, self.groups = model, graph, forward, list(groups)
        self.name, self.config_hash, self.tokens, self.task = name, config_hash, tokens or [], task
        self.n_total = sum(group.size for group in self.groups)
        self.common_length = min(group.length for group in self.groups)
        uniform = len({group.length for group in self.groups}) == 1
        self.label_length = self.common_length if uniform else None
        self.passes: list[GroupPasses] = []

    def nodes(self) -> list[Node]:
        return all_nodes(self.graph, self.common_length)

    def score(self, method: str = "atp", ig_steps: int = DEFAULT_IG_STEPS, progress: Progress | None = None,
              cancel: threading.Event | None = None) -> AttributionReport:
        """Every node's estimate (and, for ``eap``/``eap-ig``, every edge's), ranked by |score|."""
        if method not in METHODS:
            raise GarageError(f"unknown attribution method '{method}'; use one of: {', '.join(METHODS)}")
        if method == "eap-ig":
            check_count(ig_steps, "--ig-steps", MAX_IG_STEPS, minimum=1)
        # a layout whose blocks pass their output through a norm (Gemma's sandwich) has no linear
        # edges; there eap-ig still gives its node scores, and plain eap would only repeat atp
        edges = method != "atp" and self.graph.has_edges
        if method == "eap" and not self.graph.has_edges:
            raise GarageError(f"edge attribution needs a pre-norm transformer; '{self.name}' is not one "
                              "(use --method atp, or eap-ig for integrated-gradient node scores)")
        steps = ig_steps if method == "eap-ig" else 0
        started = time.perf_counter()
        scores = NodeScores.zeros(self.graph, self.common_length)
        edge_total: EdgeScores | None = None
        self.passes = []
        for index, group in enumerate(self.groups):
            _notify(progress, f"{method} passes", index / len(self.groups))
            passes = gradient_passes(self.model, self.graph, self.forward, group, self.n_total,
                                     ig_steps=steps, edges=edges, cancel=cancel)
            self.passes.append(passes)
            scores.add(node_scores(self.graph, passes.clean, passes.corrupt, passes.grads, self.common_length))
            if edges:
                part = edge_scores(self.model, self.graph, passes.clean, passes.corrupt, passes.grads)
                if edge_total is None:
                    edge_total = part
                else:
                    edge_total.add(part)
        seconds = time.perf_counter() - started
        _notify(progress, f"{method} passes", 1.0)
        ranked = sorted((ScoredNode(node, node.address(self.label_length), scores.value(node))
                         for node in self.nodes()), key=lambda n: -abs(n.score))
        lengths = [group.length for group in self.groups]
        clean = sum(float(p.clean_metric.sum()) for p in self.passes) / self.n_total
        corrupt = sum(float(p.corrupt_metric.sum()) for p in self.passes) / self.n_total
        return AttributionReport(
            self.name, self.config_hash, method, steps, CONVENTION, self.task, self.n_total, lengths, self.tokens,
            clean, corrupt, self.graph.n_layers, self.graph.n_heads, scores, ranked, edge_total, seconds=seconds)

    def exact(self, nodes: Sequence[Node], progress: Progress | None = None,
              cancel: threading.Event | None = None,
              on_chunk: Callable[[list[int], list[float]], None] | None = None) -> list[float]:
        """Each node's true effect by activation patching, summed over groups (mean over pairs).

        ``on_chunk(indices, totals)`` reports nodes as their last group's pass settles them.
        """
        if not self.passes:
            raise GarageError("score the nodes first: the exact re-check reuses the clean run")
        totals = [0.0] * len(nodes)
        for number, (group, passes) in enumerate(zip(self.groups, self.passes, strict=True)):
            _notify(progress, "exact re-check", number / len(self.groups))
            last = number == len(self.groups) - 1

            def chunk_done(indices: list[int], values: list[float], last: bool = last) -> None:
                for index, value in zip(indices, values, strict=True):
                    totals[index] += value
                if last and on_chunk is not None:
                    on_chunk(indices, [totals[index] for index in indices])

            exact_effects(self.model, self.graph, self.forward, group, passes.clean, passes.corrupt,
                          passes.corrupt_metric, nodes, self.n_total, cancel=cancel, on_chunk=chunk_done)
        _notify(progress, "exact re-check", 1.0)
        return totals

    def recheck(self, report: AttributionReport, top: int = DEFAULT_TOP, progress: Progress | None = None,
                cancel: threading.Event | None = None,
                on_chunk: Callable[[list[int], list[float]], None] | None = None) -> Agreement:
        """Patch the ``top`` nodes exactly; fill ``report.nodes[i].exact`` and ``report.recheck``."""
        if top < 1:
            raise GarageError(f"--top must be at least 1, got {top}")
        chosen = report.nodes[:top]

        def fill(indices: list[int], values: list[float]) -> None:
            for index, value in zip(indices, values, strict=True):
                chosen[index].exact = value
            if on_chunk is not None:
                on_chunk(indices, values)

        exact = self.exact([n.node for n in chosen], progress, cancel, fill)
        for entry, value in zip(chosen, exact, strict=True):
            entry.exact = value
        report.recheck = agreement(f"top {len(chosen)} nodes", [n.score for n in chosen], exact, None)
        return report.recheck

    def faithfulness(self, report: AttributionReport, sizes: Sequence[int] = DEFAULT_SIZES,
                     cancel: threading.Event | None = None) -> Faithfulness:
        """Per n, the fraction of clean − corrupted the top-n heads and MLPs carry alone (the rest corrupted)."""
        if not self.passes:
            raise GarageError("score the nodes first: circuit faithfulness reuses the clean run")
        ranked = ranked_components(self.graph, report.scores)
        sizes = sorted({min(int(n), len(ranked)) for n in sizes if int(n) > 0})
        sets = [ranked[:n] for n in sizes]
        totals = [0.0] * len(sets)
        for group, passes in zip(self.groups, self.passes, strict=True):
            values = circuit_effects(self.model, self.graph, self.forward, group, passes.corrupt,
                                     passes.corrupt_metric, sets, self.n_total, cancel=cancel)
            totals = [total + value for total, value in zip(totals, values, strict=True)]
        difference = report.clean_metric - report.corrupt_metric
        recovered = [total / difference if difference else float("nan") for total in totals]
        report.faithfulness = Faithfulness("heads and MLPs", sizes, recovered, difference)
        return report.faithfulness

    def check_heads(self, report: AttributionReport, k: int = 10, progress: Progress | None = None,
                    cancel: threading.Event | None = None) -> Agreement:
        """Patch every head exactly: ρ and top-``k`` recall of the estimate over all heads."""
        heads = [Node("head", layer, head) for layer in range(self.graph.n_layers)
                 for head in range(self.graph.n_heads)]
        exact = self.exact(heads, progress, cancel)
        estimate = [float(report.scores.heads[n.layer, n.head]) for n in heads]
        width = self.graph.n_heads
        report.exact_heads = [exact[layer * width:(layer + 1) * width] for layer in range(self.graph.n_layers)]
        report.head_check = agreement(f"all {len(heads)} heads", estimate, exact, k)
        return report.head_check


def attributor_for(loaded, pairs: list[PromptPair], task: str | None = None) -> Attributor:
    """An ``Attributor`` over an open causal LM and validated prompt pairs."""
    graph = graph_for(loaded)
    groups = encode_pairs(loaded, pairs)
    first = loaded.tokenizer(pairs[0].clean).input_ids
    tokens = [loaded.tokenizer.decode([token]) for token in first]
    return Attributor(loaded.model, graph, causal_lm_forward, groups, name=loaded.name,
                      config_hash=loaded.config_hash, tokens=tokens, task=task)


def attribute(loaded, pairs: list[PromptPair], *, method: str = "atp", ig_steps: int = DEFAULT_IG_STEPS,
              top: int = DEFAULT_TOP, check_heads: bool = False, task: str | None = None,
              progress: Progress | None = None, cancel: threading.Event | None = None) -> AttributionReport:
    """Score every node of ``loaded`` for ``pairs``, then re-check the ``top`` nodes by exact patching
    and measure the faithfulness of the top-n circuits."""
    if loaded.structure_only:
        raise GarageError(f"'{loaded.name}' is open structure-only (no weights); open it with weights to attribute")
    job = attributor_for(loaded, pairs, task)
    report = job.score(method, ig_steps, progress, cancel)
    if top > 0:
        job.recheck(report, top, progress, cancel)
        job.faithfulness(report, cancel=cancel)  # one batched pass: the top-n circuits, n in DEFAULT_SIZES
    if check_heads:
        job.check_heads(report, progress=progress, cancel=cancel)
    return report
