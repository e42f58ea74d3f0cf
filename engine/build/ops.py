"""Recipe ops by name: how a blend of layers is parsed from a recipe and made into a tensor.

``copy`` takes one layer's tensor as it is; ``linear`` and ``slerp`` blend several. Each op
checks its own recipe fields (``parse``) and computes its tensor (``apply``); the recipe
parser, the planner and the builder look ops up here, so a new op is one module in
``engine.plugins`` that calls ``register_op`` (see the README). Parsing never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import GarageError
from engine.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor


class OpFieldError(GarageError):
    """A recipe field an op cannot use; ``field`` names it (``weights``, ``t``, ``blend``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RecipeOp:
    """One recipe op: its recipe fields → params (``parse``), and inputs + params → tensor (``apply``)."""

    name: str
    parse: Callable[[Mapping[str, Any], int], dict[str, Any]]  # (recipe entry, number of layers) → params
    apply: Callable[[Sequence[Tensor], Mapping[str, Any]], Tensor]
    blend: bool = True  # False for copy: not a ``method`` a blend entry may name


OPS: Registry[RecipeOp] = Registry("recipe op")


def register_op(op: RecipeOp) -> RecipeOp:
    """Make ``op`` usable as a blend ``method`` in recipes (and by the builder and preview)."""
    return OPS.register(op.name, op)


def blend_methods() -> list[str]:
    """The op names a recipe's ``method:`` may use."""
    return [name for name in OPS.names() if OPS.get(name).blend]


def apply_op(op: str, tensors: Sequence[Tensor], params: Mapping[str, Any]) -> Tensor:
    """The tensor ``op`` makes from its inputs."""
    return OPS.get(op).apply(tensors, params)


def _is_number(value: object) -> bool:
    # YAML's true/false are ints in Python; a recipe weight of `true` is a typo, not 1.0.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _parse_linear(entry: Mapping[str, Any], count: int) -> dict[str, Any]:
    weights = entry.get("weights", [1.0 / count] * count)
    if not isinstance(weights, list) or len(weights) != count or not all(_is_number(w) for w in weights):
        raise OpFieldError("weights", f"linear blend needs {count} finite numeric weights, one per layer")
    return {"weights": [float(w) for w in weights]}


def _parse_slerp(entry: Mapping[str, Any], count: int) -> dict[str, Any]:
    t = entry.get("t", 0.5)
    if count != 2:
        raise OpFieldError("blend", "slerp blends exactly two layers")
    if not _is_number(t) or not 0.0 <= float(t) <= 1.0:
        raise OpFieldError("t", f"slerp t must be a number between 0 and 1, got {t!r}")
    return {"t": float(t)}


def _apply_copy(tensors: Sequence[Tensor], params: Mapping[str, Any]) -> Tensor:
    return tensors[0]


def _apply_linear(tensors: Sequence[Tensor], params: Mapping[str, Any]) -> Tensor:
    from engine.build.blend import linear, source_dtype

    return source_dtype(linear(tensors, params["weights"]), tensors)


def _apply_slerp(tensors: Sequence[Tensor], params: Mapping[str, Any]) -> Tensor:
    from engine.build.blend import slerp, source_dtype

    return source_dtype(slerp(tensors[0], tensors[1], float(params["t"])), tensors)


register_op(RecipeOp("copy", lambda entry, count: {}, _apply_copy, blend=False))
register_op(RecipeOp("linear", _parse_linear, _apply_linear))
register_op(RecipeOp("slerp", _parse_slerp, _apply_slerp))
