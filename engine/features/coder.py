"""Sparse coders (SAEs and transcoders): their configuration and their exact encode/decode math.

Tensors use the SAELens orientation whatever the file they came from: ``W_enc`` is
``[d_in, d_sae]``, ``W_dec`` is ``[d_sae, d_out]``, ``W_skip`` is ``[d_out, d_in]``. The math
follows the reference definitions line by line (SAELens ``saes/*.py``, EleutherAI sparsify
``sparse_coder.py`` + ``fused_encoder.py``), including their order of operations, so the same
weights give the same activations to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.features.errors import FeatureError

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu", "gated", "transcoder", "skip_transcoder",
                 "jumprelu_transcoder")
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
LAYER_NORM_EPS = 1e-5  # SAELens run_time_activation_ln_in's default eps

# Tensors each architecture needs (beyond W_enc, W_dec, b_dec).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "standard": ("b_enc",), "topk": ("b_enc",), "batchtopk": ("b_enc",), "jumprelu": ("b_enc", "threshold"),
    "gated": ("b_gate", "r_mag", "b_mag"), "transcoder": ("b_enc",), "skip_transcoder": ("b_enc", "W_skip"),
    "jumprelu_transcoder": ("b_enc", "threshold"),
}


@dataclass
class CoderConfig:
    """What a sparse coder is and where it reads (and, for a transcoder, writes)."""

    architecture: str
    d_in: int
    d_sae: int
    d_out: int
    k: float | None = None  # topk / batchtopk
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    hook_name: str | None = None  # the reference tool's name for the input point
    hook_name_out: str | None = None  # transcoders: where the output goes
    source_format: str = "garage"  # saelens | sparsify | garage
    activation: str = "topk"  # sparsify's encoder activation
    raw: dict[str, Any] = field(default_factory=dict)  # the cfg.json as read, for an equal export
    # the parent part whose decoder rows were scaled into this coder (engine.features.fold): an exact
    # splice's error term would cancel the fold, so FeatureSplice refuses it. Never written to cfg.json.
    folded_from: str | None = None

    @property
    def is_transcoder(self) -> bool:
        return self.architecture in TRANSCODERS

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae, "d_out": self.d_out,
                "k": self.k, "apply_b_dec_to_input": self.apply_b_dec_to_input,
                "normalize_activations": self.normalize_activations,
                "reshape_activations": self.reshape_activations, "hook_name": self.hook_name,
                "hook_name_out": self.hook_name_out, "source_format": self.source_format,
                "activation": self.activation, "raw": self.raw,
                # only when set, so every unfolded part's stored config stays as it was
                **({"folded_from": self.folded_from} if self.folded_from is not None else {})}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CoderConfig:
        return cls(**{key: doc[key] for key in cls.__dataclass_fields__ if key in doc})


class SparseCoder:
    """An SAE or transcoder: ``encode`` to feature activations, ``decode`` back."""

    def __init__(self, config: CoderConfig, tensors: dict[str, Tensor]) -> None:
        self.config = config
        self.tensors = tensors
        _check(config, tensors)

    def __getattr__(self, name: str) -> Tensor:
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(name)

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> SparseCoder:
        """A copy with every tensor moved/cast (the config is shared)."""
        moved = {name: t.to(device=device, dtype=dtype) for name, t in self.tensors.items()}
        return SparseCoder(self.config, moved)

    # --- normalisation -----------------------------------------------------------------
    def _norm_state(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        mode = self.config.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = (self.config.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
            return coeff, coeff
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            return mu, std
        return None

    def _normalise_in(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> Tensor:
        mode = self.config.normalize_activations
        if state is None:
            return x
        if mode == "constant_norm_rescale":
            return x * state[0]
        mu, std = state
        return (x - mu) / (std + LAYER_NORM_EPS)

    def _normalise_out(self, y: Tensor, state: tuple[Tensor, Tensor] | None) -> Tensor:
        if state is None or self.config.is_transcoder:
            return y  # SAELens transcoders do not un-normalise: the output lives at another point
        if self.config.normalize_activations == "constant_norm_rescale":
            return y / state[0]
        mu, std = state
        return y * std + mu

    # --- encode / decode ---------------------------------------------------------------
    def hidden_pre(self, x: Tensor) -> Tensor:
        """Encoder pre-activations (the magnitude path for gated SAEs)."""
        sae_in = self._sae_in(x)
        if self.config.architecture == "gated":
            return sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag
        return sae_in @ self.W_enc + self.b_enc

    def _sae_in(self, x: Tensor) -> Tensor:
        x = x.to(self.W_enc.dtype)
        if self.config.source_format == "sparsify":
            return x - self.b_dec if self.config.apply_b_dec_to_input else x
        x = self._normalise_in(x, self._norm_state(x))
        if self.config.is_transcoder or not self.config.apply_b_dec_to_input:
            return x
        return x - self.b_dec

    def encode(self, x: Tensor) -> Tensor:
        """Dense feature activations ``[..., d_sae]`` of ``x`` ``[..., d_in]``."""
        arch = self.config.architecture
        if self.config.source_format == "sparsify":
            return _sparsify_topk(self._sae_in(x) @ self.W_enc + self.b_enc, int(self.config.k or 0))
        if arch == "gated":
            sae_in = self._sae_in(x)
            active = (sae_in @ self.W_enc + self.b_gate > 0).to(sae_in.dtype)
            magnitude = torch.relu(sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
            return active * magnitude
        pre = self.hidden_pre(x)
        if arch in ("jumprelu", "jumprelu_transcoder"):
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        if arch == "topk":
            return _topk_then_relu(pre, int(self.config.k or 0))
        if arch == "batchtopk":
            if "threshold" in self.tensors:  # a batchtopk SAE saved for inference is a JumpReLU
                return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
            return _batch_topk(pre, float(self.config.k or 0))
        return torch.relu(pre)  # standard, transcoder, skip_transcoder

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstruction ``[..., d_out]`` from ``acts``; ``x`` is the encoded input, needed to undo an
        input normalisation and for a skip connection."""
        y = acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        if self.config.source_format != "sparsify" and self.config.normalize_activations in (
                "constant_norm_rescale", "layer_norm") and not self.config.is_transcoder:
            if x is None:
                raise FeatureError("this SAE normalises its input; decode needs the input it encoded")
            y = self._normalise_out(y, self._norm_state(x.to(self.W_enc.dtype)))
        if "W_skip" in self.tensors:
            if x is None:
                raise FeatureError("this transcoder has a skip connection; decode needs its input")
            y = y + x.to(self.W_skip.dtype) @ self.W_skip.T
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x), x)

    def describe(self) -> str:
        k = f", k={self.config.k:g}" if self.config.k is not None else ""
        return f"{self.config.architecture} {self.config.d_in}→{self.config.d_sae}→{self.config.d_out}{k}"


def _topk_then_relu(pre: Tensor, k: int) -> Tensor:
    """SAELens ``TopK``: the top k pre-activations, ReLU applied to them, zeros elsewhere."""
    top = torch.topk(pre, k=k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))


def _sparsify_topk(pre: Tensor, k: int) -> Tensor:
    """sparsify's ``fused_encoder``: ReLU first, then the top k, scattered back to dense."""
    acts = torch.relu(pre)
    top = torch.topk(acts, k=k, dim=-1, sorted=False)
    return torch.zeros_like(acts).scatter_(-1, top.indices, top.values)


def _batch_topk(pre: Tensor, k: float) -> Tensor:
    """SAELens ``BatchTopK``: ReLU, then the top ``k × rows`` values over the whole flattened batch."""
    rows = pre.reshape(-1, pre.shape[-1])
    acts = rows.relu()
    flat = acts.flatten()
    top = torch.topk(flat, int(k * acts.shape[0]), dim=-1)
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(pre.shape)


def _check(config: CoderConfig, tensors: dict[str, Tensor]) -> None:
    if config.architecture not in ARCHITECTURES:
        raise FeatureError(f"unknown SAE architecture '{config.architecture}'; "
                           f"this garage reads: {', '.join(ARCHITECTURES)}")
    if config.normalize_activations not in NORMALIZATIONS:
        raise FeatureError(f"unknown normalize_activations '{config.normalize_activations}'; "
                           f"use one of: {', '.join(NORMALIZATIONS)}")
    needed = ("W_enc", "W_dec", "b_dec", *_REQUIRED[config.architecture])
    if config.architecture == "batchtopk":
        needed = ("W_enc", "W_dec", "b_dec", "b_enc")
    missing = [name for name in needed if name not in tensors]
    if missing:
        raise FeatureError(f"{config.architecture} SAE is missing tensors {', '.join(missing)}; "
                           "the weights file does not match its cfg.json")
    expected = {"W_enc": (config.d_in, config.d_sae), "W_dec": (config.d_sae, config.d_out),
                "b_dec": (config.d_out,)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise FeatureError(f"{name} has shape {list(tensors[name].shape)} but cfg.json implies {list(shape)}")
    if config.architecture in ("topk",) and not config.k:
        raise FeatureError("a topk SAE needs k in its cfg.json")
