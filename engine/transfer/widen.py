"""The oracle widening op: a wider Llama that computes exactly what the narrow one does.

Three function-preserving moves, done once in float64 and cast back:

1. fold every RMSNorm weight into the matrices that read its output (q/k/v, gate/up, lm_head),
   so the norms become plain ``x / rms(x)``;
2. rotate the residual basis by a seeded random orthogonal ``Q`` — RMSNorm without a weight
   commutes with rotations, so every reader/writer of the residual just absorbs ``Q``;
3. zero-pad the width ``d_A → d_B`` and scale the whole residual by ``s = sqrt(d_B / d_A)``, so
   the mean square over ``d_B`` dims equals the old one over ``d_A`` (eps included): the norms
   see the same RMS and no correction is needed inside them.

The residual of the wide model B is then known exactly: ``h_B = s · pad(h_A @ Q)``
(``KnownMap``), which is what the transfer bench's oracle checks recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.errors import GarageError

__all__ = ["KnownMap", "WidenError", "WidenedModel", "load_widened", "random_orthogonal", "save_widened",
           "widen_llama", "widened_loaded"]


class WidenError(GarageError):
    """A model the widening op cannot widen exactly (not a Llama-style model, or a narrower target)."""


@dataclass
class KnownMap:
    """The exact residual map of a widening: ``h_B = scale · pad(h_A @ rotation, width_to)``."""

    rotation: Tensor  # [d_A, d_A] orthogonal, float64
    scale: float
    width_from: int
    width_to: int

    def matrix(self) -> Tensor:
        """The map as one ``[d_A, d_B]`` matrix ``M`` with ``h_B = h_A @ M`` (float64)."""
        full = torch.zeros(self.width_from, self.width_to, dtype=torch.float64)
        full[:, : self.width_from] = self.rotation * self.scale
        return full

    def apply(self, h_a: Tensor) -> Tensor:
        """Map A's residual ``[..., d_A]`` to B's ``[..., d_B]``."""
        return (h_a.to(torch.float64) @ self.matrix()).to(h_a.dtype)

    def inverse(self, h_b: Tensor) -> Tensor:
        """Map B's residual back to A's (exact on B's image: the padded dims are zero there)."""
        kept = h_b.to(torch.float64)[..., : self.width_from] / self.scale
        return (kept @ self.rotation.T).to(h_b.dtype)


@dataclass
class WidenedModel:
    """A widened Llama as plain data: a state dict, a ``LlamaConfig`` and the exact known map."""

    state_dict: dict[str, Tensor]
    config: Any  # transformers.LlamaConfig
    known_map: KnownMap
    seed: int


def random_orthogonal(width: int, seed: int) -> Tensor:
    """A seeded Haar-random orthogonal ``[width, width]`` matrix (float64)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(width, width, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # fixing the signs by R's diagonal makes the draw Haar-uniform rather than QR-biased
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def _check_llama(model: Any, width_to: int) -> tuple[Any, int]:
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise WidenError(f"widening needs a Llama model; this one is '{getattr(config, 'model_type', '?')}' "
                         "— open a Llama (e.g. smollm2-135m)")
    width_from = int(config.hidden_size)
    if width_to < width_from:
        raise WidenError(f"target width {width_to} is narrower than the model's {width_from}; pass a width ≥ "
                         f"{width_from}")
    return config, width_from


def widen_llama(model: Any, width_to: int, seed: int = 0) -> WidenedModel:
    """Widen a ``LlamaForCausalLM`` to ``width_to`` without changing its function.

    ``model`` is a transformers Llama (``loaded.model``). The result loads into a plain
    ``LlamaForCausalLM`` (embeddings untied, since the head absorbs the final norm) and gives
    the same logits up to float rounding.
    """
    config, width_from = _check_llama(model, width_to)
    source = {name: tensor.detach().to("cpu", torch.float64) for name, tensor in model.state_dict().items()}
    if "lm_head.weight" not in source:
        source["lm_head.weight"] = source["model.embed_tokens.weight"]
    rotation = random_orthogonal(width_from, seed)
    scale = math.sqrt(width_to / width_from)
    pad = width_to - width_from

    def write(matrix: Tensor) -> Tensor:
        # a matrix [d_A, in] whose output is added to the residual: out_B = s · pad(out_A @ Q)
        return torch.nn.functional.pad(scale * (rotation.T @ matrix), (0, 0, 0, pad))

    def read(matrix: Tensor, norm_weight: Tensor) -> Tensor:
        # a matrix [out, d_A] reading norm(h_A)·w; B's normed input is s · pad(n_A @ Q)
        return torch.nn.functional.pad((matrix * norm_weight.unsqueeze(0)) @ rotation / scale, (0, pad))

    widened: dict[str, Tensor] = {}
    for name, tensor in source.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        widened[name] = tensor
    widened["model.embed_tokens.weight"] = torch.nn.functional.pad(scale * (source["model.embed_tokens.weight"]
                                                                              @ rotation), (0, pad))
    widened["lm_head.weight"] = read(source["lm_head.weight"], source["model.norm.weight"])
    widened["model.norm.weight"] = torch.ones(width_to, dtype=torch.float64)
    for index in range(int(config.num_hidden_layers)):
        prefix = f"model.layers.{index}."
        attn_norm = source[prefix + "input_layernorm.weight"]
        mlp_norm = source[prefix + "post_attention_layernorm.weight"]
        for reader in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            widened[prefix + reader + ".weight"] = read(source[prefix + reader + ".weight"], attn_norm)
        for reader in ("mlp.gate_proj", "mlp.up_proj"):
            widened[prefix + reader + ".weight"] = read(source[prefix + reader + ".weight"], mlp_norm)
        for writer in ("self_attn.o_proj", "mlp.down_proj"):
            widened[prefix + writer + ".weight"] = write(source[prefix + writer + ".weight"])
            bias = source.get(prefix + writer + ".bias")
            if bias is not None:
                widened[prefix + writer + ".bias"] = torch.nn.functional.pad(scale * (bias @ rotation), (0, pad))
        widened[prefix + "input_layernorm.weight"] = torch.ones(width_to, dtype=torch.float64)
        widened[prefix + "post_attention_layernorm.weight"] = torch.ones(width_to, dtype=torch.float64)

    dtype = next(iter(model.parameters())).dtype
    state = {name: tensor.to(dtype).contiguous() for name, tensor in widened.items()}
    wide_config = type(config).from_dict(config.to_dict())
    wide_config.head_dim = int(getattr(config, "head_dim", None) or width_from // config.num_attention_heads)
    wide_config.hidden_size = width_to
    wide_config.tie_word_embeddings = False
    return WidenedModel(state, wide_config, KnownMap(rotation, scale, width_from, width_to), seed)


def load_widened(widened: WidenedModel) -> Any:
    """Build the widened model as a plain ``transformers.LlamaForCausalLM`` in eval mode."""
    import transformers

    model = transformers.LlamaForCausalLM(widened.config)
    missing, unexpected = model.load_state_dict(widened.state_dict, strict=False)
    missing = [name for name in missing if not name.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise WidenError(f"widened weights do not fit LlamaForCausalLM (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); this is a bug in the widening op")
    dtype = next(iter(widened.state_dict.values())).dtype
    wide: Any = model  # transformers types .to() as a dtype-or-device overload mypy cannot pick
    return wide.to(dtype).eval()


def save_widened(widened: WidenedModel, folder: Path) -> Path:
    """Write the widened model as an HF folder (``config.json`` + ``model.safetensors``), atomically."""
    from safetensors.torch import save_file

    from engine.storage import atomic_output_dir

    folder = Path(folder)
    with atomic_output_dir(folder) as staging:
        widened.config.save_pretrained(staging)
        save_file(widened.state_dict, str(staging / "model.safetensors"), metadata={"format": "pt"})
    return folder


def widened_loaded(loaded: Any, width_to: int, seed: int = 0) -> tuple[Any, KnownMap]:
    """Widen an open Llama and return it as an open model (same tokenizer) plus its known map."""
    from engine.anatomy import build_anatomy
    from engine.loading import LoadedModel

    widened = widen_llama(loaded.model, width_to, seed)
    model = load_widened(widened)
    wide = LoadedModel(name=f"{loaded.name}-wide{width_to}", source=f"widen({loaded.source}, {width_to}, seed={seed})",
                       source_kind="config", model=model, config=model.config, tokenizer=loaded.tokenizer,
                       anatomy=build_anatomy(model, model.config), device="cpu", dtype=loaded.dtype,
                       structure_only=False)
    return wide, widened.known_map
