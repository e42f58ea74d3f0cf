"""Steering vectors: the mean residual difference between two sets of prompts at a layer."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.addresses import resolve
from engine.analyzers.base import Progress
from engine.analyzers.generate import Generation, generate
from engine.errors import GarageError, InterventionError
from engine.interventions import Intervention, steer
from engine.loading import LoadedModel
from engine.progress import scaled
from engine.run import run
from engine.runner import encode
from engine.tensors import text_rows


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


def prompt_means(loaded: LoadedModel, layer: int, prompts: Sequence[str], cancel: threading.Event | None = None,
                 progress: Progress | None = None) -> dict[str, Tensor]:
    """Each distinct prompt's mean over its text rows (``engine.tensors.text_rows``) of
    ``L{layer}.out``, float64: one pass per prompt, shared by a DiffMean and its split controls."""
    address = f"L{layer}.out"
    distinct = list(dict.fromkeys(prompts))
    means: dict[str, Tensor] = {}
    for index, prompt in enumerate(distinct):
        tap = run(loaded, encode(loaded, prompt), capture=[address], cancel=cancel, stop_after_capture=True,
                  progress=scaled(progress, index / len(distinct), (index + 1) / len(distinct))).tap
        means[prompt] = text_rows(tap[address][0].double()).mean(dim=0)
    return means


def diff_mean(means: dict[str, Tensor], first: Sequence[str], second: Sequence[str]) -> Tensor:
    """Mean over ``first``'s prompt means minus mean over ``second``'s (a prompt listed twice counts twice)."""
    return torch.stack([means[p] for p in first]).mean(dim=0) - torch.stack([means[p] for p in second]).mean(dim=0)


def steering_vector(
    loaded: LoadedModel,
    layer: int,
    positive_prompts: Sequence[str],
    negative_prompts: Sequence[str],
    *,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
    means: dict[str, Tensor] | None = None,
) -> SteeringVector:
    """Mean over prompts (of the mean over each prompt's text rows, ``engine.tensors.text_rows``:
    position 0 and sink rows left out) of ``L{layer}.out``: positive minus negative. ``means``
    (from ``prompt_means`` at this layer) saves the passes when the caller has them already."""
    n_layers = loaded.anatomy.n_layers
    if not 0 <= layer < n_layers:
        raise GarageError(f"layer {layer} is out of range: this model has layers 0–{n_layers - 1}")
    if not positive_prompts or not negative_prompts:
        raise GarageError("a steering vector needs at least one positive and one negative prompt")
    if means is None:
        means = prompt_means(loaded, layer, [*positive_prompts, *negative_prompts], cancel, progress)
    difference = diff_mean(means, positive_prompts, negative_prompts)
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
    *,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> SteeringComparison:
    """Greedy generations of ``prompt`` steered at each strength (0 is the unsteered text)."""
    count = max(len(strengths), 1)
    generations = {float(s): generate(loaded, prompt, max_new_tokens, [vector.intervention(s)], cancel=cancel,
                                      progress=scaled(progress, i / count, (i + 1) / count))
                   for i, s in enumerate(strengths)}
    return SteeringComparison(vector, prompt, generations)


def steer_from_prompts(loaded: LoadedModel, address: str, positive: Sequence[str], negative: Sequence[str],
                       strength: float = 4.0, *, cancel: threading.Event | None = None,
                       progress: Progress | None = None) -> Intervention:
    """A steer on layer ``address`` whose vector is the positive-minus-negative residual mean there.

    The vector comes from ``steering_vector`` at the layer's output;
    the prompts travel in ``origin``, so the same call rebuilds an equal vector later.
    """
    target = resolve(loaded.anatomy, address)
    if target.part.kind != "layer" or target.point not in (None, "out"):
        raise InterventionError(
            f"cannot steer '{address}' from prompts: pick a layer such as L10 (its output is steered)"
        )
    if not math.isfinite(float(strength)):
        raise InterventionError(f"steering strength for '{address}' must be a finite number, got {strength}")
    positive, negative = [str(p) for p in positive], [str(n) for n in negative]
    layer = int(target.part.address.removeprefix("L"))
    vector = steering_vector(loaded, layer, positive, negative, cancel=cancel, progress=progress).vector
    return steer(target.part.address, vector, strength, origin={"positive": positive, "negative": negative})
