"""A trial's point (floats in [0, 1], one per searched coordinate) turned into a recipe document.

Every knob is continuous so TPE, NSGA-II and CMA-ES search the same space: a blend weight is
the float itself, a head transplant is on at ≥ 0.5, and a drop knob removes the ``count``
candidates with the highest scores (ties to the lower index), applied last so every knob's
layer index refers to the base recipe.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # spec.py calls trial_recipe, so a run-time import would be a loop
    from engine.search.spec import SearchSpec


def trial_recipe(spec: SearchSpec, point: list[float]) -> dict[str, Any]:
    """The recipe document for ``point`` (``spec.dimension`` floats in [0, 1])."""
    doc = copy.deepcopy(spec.base)
    layers: list[dict[str, Any]] = doc["layers"]
    dropped: set[int] = set()
    offset = 0
    for knob in spec.knobs:
        values = point[offset:offset + knob.size]
        offset += knob.size
        if knob.kind == "drop":
            ranked = sorted(range(knob.size), key=lambda i: (-values[i], i))
            dropped.update(knob.first + i for i in ranked[:knob.count])
        elif knob.kind == "blend":
            weight = min(max(float(values[0]), 0.0), 1.0)
            own = layers[knob.layer]["take"]
            entry: dict[str, Any] = {"blend": [own, knob.other], "method": knob.method}
            if knob.method == "slerp":
                entry["t"] = round(weight, 6)
            else:
                entry["weights"] = [round(1.0 - weight, 6), round(weight, 6)]
            layers[knob.layer] = entry
        elif values[0] >= 0.5:
            layers[knob.layer] = {**layers[knob.layer],
                                  "heads": [{"head": h, "from": f"{knob.other}.h{h}"} for h in knob.heads]}
    doc["layers"] = [layer for i, layer in enumerate(layers) if i not in dropped]
    doc["name"] = f"{spec.name}-trial"
    return doc
