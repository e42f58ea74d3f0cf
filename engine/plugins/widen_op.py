"""Model op ``widen``: the oracle widening of issue 15 as a build-bench recipe op.

``- op: widen, width: 960, seed: 0`` folds the norms into the next matrices, rotates the residual
basis by a seeded orthogonal matrix and zero-pads it to ``width`` (``engine.transfer.widen``); the
built model gives the assembled model's logits (≤ 1e-4 in fp32), so it is a hybrid whose
residual map to its source is known exactly. A width that is not a multiple of the head count
(SmolLM2: 9 heads, 960 wide) is written as a Mistral without a sliding window — the same
computation, in a config transformers loads from disk (``engine.transfer.widen.needs_mistral``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from engine.build.model_ops import ModelOp, register_model_op
from engine.build.ops import OpFieldError
from engine.errors import GarageError
from engine.limits import MAX_HIDDEN, check_count


def _parse(entry: Mapping[str, Any]) -> dict[str, Any]:
    if "width" not in entry:
        raise OpFieldError("width", "widen needs a target residual width, e.g. width: 960")
    try:
        width = check_count(entry["width"], "widen width", MAX_HIDDEN, minimum=1)
        seed = check_count(entry.get("seed", 0), "widen seed", 2**63 - 1)
    except GarageError as exc:
        raise OpFieldError("seed" if "seed" in str(exc) else "width", str(exc)) from None
    return {"width": width, "seed": seed}


def _params(config: Mapping[str, Any], width: int) -> int:
    """Parameters of the model at residual ``width`` (untied head), from its config alone."""
    heads, kv = int(config.get("num_attention_heads") or 1), int(config.get("num_key_value_heads") or 1)
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size") or 0) // heads)
    inner = int(config.get("intermediate_size") or 0)
    per_layer = width * head_dim * (2 * heads + 2 * kv) + 3 * width * inner + 2 * width
    return 2 * int(config.get("vocab_size") or 0) * width + int(config.get("num_hidden_layers") or 0) * per_layer


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _check(params: Mapping[str, Any], config: dict[str, Any]) -> None:
    model_type = config.get("model_type")
    if model_type != "llama":
        raise OpFieldError("op", f"widen keeps the function of Llama models only; this hybrid is '{model_type}'")
    hidden = int(config.get("hidden_size") or 0)
    if params["width"] < hidden:
        raise OpFieldError("width", f"width {params['width']} is narrower than the model's {hidden}; widen needs "
                                    f"a width ≥ {hidden}")
    # the widening works in float64 on the narrow and the wide copies at once: refuse it before
    # allocating when that cannot fit in this machine's memory
    needed = 8 * (_params(config, hidden) + _params(config, params["width"]))
    memory = _memory_bytes()
    if memory is not None and needed > memory:
        raise OpFieldError("width", f"widening to {params['width']} needs about {needed / 1e9:.0f} GB for its "
                                    f"float64 math and this machine has {memory / 1e9:.0f} GB; pick a smaller width")
    heads = int(config.get("num_attention_heads") or 1)
    config.setdefault("head_dim", hidden // heads)  # widening keeps the heads; only the residual grows
    config.update(hidden_size=params["width"], tie_word_embeddings=False)
    if params["width"] % heads:
        # written as a Mistral with no sliding window (engine.transfer.widen.needs_mistral says why)
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise OpFieldError("width", f"width {params['width']} is not a multiple of the {heads} heads and this "
                                        f"model has biases; pick a multiple of {heads}")
        for key in ("attention_bias", "mlp_bias", "pretraining_tp"):
            config.pop(key, None)
        config.update(model_type="mistral", sliding_window=None)


def _apply(model: Any, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    from engine.transfer.widen import load_widened, portable, widen_llama

    widened = portable(widen_llama(model, int(params["width"]), int(params["seed"])))
    known = widened.known_map
    record = {"width_from": known.width_from, "width_to": known.width_to, "scale": known.scale,
              "seed": widened.seed, "rotation": "seeded Haar-random orthogonal (engine.transfer.widen)",
              "model_type": widened.config.model_type,
              "changed": ["every tensor (norms folded, residual rotated and padded)"]}
    return load_widened(widened).to(next(model.parameters()).device), record  # stay on the model's device


register_model_op(ModelOp("widen", ("width", "seed"), _parse, _check, _apply))
