"""A part back as a runnable ``nn.Module``, built from its config fragment and its tensors.

Whole modules (layers, attention, MLP, norms, embeddings, LM head) are the family's own
transformers classes, taken from a meta-device model of the fragment's config and filled
with the part's tensors, so they compute exactly what they computed inside the source model.
Attention and layers of RoPE models get a small wrapper that owns a fresh rotary embedding
and the attention mask, so they run on hidden states plus position ids alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from engine.parts.errors import PartError
from engine.parts.positions import build_mask, layer_type_of, rotary_embeddings


def config_from_fragment(fragment: dict[str, Any]) -> Any:
    """The transformers config the part was cut from (architecture keys only)."""
    import transformers

    doc = dict(fragment["config"])
    model_type = doc.pop("model_type", None)
    if not model_type:
        raise PartError("the part's config fragment has no model_type; re-extract the part")
    try:
        return transformers.AutoConfig.for_model(model_type, **doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise PartError(f"cannot rebuild a '{model_type}' config from the part: {str(exc).splitlines()[0]}") from exc


def _meta_model(config: Any, dtype: torch.dtype, attn_implementation: str | None) -> tuple[nn.Module, Any]:
    from engine.anatomy import build_anatomy
    from engine.loading import model_class as _model_class
    from engine.loading import quiet_transformers as _quiet_transformers

    _quiet_transformers()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device("meta"):
        model = _model_class(config).from_config(config, **kwargs)
    return model.eval(), build_anatomy(model, model.config)


def _materialize(module: nn.Module, tensors: dict[str, Tensor]) -> nn.Module:
    try:
        module.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise PartError(f"the part's tensors do not fit its module: {str(exc).splitlines()[0]}") from exc
    leftovers = [name for name, value in [*module.named_parameters(), *module.named_buffers()] if value.is_meta]
    if leftovers:
        raise PartError(f"the rebuilt module still lacks {', '.join(leftovers)}; this part cannot run standalone")
    return module.eval()


def _rotary(meta_model: nn.Module, anatomy: Any) -> nn.Module | None:
    """A fresh (real-device) rotary embedding of the same class and config as the source model's."""
    table = anatomy.family
    if not table.rotary or not table.has_rotary_module:
        return None
    path = ".".join(p for p in (anatomy.base_path, table.has_rotary_module) if p)
    meta_rotary = meta_model.get_submodule(path)
    return type(meta_rotary)(config=meta_model.config)


def _dtype_of(tensors: dict[str, Tensor]) -> torch.dtype:
    return next(iter(tensors.values())).dtype


def build_module(fragment: dict[str, Any], tensors: dict[str, Tensor],
                 attn_implementation: str | None = None) -> nn.Module:
    """Rebuild a part; see the module docstring for what each kind becomes."""
    from engine.parts.head_module import HeadModule

    config = config_from_fragment(fragment)
    meta_model, anatomy = _meta_model(config, _dtype_of(tensors), attn_implementation)
    kind = fragment["kind"]
    if kind == "head":
        attention_path = ".".join(p for p in (anatomy.base_path, fragment["base_relative_path"]) if p)
        attention = meta_model.get_submodule(attention_path)
        norms = {short: _materialize(getattr(attention, short), {"weight": tensors[f"{short}.weight"]})
                 for short in ("q_norm", "k_norm") if f"{short}.weight" in tensors}
        return HeadModule(fragment, tensors, _rotary(meta_model, anatomy), norms=norms,
                          layer_type=layer_type_of(attention), config=meta_model.config).eval()
    if kind == "mlp" and fragment.get("children"):
        return ComposedMLP(fragment, tensors).eval()
    if kind == "lm_head":
        path = fragment["module_path"]
    else:
        path = ".".join(p for p in (anatomy.base_path, fragment["base_relative_path"]) if p)
    module = _materialize(meta_model.get_submodule(path), tensors)
    if kind in ("attn", "layer"):
        return StandaloneBlock(module, _rotary(meta_model, anatomy), meta_model.config,
                               bool(fragment.get("causal"))).eval()
    return module


class StandaloneBlock(nn.Module):
    """An attention block or layer that runs on hidden states (+ position ids) alone.

    Inside the model, the rotary embedding and the attention mask come from the base model;
    here the wrapper makes both the same way, so outputs match the source module bit for bit.
    """

    def __init__(self, inner: nn.Module, rotary: nn.Module | None, config: Any, causal: bool):
        super().__init__()
        self.inner = inner
        self.rotary = rotary
        self.config = config
        self.causal = causal

    def forward(self, hidden_states: Tensor, position_ids: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        from engine.tensors import first_tensor

        if position_ids is None:
            position_ids = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
        layer_type = layer_type_of(self.inner)
        kwargs: dict[str, Any] = {"attention_mask": build_mask(self.config, self.causal, hidden_states,
                                                               attention_mask, position_ids, layer_type)}
        if self.rotary is not None:
            kwargs["position_embeddings"] = rotary_embeddings(self.rotary, hidden_states, position_ids, layer_type)
            kwargs["position_ids"] = position_ids
        return first_tensor(self.inner(hidden_states, **kwargs))


class ComposedMLP(nn.Module):
    """An MLP that the family spreads over several modules (BERT): up → activation → down."""

    def __init__(self, fragment: dict[str, Any], tensors: dict[str, Tensor]):
        super().__init__()
        from transformers.activations import ACT2FN

        self.projections = nn.ModuleDict()
        for role in sorted(fragment["children"]):
            weight = tensors[f"{role}.weight"]
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=f"{role}.bias" in tensors,
                               device="meta", dtype=weight.dtype)
            own = {key.split(".", 1)[1]: value for key, value in tensors.items() if key.split(".", 1)[0] == role}
            self.projections[role] = _materialize(linear, own)
        if "up" not in self.projections or "down" not in self.projections:
            raise PartError("this MLP part lacks an up or down projection; re-extract it")
        self.act = ACT2FN[fragment.get("hidden_act") or "gelu"]

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden = self.act(self.projections["up"](hidden_states))
        return self.projections["down"](hidden)
