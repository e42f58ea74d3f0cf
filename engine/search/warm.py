"""Warm starts: one forward pass of the base recipe that tells the optimiser where to look first.

``block-influence`` is ShortGPT's Block Influence (Men et al. 2024): for every output layer
of the base recipe, BI = 1 − the mean over the scored tokens of cos(layer input, layer output).
A layer that barely turns the residual stream is cheap to drop. The pass runs as one job on
the search's backend, on the objective's own tokens, and costs one evaluation of the budget.
Drop knobs then start from the BI ranking: the prior point scores each candidate by its rank
(lowest BI highest), so its top ``count`` are the lowest-BI layers; its neighbours swap one of
those for the next-ranked candidates.

``screen`` adds a measured step: after the BI pass, the single-layer drop of each of the
``screen_layers`` lowest-BI candidates is evaluated as an ordinary trial (journaled, one
evaluation each). BI is cheap but only loosely tracks what a drop costs the objective; the
single drops measure it. Candidates are then ranked by their single-drop value (unscreened
ones after, by BI), so the prior point drops the ``count`` best singles and its neighbours swap
in the next-best ones. The optimiser (Optuna / ``cma``) searches from there as before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.search.trial import TrialTask

if TYPE_CHECKING:
    from engine.search.spec import SearchSpec

WARM_STARTS = ("block-influence", "screen")
WARM_COST = 1  # evaluations of the budget one warm-start pass is counted as
SCREEN_LAYERS = 12  # default single drops a screen evaluates (each one evaluation of the budget)
NEIGHBOUR_DEPTH = 2  # each of the lowest-BI layers is swapped for the next this many candidates


@dataclass(frozen=True)
class InfluenceTask:
    """The base recipe and the objective's token count: everything the pass needs."""

    recipe: dict[str, Any]
    max_tokens: int


def block_influence(task: InfluenceTask) -> list[float]:
    """BI of every output layer of ``task.recipe``, from one forward pass (torch pinned to one thread)."""
    import torch

    from engine.run import run
    from engine.search.trial import in_memory

    with in_memory(task.recipe, task.max_tokens) as (base, ids, _):
        count = len(task.recipe["layers"])
        points = [f"L{i}.{side}" for i in range(count) for side in ("in", "out")]
        tap = run(base, ids.unsqueeze(0).to(base.input_device), capture=points, stop_after_capture=True).tap
        influence = []
        for i in range(count):
            # position 0 is the BOS context token, never scored by the objective
            h_in, h_out = tap[f"L{i}.in"][0, 1:].double(), tap[f"L{i}.out"][0, 1:].double()
            cosine = torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1)
            influence.append(float(1.0 - cosine.mean()))
    return influence


def _order(influence: list[float], singles: dict[int, float] | None) -> Callable[[int], tuple[int, float, int]]:
    """Sort key of a candidate layer: screened ones first by their single-drop value, then the rest by BI."""
    measured = singles or {}
    return lambda layer: (0, measured[layer], layer) if layer in measured else (1, influence[layer], layer)


def prior_point(spec: SearchSpec, influence: list[float], singles: dict[int, float] | None = None) -> list[float]:
    """A point whose drop scores follow the candidates' order (first → 0.9, last → 0.1); other knobs at 0.5.

    The order is the BI ranking, or with ``singles`` (layer → single-drop objective) the screen's."""
    key = _order(influence, singles)
    point: list[float] = []
    for knob in spec.knobs:
        if knob.kind != "drop":
            point.append(0.5)
            continue
        ranked = sorted(range(knob.size), key=lambda i: key(knob.first + i))
        scores = [0.0] * knob.size
        for rank, i in enumerate(ranked):
            # inside [0.1, 0.9]: CMA-ES's bound handling moves points within 0.05 of a bound
            scores[i] = round(0.9 - 0.8 * rank / (knob.size - 1), 6)
        point.extend(scores)
    return point


def warm_points(spec: SearchSpec, influence: list[float], singles: dict[int, float] | None = None) -> list[list[float]]:
    """The prior point, then its neighbours: one of its ``count`` first candidates swapped for one
    of the next ``NEIGHBOUR_DEPTH`` (per drop knob, weakest-ranked member first)."""
    prior = prior_point(spec, influence, singles)
    points = [prior]
    offset = 0
    for knob in spec.knobs:
        if knob.kind == "drop":
            by_rank = sorted(range(offset, offset + knob.size), key=lambda j: -prior[j])
            inside = by_rank[:knob.count]
            outside = by_rank[knob.count:knob.count + NEIGHBOUR_DEPTH]
            for out in outside:
                for member in reversed(inside):
                    neighbour = list(prior)
                    neighbour[member], neighbour[out] = prior[out], prior[member]
                    points.append(neighbour)
        offset += knob.size
    return points


def ranking(spec: SearchSpec, influence: list[float]) -> list[int]:
    """The drop candidates (output layers of the base recipe), lowest BI first."""
    candidates = [knob.first + i for knob in spec.knobs if knob.kind == "drop" for i in range(knob.size)]
    return sorted(dict.fromkeys(candidates), key=lambda layer: (influence[layer], layer))


def screen_tasks(spec: SearchSpec, influence: list[float]) -> list[tuple[int, TrialTask]]:
    """Trials 0..N-1 of a screen, each with the layer it drops: the base recipe without one of the
    N lowest-BI candidates.

    A single drop is no point of the search space (a drop knob removes ``count`` layers), so its
    journaled point only marks the dropped candidate: 1.0 there, 0.0 at the other drop
    coordinates, 0.5 on other knobs."""
    tasks = []
    for number, layer in enumerate(ranking(spec, influence)[:spec.screen_layers]):
        point: list[float] = []
        for knob in spec.knobs:
            point.extend([float(knob.first + i == layer) for i in range(knob.size)] if knob.kind == "drop" else [0.5])
        doc = copy.deepcopy(spec.base)
        doc["layers"] = [entry for i, entry in enumerate(doc["layers"]) if i != layer]
        doc["name"] = f"{spec.name}-screen-L{layer}"
        tasks.append((layer, TrialTask(number, tuple(point), doc, tuple(spec.objectives), spec.max_tokens)))
    return tasks

