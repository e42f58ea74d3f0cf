"""Layer similarity: how much each layer changes the residual stream, and how layers relate.

A layer whose output is nearly its input (high cosine, small relative change) adds little
to the stream and is a candidate for removal when slimming a model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.analyzers.base import Progress
from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.run import run
from engine.runner import encode

FLAG_COSINE = 0.98  # in/out cosine at or above this flags a layer as "barely changes the stream"


@dataclass
class LayerChange:
    layer: int
    cosine: float  # mean over tokens of cos(layer input, layer output)
    relative_change: float  # ‖out − in‖ / ‖in‖, over all tokens
    flagged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "address": f"L{self.layer}", "cosine": self.cosine,
                "relative_change": self.relative_change, "flagged": self.flagged}


@dataclass
class SimilarityReport:
    prompt: str
    layers: list[LayerChange] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)  # cos between L{i}.out and L{j}.out
    threshold: float = FLAG_COSINE

    @property
    def flagged(self) -> list[str]:
        return [f"L{change.layer}" for change in self.layers if change.flagged]

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "threshold": self.threshold, "flagged": self.flagged,
                "layers": [change.to_dict() for change in self.layers], "matrix": self.matrix}


def _token_cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())


def layer_similarity(
    loaded: LoadedModel,
    prompt: str,
    interventions: Sequence[Intervention] = (),
    threshold: float = FLAG_COSINE,
    *,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> SimilarityReport:
    """Cosine between each layer's input and output residual, and between all layer outputs."""
    n_layers = loaded.anatomy.n_layers
    if not n_layers:
        raise GarageError(f"'{loaded.name}' has no layers this garage knows how to compare")
    ids = encode(loaded, prompt)
    addresses = [f"L{i}.{point}" for i in range(n_layers) for point in ("in", "out")]
    tap = run(loaded, ids, interventions=interventions, capture=addresses, cancel=cancel, progress=progress,
              stop_after_capture=True).tap
    report = SimilarityReport(prompt, threshold=threshold)
    outputs = []
    for layer in range(n_layers):
        residual_in, residual_out = tap[f"L{layer}.in"][0], tap[f"L{layer}.out"][0]
        cosine = _token_cosine(residual_in, residual_out)
        change = float((residual_out - residual_in).double().norm() / residual_in.double().norm().clamp_min(1e-30))
        report.layers.append(LayerChange(layer, cosine, change, cosine >= threshold))
        outputs.append(residual_out)
    stacked = torch.stack(outputs).double()  # [layers, tokens, hidden]
    unit = torch.nn.functional.normalize(stacked, dim=-1)
    report.matrix = torch.einsum("ith,jth->ij", unit, unit).div(stacked.shape[1]).tolist()
    return report
