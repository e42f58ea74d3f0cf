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

__all__ = ["KnownMap", "WidenError", "WidenedModel", "load_widened", "needs_mistral", "portable",
           "random_orthogonal", "save_widened", "widen_llama", "widened_loaded"]


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
    dtype = next(iter(model.parameters())).dtype
    originals = {name: tensor.detach() for name, tensor in model.state_dict().items()
                 if not name.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in originals:
        originals["lm_head.weight"] = originals["model.embed_tokens.weight"]
    rotation = random_orthogonal(width_from, seed)
    scale = math.sqrt(width_to / width_from)
    pad = width_to - width_from

    # each tensor goes to float64 only while its own product is computed, and back to the model's
    # dtype right after, so the peak is one model copy plus one matrix, not two float64 models
    def f64(name: str) -> Tensor:
        return originals[name].to("cpu", torch.float64)

    state: dict[str, Tensor] = {}

    def put(name: str, value: Tensor) -> None:
        state[name] = value.to(dtype=dtype, copy=True).contiguous()  # a copy even at float64: no shared ones

    def write(matrix: Tensor) -> Tensor:
        # a matrix [d_A, in] whose output is added to the residual: out_B = s · pad(out_A @ Q)
        return torch.nn.functional.pad(scale * (rotation.T @ matrix), (0, 0, 0, pad))

    def read(matrix: Tensor, norm_weight: Tensor) -> Tensor:
        # a matrix [out, d_A] reading norm(h_A)·w; B's normed input is s · pad(n_A @ Q)
        return torch.nn.functional.pad((matrix * norm_weight.unsqueeze(0)) @ rotation / scale, (0, pad))

    ones = torch.ones(width_to, dtype=torch.float64)
    put("model.embed_tokens.weight", torch.nn.functional.pad(scale * (f64("model.embed_tokens.weight") @ rotation),
                                                             (0, pad)))
    put("lm_head.weight", read(f64("lm_head.weight"), f64("model.norm.weight")))
    put("model.norm.weight", ones)
    for index in range(int(config.num_hidden_layers)):
        prefix = f"model.layers.{index}."
        attn_norm = f64(prefix + "input_layernorm.weight")
        mlp_norm = f64(prefix + "post_attention_layernorm.weight")
        for reader in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            put(prefix + reader + ".weight", read(f64(prefix + reader + ".weight"), attn_norm))
        for reader in ("mlp.gate_proj", "mlp.up_proj"):
            put(prefix + reader + ".weight", read(f64(prefix + reader + ".weight"), mlp_norm))
        for writer in ("self_attn.o_proj", "mlp.down_proj"):
            put(prefix + writer + ".weight", write(f64(prefix + writer + ".weight")))
            if prefix + writer + ".bias" in originals:
                put(prefix + writer + ".bias", torch.nn.functional.pad(scale * (f64(prefix + writer + ".bias")
                                                                                 @ rotation), (0, pad)))
        put(prefix + "input_layernorm.weight", ones)
        put(prefix + "post_attention_layernorm.weight", ones)
    for name in originals:
        if name not in state:  # what the rotation does not touch (reader biases): copied as it is
            put(name, f64(name))

    wide_config = type(config).from_dict(config.to_dict())
    wide_config.head_dim = int(getattr(config, "head_dim", None) or width_from // config.num_attention_heads)
    wide_config.hidden_size = width_to
    wide_config.tie_word_embeddings = False
    return WidenedModel(state, wide_config, KnownMap(rotation, scale, width_from, width_to), seed)


def needs_mistral(config: Any, width_to: int) -> bool:
    """Whether a widened Llama must be written as a Mistral to load from disk.

    transformers' ``LlamaConfig`` refuses (on load) a hidden size that is not a multiple of the
    head count — SmolLM2's 9 heads and the oracle's 960 — although the modelling code uses the
    explicit ``head_dim``. ``MistralConfig`` has no such rule, and a Mistral with
    ``sliding_window: null`` runs exactly Llama's computation (same tensor names); only Llama's
    ``attention_bias``/``mlp_bias`` switches have no Mistral counterpart.
    """
    return width_to % int(config.num_attention_heads) != 0


def portable(widened: WidenedModel) -> WidenedModel:
    """``widened`` with a config plain transformers can load from a folder (see ``needs_mistral``)."""
    config = widened.config
    if not needs_mistral(config, int(config.hidden_size)):
        return widened
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise WidenError(f"a {config.hidden_size}-wide model with {config.num_attention_heads} heads is written as "
                         "a Mistral, which has no q/k/v/o or MLP biases; pick a width that is a multiple of "
                         f"{config.num_attention_heads}")
    import transformers

    doc = config.to_dict()
    for key in ("model_type", "architectures", "attention_bias", "mlp_bias", "pretraining_tp", "transformers_version"):
        doc.pop(key, None)
    mistral = transformers.MistralConfig(**{**doc, "sliding_window": None})
    mistral.architectures = ["MistralForCausalLM"]
    return WidenedModel(widened.state_dict, mistral, widened.known_map, widened.seed)


def load_widened(widened: WidenedModel) -> Any:
    """Build the widened model as a plain ``transformers.LlamaForCausalLM`` in eval mode."""
    import transformers

    model_class = transformers.MistralForCausalLM if widened.config.model_type == "mistral" else \
        transformers.LlamaForCausalLM
    with torch.device("meta"):  # every weight comes from the state dict: skip the random initialisation
        model = model_class(widened.config)
    missing, unexpected = model.load_state_dict(widened.state_dict, strict=False, assign=True)
    missing = [name for name in missing if not name.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise WidenError(f"widened weights do not fit {model_class.__name__} (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); this is a bug in the widening op")
    for name, module in list(model.named_modules()):
        if name and type(module).__name__.endswith("RotaryEmbedding"):
            # its inv_freq is a computed buffer, not a weight: make it again, off the meta device
            model.set_submodule(name, type(module)(config=widened.config))
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise WidenError(f"widened model has no values for {left[:3]}; this is a bug in the widening op")
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
    """Widen an open Llama and return it as an open model (same tokenizer) plus its known map.

    Parts the model carries (a blade baked into a hybrid) come along, their output mapped like the
    residual (``h_wide = s · pad(h @ Q)`` is linear, so adding ``map(out)`` to the wide stream is
    adding ``out`` to the narrow one): the wide model stays the same function, blade included. A part
    that cannot be mapped is refused rather than dropped, and a model opened without its parts
    stays unrunnable.
    """
    from engine.anatomy import build_anatomy
    from engine.loading import LoadedModel

    for item in loaded.standing:
        if not callable(getattr(item, "widened", None)):
            raise WidenError(f"'{loaded.name}' carries {item.describe()}, which cannot follow a widening; delete its "
                             "folder's garage_attached.json to widen the weights alone")
    widened = widen_llama(loaded.model, width_to, seed)
    model = load_widened(widened)
    wide = LoadedModel(name=f"{loaded.name}-wide{width_to}", source=f"widen({loaded.source}, {width_to}, seed={seed})",
                       source_kind="config", model=model, config=model.config, tokenizer=loaded.tokenizer,
                       anatomy=build_anatomy(model, model.config), device="cpu", dtype=loaded.dtype,
                       structure_only=False, standing=[item.widened(widened.known_map) for item in loaded.standing],
                       detached=list(loaded.detached))
    return wide, widened.known_map
