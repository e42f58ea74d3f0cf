"""Stitches: maps from model A's residual at one address to model B's at another.

Three kinds, all fitted from streamed pairs (``engine.transfer.pairs``):

* ``ridge``  — closed-form affine ridge: ``X^T X`` and ``X^T Y`` (and the sums) are accumulated
  in float64 over batches, then one solve; no activations are kept.
* ``lowrank`` — the ridge solution truncated by SVD to ``rank`` (a bottleneck for the map).
* ``ae`` — a small ReLU encoder + linear decoder trained with MSE on standardised pairs,
  re-streaming the text each epoch; it starts from the ridge's moments, not its weights.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.limits import MAX_EPOCHS, MAX_HIDDEN, check_count
from engine.progress import Progress, check_cancel, notify
from engine.transfer.pairs import PairBatch, TransferError

__all__ = ["KINDS", "Moments", "Stitch", "fit_ae", "fit_lowrank", "fit_ridge", "accumulate"]

KINDS = ("ridge", "lowrank", "ae")


@dataclass
class Moments:
    """Streaming sums of paired rows, enough for the ridge solve and both means."""

    count: int
    sum_x: Tensor  # [d_A] float64
    sum_y: Tensor  # [d_B]
    xtx: Tensor  # [d_A, d_A]
    xty: Tensor  # [d_A, d_B]
    sum_yy: Tensor  # [d_B]

    @property
    def mean_x(self) -> Tensor:
        return self.sum_x / self.count

    @property
    def mean_y(self) -> Tensor:
        return self.sum_y / self.count

    def add(self, other: Moments) -> None:
        """Fold another stream's sums into these."""
        self.count += other.count
        self.sum_x += other.sum_x
        self.sum_y += other.sum_y
        self.xtx += other.xtx
        self.xty += other.xty
        self.sum_yy += other.sum_yy


def accumulate(batches: Iterable[PairBatch], minimum: int = 2) -> Moments:
    """Sum a stream of pair batches into ``Moments`` (float64, one batch held at a time)."""
    moments: Moments | None = None
    for batch in batches:
        x, y = batch.x.to(torch.float64), batch.y.to(torch.float64)
        if moments is None:
            d_a, d_b = x.shape[1], y.shape[1]
            zeros = torch.zeros
            moments = Moments(0, zeros(d_a, dtype=torch.float64), zeros(d_b, dtype=torch.float64),
                              zeros(d_a, d_a, dtype=torch.float64), zeros(d_a, d_b, dtype=torch.float64),
                              zeros(d_b, dtype=torch.float64))
        moments.count += x.shape[0]
        moments.sum_x += x.sum(0)
        moments.sum_y += y.sum(0)
        moments.xtx += x.T @ x
        moments.xty += x.T @ y
        moments.sum_yy += (y * y).sum(0)
    if moments is None or moments.count < minimum:
        raise TransferError("no paired positions were found in the text; pass more text or check both tokenizers")
    return moments


@dataclass
class Stitch:
    """A fitted map ``h_B ≈ map(h_A)``; affine kinds keep ``weight``/``bias``, ``ae`` its two layers."""

    kind: str
    width_a: int
    width_b: int
    weight: Tensor | None = None  # [d_A, d_B]: h_B = h_A @ weight + bias
    bias: Tensor | None = None  # [d_B]
    rank: int | None = None
    encoder: torch.nn.Linear | None = None
    decoder: torch.nn.Linear | None = None
    x_mean: Tensor | None = None  # standardisation of the ae's input/output
    x_scale: float = 1.0
    y_mean: Tensor | None = None
    y_scale: float = 1.0
    fit_pairs: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def apply(self, h_a: Tensor) -> Tensor:
        """Map A's residual rows ``[..., d_A]`` to B's ``[..., d_B]`` (float32 out)."""
        x = h_a.float()
        if self.kind == "ae":
            assert self.encoder is not None and self.decoder is not None and self.x_mean is not None
            assert self.y_mean is not None
            with torch.no_grad():
                hidden = torch.relu(self.encoder((x - self.x_mean) / self.x_scale))
                return self.decoder(hidden) * self.y_scale + self.y_mean
        assert self.weight is not None and self.bias is not None
        return x @ self.weight + self.bias

    def map_direction(self, vector: Tensor) -> Tensor:
        """Move a direction of A (a steering vector) into B: the linear part of the map.

        For the ``ae`` kind the map is not linear, so the direction is taken as the change it
        makes at A's mean: ``map(mean + v) − map(mean)``.
        """
        v = vector.float()
        if self.kind == "ae":
            assert self.x_mean is not None
            return self.apply(self.x_mean + v) - self.apply(self.x_mean)
        assert self.weight is not None
        return v @ self.weight

    def tensors(self) -> dict[str, Tensor]:
        """The stitch's tensors by name, for a safetensors part."""
        if self.kind == "ae":
            assert self.encoder is not None and self.decoder is not None
            assert self.x_mean is not None and self.y_mean is not None
            layers = {"encoder": self.encoder, "decoder": self.decoder}
            named = {f"{key}.{part}": getattr(layer, part).detach().clone() for key, layer in layers.items()
                     for part in ("weight", "bias")}
            return {**named,
                    "x_mean": self.x_mean.clone(), "y_mean": self.y_mean.clone(),
                    "scales": torch.tensor([self.x_scale, self.y_scale])}
        assert self.weight is not None and self.bias is not None
        return {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}


def _ridge_solution(moments: Moments, ridge: float) -> tuple[Tensor, Tensor]:
    mean_x, mean_y = moments.mean_x, moments.mean_y
    cxx = moments.xtx - moments.count * torch.outer(mean_x, mean_x)
    cxy = moments.xty - moments.count * torch.outer(mean_x, mean_y)
    # the penalty is relative to the mean variance, so one setting suits models of any scale
    penalty = ridge * torch.trace(cxx) / cxx.shape[0]
    weight = torch.linalg.solve(cxx + penalty * torch.eye(cxx.shape[0], dtype=cxx.dtype), cxy)
    bias = mean_y - mean_x @ weight
    return weight, bias


def fit_ridge(moments: Moments, ridge: float = 1e-6) -> Stitch:
    """The closed-form affine ridge stitch from accumulated moments."""
    weight, bias = _ridge_solution(moments, ridge)
    return Stitch("ridge", weight.shape[0], weight.shape[1], weight.float(), bias.float(), fit_pairs=moments.count,
                  extra={"ridge": ridge})


def fit_lowrank(moments: Moments, rank: int, ridge: float = 1e-6) -> Stitch:
    """The ridge solution truncated to ``rank`` by SVD (the bias keeps the means matched)."""
    weight, _ = _ridge_solution(moments, ridge)
    if not 1 <= rank <= min(weight.shape):
        raise TransferError(f"rank {rank} is out of range; pass a rank from 1 to {min(weight.shape)}")
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    low = (u[:, :rank] * s[:rank]) @ vh[:rank]
    bias = moments.mean_y - moments.mean_x @ low
    return Stitch("lowrank", low.shape[0], low.shape[1], low.float(), bias.float(), rank=rank,
                  fit_pairs=moments.count, extra={"ridge": ridge})


def fit_ae(moments: Moments, batches: Callable[[], Iterable[PairBatch]], *, hidden: int = 512, epochs: int = 2,
           lr: float = 1e-3, seed: int = 0, cancel: threading.Event | None = None,
           progress: Progress | None = None) -> Stitch:
    """Train a ReLU-encoder, linear-decoder map with MSE; ``batches()`` re-streams the pairs each epoch."""
    check_count(hidden, "the ae map's hidden width", MAX_HIDDEN, minimum=1)
    check_count(epochs, "the ae map's epochs", MAX_EPOCHS, minimum=1)
    d_a, d_b = moments.sum_x.shape[0], moments.sum_y.shape[0]
    x_mean, y_mean = moments.mean_x.float(), moments.mean_y.float()
    x_var = (torch.diagonal(moments.xtx) / moments.count - moments.mean_x ** 2).clamp_min(0).mean()
    y_var = (moments.sum_yy / moments.count - moments.mean_y ** 2).clamp_min(0).mean()
    x_scale, y_scale = float(x_var.sqrt()) or 1.0, float(y_var.sqrt()) or 1.0
    torch.manual_seed(seed)
    encoder, decoder = torch.nn.Linear(d_a, hidden), torch.nn.Linear(hidden, d_b)
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    last = float("nan")
    for epoch in range(epochs):
        for batch in batches():
            check_cancel(cancel, "the stitch")
            if batch.x.shape[0] == 0:  # every row a sink: an empty mean would be NaN and poison Adam
                continue
            x = (batch.x - x_mean) / x_scale
            y = (batch.y - y_mean) / y_scale
            for _ in range(4):  # a few steps per chunk: the forward passes cost far more than a step
                loss = torch.nn.functional.mse_loss(decoder(torch.relu(encoder(x))), y)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            last = float(loss.detach())
        notify(progress, "training the ae map", (epoch + 1) / epochs)
    encoder.eval()
    decoder.eval()
    return Stitch("ae", d_a, d_b, encoder=encoder, decoder=decoder, x_mean=x_mean, x_scale=x_scale, y_mean=y_mean,
                  y_scale=y_scale, fit_pairs=moments.count, extra={"hidden": float(hidden), "epochs": float(epochs),
                                                                   "final_mse": last})
