"""Recipe steps as the bench edits them: names, spans in the hybrid's numbering, head fills.

Plain data in, plain data out (no Textual, no torch), so the bench pane only draws and the
rules are tested on their own.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_LAYER_REF = re.compile(r"^(?P<alias>[A-Za-z_][\w\-]*)\.L(?P<start>\d+)(?:-(?P<stop>\d+))?$")
_STEP_PATH = re.compile(r"layers\[(\d+)\]")


def step_name(index: int) -> str:
    """What the bench calls ``layers[index]``: its position, counted from 1."""
    return f"step {index + 1}"


def readable_path(text: str) -> str:
    """Validator paths in step names: ``layers[2].heads[0]`` → ``step 3.heads[0]``."""
    return _STEP_PATH.sub(lambda match: step_name(int(match.group(1))), text)


def step_text(step: dict[str, Any] | str) -> str:
    """One plan row as a person reads it (refs such as ``[src.L12, src.L13]`` kept as written)."""
    if isinstance(step, str):
        return f"take: {step}"
    return yaml.safe_dump(step, default_flow_style=True, sort_keys=False, width=400).strip().strip("{}")


def take_range(step: dict[str, Any] | str) -> tuple[str, int, int] | None:
    """``(alias, first, last)`` of a plain take step, else None."""
    take = step if isinstance(step, str) else step.get("take")
    match = _LAYER_REF.match(str(take).strip()) if isinstance(take, str) else None
    if match is None:
        return None
    start = int(match["start"])
    return match["alias"], start, int(match["stop"]) if match["stop"] is not None else start


def step_span(step: dict[str, Any] | str) -> int:
    """How many hybrid layers a step makes (a blend makes one)."""
    taken = take_range(step)
    return 1 if taken is None else max(0, taken[2] - taken[1] + 1)


def step_of_layer(layers: list[Any], hybrid_layer: int) -> tuple[int, int] | None:
    """``(step index, offset inside the step)`` that makes hybrid layer ``hybrid_layer``."""
    first = 0
    for index, step in enumerate(layers):
        span = step_span(step)
        if first <= hybrid_layer < first + span:
            return index, hybrid_layer - first
        first += span
    return None


def attach_head(layers: list[Any], hybrid_layer: int, head: int, part: str,
                gqa: bool) -> tuple[list[Any], int]:
    """``layers`` with ``part`` filling ``head`` of hybrid layer ``hybrid_layer``; and that step's index.

    A head move applies to every layer of its step, so a range step is split around the
    layer first. Under GQA a part carries keys and values its group shares, so the move keeps
    this layer's (``kv: keep``), the rule the validator asks for.
    """
    found = step_of_layer(layers, hybrid_layer)
    if found is None:
        raise ValueError(f"the hybrid has no layer L{hybrid_layer}; it makes "
                         f"L0-L{sum(step_span(s) for s in layers) - 1}")
    index, offset = found
    step = layers[index]
    new_layers = list(layers)
    taken = take_range(step)
    if taken is not None and taken[1] != taken[2]:
        alias, start, stop = taken
        extras = {k: v for k, v in step.items() if k != "take"} if isinstance(step, dict) else {}

        def take(a: int, b: int) -> dict[str, Any]:
            return {"take": f"{alias}.L{a}" if a == b else f"{alias}.L{a}-{b}", **extras}

        layer = start + offset
        pieces = ([take(start, layer - 1)] if layer > start else []) + [take(layer, layer)] + \
                 ([take(layer + 1, stop)] if layer < stop else [])
        new_layers[index:index + 1] = pieces
        index += 1 if layer > start else 0
        step = new_layers[index]
    target = dict(step) if isinstance(step, dict) else {"take": step}
    move: dict[str, Any] = {"head": head, "part": part}
    if gqa:
        move["kv"] = "keep"
    target["heads"] = [*[m for m in target.get("heads", []) if m.get("head") != head], move]
    new_layers[index] = target
    return new_layers, index


BAKE_HELP = "ablate-direction PART · steer PART STRENGTH [LAYER] · head-scale L3.H2 FACTOR"


def bake_step(answer: str) -> dict[str, Any]:
    """A ``finish:`` bake entry from the bench's one-line answer (``BAKE_HELP``); the recipe
    check then judges it against the model and the parts bin like any recipe line."""
    words = answer.split()
    kind = words[0] if words else ""
    if kind in ("ablate", "ablate-direction") and len(words) == 2:
        return {"op": "bake", "kind": "ablate-direction", "part": words[1]}
    if kind == "steer" and len(words) in (3, 4):
        step: dict[str, Any] = {"op": "bake", "kind": "steer", "part": words[1], "strength": float(words[2])}
        if len(words) == 4:
            step["layer"] = int(words[3].removeprefix("L"))
        return step
    if kind == "head-scale" and len(words) == 3:
        return {"op": "bake", "kind": "head-scale", "head": words[1], "factor": float(words[2])}
    raise ValueError(f"write one of: {BAKE_HELP}")
