"""Positions as the base model hands them to a block: rotary cos/sin and the attention mask.

Shared by standalone blocks (``rebuild``) and heads (``head_module``); Gemma 2/3 choose both
per layer type (sliding-window or global).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


def layer_type_of(inner: nn.Module) -> str | None:
    """``sliding_attention`` / ``full_attention`` for families that mix them (Gemma 2/3), else None."""
    attention = getattr(inner, "self_attn", inner)
    return getattr(attention, "layer_type", None) or getattr(inner, "attention_type", None)


def rotary_embeddings(rotary: nn.Module, hidden_states: Tensor, position_ids: Tensor,
                      layer_type: str | None) -> Any:
    """cos/sin as the base model makes them; Gemma 3 keeps one rotary base per layer type."""
    import inspect

    if layer_type is not None and "layer_type" in inspect.signature(rotary.forward).parameters:
        return rotary(hidden_states, position_ids, layer_type)
    return rotary(hidden_states, position_ids)


def build_mask(config: Any, causal: bool, hidden_states: Tensor, attention_mask: Tensor | None,
               position_ids: Tensor, layer_type: str | None = None) -> Any:
    """The mask the base model would hand its layers (None when the kernel's own causal flag does)."""
    from transformers.masking_utils import (
        create_bidirectional_mask,
        create_causal_mask,
        create_sliding_window_causal_mask,
    )

    if causal and layer_type == "sliding_attention":
        return create_sliding_window_causal_mask(config=config, inputs_embeds=hidden_states,
                                                 attention_mask=attention_mask, cache=None,
                                                 position_ids=position_ids)
    if causal:
        return create_causal_mask(config=config, inputs_embeds=hidden_states, attention_mask=attention_mask,
                                  cache=None, position_ids=position_ids)
    return create_bidirectional_mask(config=config, inputs_embeds=hidden_states, attention_mask=attention_mask)
