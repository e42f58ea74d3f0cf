"""Steering vectors: the mean residual difference between two sets of prompts at a layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.analyzers._sites import run_with
from engine.analyzers.generate import Generation, generate
from engine.errors import GarageError
from engine.interventions import Intervention, steer
from engine.loading import LoadedModel
from engine.runner import encode


@dataclass
class SteeringVector:
    layer: int
    vector: Tensor  # [hidden]
    n_positive: int
    n_negative: int

    @property
    def address(self) -> str:
        return f"L{self.layer}"

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def intervention(self, strength: float) -> Intervention:
        """Add ``strength × vector`` to the layer's output at every position."""
        return steer(self.address, self.vector, strength)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "address": self.address, "norm": self.norm,
                "n_positive": self.n_positive, "n_negative": self.n_negative}


def _mean_residual(loaded: LoadedModel, layer: int, prompts: Sequence[str]) -> Tensor:
    address = f"L{layer}.out"
    means = []
    for prompt in prompts:
        _, tap = run_with(loaded, encode(loaded, prompt), capture=[address])
        means.append(tap[address][0].double().mean(dim=0))
    return torch.stack(means).mean(dim=0)


def steering_vector(
    loaded: LoadedModel,
    layer: int,
    positive_prompts: Sequence[str],
    negative_prompts: Sequence[str],
) -> SteeringVector:
    """Mean over prompts (of the mean over tokens) of ``L{layer}.out``: positive minus negative."""
    n_layers = loaded.anatomy.n_layers
    if not 0 <= layer < n_layers:
        raise GarageError(f"layer {layer} is out of range: this model has layers 0–{n_layers - 1}")
    if not positive_prompts or not negative_prompts:
        raise GarageError("a steering vector needs at least one positive and one negative prompt")
    difference = _mean_residual(loaded, layer, positive_prompts) - _mean_residual(loaded, layer, negative_prompts)
    dtype = next(loaded.model.parameters()).dtype
    return SteeringVector(layer, difference.to(dtype), len(positive_prompts), len(negative_prompts))


@dataclass
class SteeringComparison:
    vector: SteeringVector
    prompt: str
    generations: dict[float, Generation]  # strength → generation

    def to_dict(self) -> dict[str, Any]:
        return {"vector": self.vector.to_dict(), "prompt": self.prompt,
                "generations": [{"strength": s, **g.to_dict()} for s, g in self.generations.items()]}


def compare_steering(
    loaded: LoadedModel,
    vector: SteeringVector,
    prompt: str,
    strengths: Sequence[float] = (0.0, 4.0),
    max_new_tokens: int = 20,
) -> SteeringComparison:
    """Greedy generations of ``prompt`` steered at each strength (0 is the unsteered text)."""
    generations = {float(s): generate(loaded, prompt, max_new_tokens, [vector.intervention(s)]) for s in strengths}
    return SteeringComparison(vector, prompt, generations)
