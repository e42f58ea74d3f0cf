"""Quantised weights: detected, then refused by the operations that need the real weights.

A model loaded in a quantised form (bitsandbytes 4/8-bit, GPTQ, AWQ…) stores packed integers
and scales, not the matrices the parts bin, the bake and the build bench copy and edit. Those
operations refuse it with one line; captures and interventions act on activations and work.
A GGUF opened here is not quantised: the conversion cache holds it dequantised.
"""

from __future__ import annotations

from typing import Any

from engine.errors import GarageError


class QuantisedWeightsError(GarageError):
    """An operation that copies or edits weights was asked of a quantised model."""


def quantisation_of(model_or_config: Any) -> str | None:
    """The quantisation method of a model (or a config), or None for plain weights."""
    model = model_or_config
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
        return str(getattr(method, "value", method) or "quantised")
    for flag, name in (("is_loaded_in_4bit", "bitsandbytes 4-bit"), ("is_loaded_in_8bit", "bitsandbytes 8-bit")):
        if getattr(model, flag, False) is True:
            return name
    config = getattr(model, "config", model)
    settings = getattr(config, "quantization_config", None)
    if not settings:
        return None
    method = settings.get("quant_method") if isinstance(settings, dict) else getattr(settings, "quant_method", None)
    return str(getattr(method, "value", method) or "quantised")


def refuse_quantised(loaded: Any, operation: str, name: str | None = None) -> None:
    """Raise one clear line if ``loaded`` (an open model, a model or a config) is quantised."""
    target = getattr(loaded, "model", loaded)
    method = quantisation_of(target) or quantisation_of(getattr(loaded, "config", None))
    if method is None:
        return
    name = name or getattr(loaded, "name", None) or "this model"
    raise QuantisedWeightsError(
        f"cannot {operation} '{name}': its weights are quantised ({method}), so they open read-only "
        "(captures and interventions still work); use an unquantised checkpoint"
    )
