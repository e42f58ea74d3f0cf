"""Directions in the residual stream as parts: made by DiffMean (the garage's steering vector),
by a logistic-regression probe, or taken from an SAE decoder row; used at run time to project
the direction out (directional ablation) or to add it (steering).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.features.errors import FeatureError
from engine.interventions import EditPlan, Intervention, InterventionKind, RunMask, register_intervention

DIRECTION_MODES = ("ablate", "add")
WRITERS = "writers"  # every module that writes to the residual stream: embed, each attn and MLP output


@dataclass
class Direction:
    """A residual direction at ``address`` with how it was made."""

    vector: Tensor  # [hidden]
    address: str
    method: str  # diffmean | probe | sae_row
    provenance: dict[str, Any]

    @property
    def unit(self) -> Tensor:
        return self.vector / self.vector.norm()


def diffmean_direction(loaded: Any, layer: int, positive: Sequence[str], negative: Sequence[str]) -> Direction:
    """Mean ``L{layer}.out`` over positive prompts minus over negative ones (``steering_vector``)."""
    from engine.analyzers.steering import steering_vector

    steering = steering_vector(loaded, layer, list(positive), list(negative))
    return Direction(steering.vector.detach().float(), f"L{layer}.out", "diffmean",
                     {"layer": layer, "positive": list(positive), "negative": list(negative)})


@dataclass(frozen=True)
class ProbeFit:
    accuracy: float  # on the tokens it was fitted on
    loss: float
    tokens: int


def probe_direction(loaded: Any, layer: int, positive: Sequence[str], negative: Sequence[str], *,
                    steps: int = 300, l2: float = 1e-3) -> tuple[Direction, ProbeFit]:
    """A logistic-regression probe on every token's ``L{layer}.out`` (positive = 1, negative = 0);
    the direction is its weight vector. Fitted by L-BFGS in float64 on standardised-free residuals."""
    from engine.features.streaming import activations_at
    from engine.runner import encode

    if not positive or not negative:
        raise FeatureError("a probe needs at least one positive and one negative prompt")
    address = f"L{layer}.out"
    rows, labels = [], []
    for label, prompts in ((1.0, positive), (0.0, negative)):
        for prompt in prompts:
            value = activations_at(loaded, encode(loaded, prompt), address)[0].double()
            rows.append(value)
            labels.append(torch.full((value.shape[0],), label, dtype=torch.float64))
    x = torch.cat(rows).clone()
    y = torch.cat(labels)
    scale = x.norm(dim=-1).mean()
    xs = x / scale  # keeps L-BFGS well conditioned; undone on the weight below
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ weight + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
        final = float(closure().detach())
    with torch.no_grad():
        accuracy = float(((xs @ weight + bias > 0).double() == y).double().mean())
        vector = (weight / scale).detach().float()
    fit = ProbeFit(accuracy, final, int(y.numel()))
    return Direction(vector, address, "probe", {"layer": layer, "positive": list(positive),
                                                "negative": list(negative), "l2": l2, "accuracy": accuracy}), fit


def sae_row_direction(coder: Any, feature: int, address: str, part: str | None = None) -> Direction:
    """Decoder row ``feature`` of an SAE that writes to the residual stream."""
    if not 0 <= feature < coder.d_sae:
        raise FeatureError(f"feature {feature} is out of range: this coder has features 0–{coder.d_sae - 1}")
    return Direction(coder.W_dec[feature].detach().float().clone(), address, "sae_row",
                     {"feature": feature, "part": part})


def project_out(value: Tensor, unit: Tensor) -> Tensor:
    """``value`` minus its component along the unit vector (last dimension)."""
    unit = unit.to(device=value.device, dtype=value.dtype)
    return value - (value @ unit).unsqueeze(-1) * unit


@dataclass
class DirectionEdit(Intervention):
    """Project a direction out (``ablate``) or add ``strength × vector`` (``add``) at ``address``;
    address ``writers`` ablates it from every write to the residual stream (embed, attn, MLP)."""

    direction: Tensor | None = None
    how: str = "ablate"
    part: str | None = None

    def describe(self) -> str:
        what = self.part or "direction"
        if self.how == "ablate":
            return f"project {what} out of {self.address}"
        return f"add {what} ×{self.strength:g} at {self.address}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "how": self.how, "strength": self.strength,
                "part": self.part}

    def addresses(self, anatomy: Any) -> list[str]:
        if self.address != WRITERS:
            return [self.address]
        return ["embed", *(f"L{i}.{p}.out" for i in range(anatomy.n_layers) for p in ("attn", "mlp"))]

    def plan_edits(self, anatomy: Any, mask: RunMask | None = None) -> list[EditPlan]:
        from engine.addresses import resolve_point
        from engine.sites import site_for

        if self.direction is None:
            raise FeatureError(f"direction edit at '{self.address}' needs a vector")
        if self.how not in DIRECTION_MODES:
            raise FeatureError(f"unknown direction edit '{self.how}'; use ablate or add")
        hidden = anatomy.root.info.get("hidden_size")
        if hidden is not None and self.direction.shape[-1] != hidden:
            raise FeatureError(f"direction has size {self.direction.shape[-1]} but the residual stream has {hidden}")
        vector = self.direction.detach()
        unit = vector / vector.norm()
        if self.how == "ablate":
            edit = lambda value: project_out(value, unit)  # noqa: E731
        else:
            edit = lambda value: value + (self.strength * vector).to(device=value.device, dtype=value.dtype)  # noqa: E731
        plans = []
        for address in self.addresses(anatomy):
            target = resolve_point(anatomy, address)
            if target.point == "z" or target.head is not None:
                raise FeatureError(f"a direction acts on the residual stream, not on '{target.address}'")
            plans.append(EditPlan(site_for(anatomy, target), edit))
        return plans


def direction_edit(vector: Tensor, address: str, how: str = "ablate", strength: float = 1.0,
                   part: str | None = None) -> DirectionEdit:
    """An intervention that ablates or adds ``vector`` at ``address`` (or every residual writer)."""
    if how not in DIRECTION_MODES:
        raise FeatureError(f"unknown direction edit '{how}'; use ablate or add")
    return DirectionEdit("direction", address, strength=float(strength), direction=vector, how=how, part=part)


register_intervention(InterventionKind(
    "direction", lambda anatomy, item, mask: item.plan_edits(anatomy, mask),  # type: ignore[attr-defined]
    lambda item: item.describe(), position_independent=lambda item: True))
