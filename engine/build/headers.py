"""The light shape source of validation: configs from config.json, tensors from the config.

``garage recipe check`` must answer without paying the torch and transformers imports, so
for the families whose defaults and module layout are known here (``LIGHT_FAMILIES``) a
source's config is read as plain JSON and the output model's tensors are derived from its
config. Anything else returns None and the caller falls back to transformers' own config and
a meta-device model; tests compare both paths tensor by tensor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from engine.families import FamilyTable, family_for

# Bytes per element of each safetensors dtype code.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
# A recipe's ``dtype:`` name → the safetensors code it writes.
DTYPE_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}

# Sizes every config.json states (their transformers defaults are some other model's sizes).
_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
# Per model_type: the transformers defaults of the keys validation reads; test_cli_light_verbs
# checks them against the installed transformers.
LIGHT_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False,
              "mlp_bias": False},
    # read light so a recipe refused before planning (mixed families) stays light; a bert plan
    # converts back to transformers' config for its meta model (``plan.meta_model``)
    "bert": {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "tie_word_embeddings": True},
}
# Activations the light path accepts (transformers refuses names it does not know).
_ACTIVATIONS = ("silu", "gelu", "relu", "gelu_new", "gelu_pytorch_tanh", "tanh", "sigmoid")
# Other llama keys and the types strict transformers wants; a wrong type goes the heavy way,
# where transformers names it.
_NUMBER, _WHOLE, _FLAG = (int, float), int, bool
_LLAMA_TYPES: dict[str, tuple[type, ...] | type] = {
    "attention_dropout": _NUMBER, "initializer_range": _NUMBER, "max_position_embeddings": _WHOLE,
    "pretraining_tp": _WHOLE, "use_cache": _FLAG,
}
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# Keys transformers rewrites on load (legacy rotary settings): such a config goes the heavy way.
_REWRITTEN = ("rope_theta", "rope_scaling")


@dataclass
class ModelLayout:
    """What a model holds, in state-dict order: the shape source of a plan.

    Made from a meta model (``plan.meta_layout``, any family transformers knows) or, for the
    families known here, from the config alone (``config_layout``, no torch import)."""

    model_class: str
    base_path: str
    table: FamilyTable | None
    tensors: list[tuple[str, tuple[int, ...], str, bool]]  # name, shape, dtype code, floating
    tied: dict[str, str]  # model key → the model key it is tied to (not planned)
    param_count: int


class ConfigView:
    """A model config read from config.json alone, with the few defaults validation needs.

    Keys live in ``__dict__`` like a transformers config's, so ``check_config_sizes``,
    ``getattr`` with a default and ``copy.deepcopy`` treat both alike.
    """

    def __init__(self, doc: dict[str, Any]) -> None:
        self.__dict__.update(copy.deepcopy(doc))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)


def light_config(doc: dict[str, Any]) -> ConfigView | None:
    """``doc`` as a ``ConfigView``, or None when only transformers can say what it means."""
    model_type = doc.get("model_type")
    defaults = LIGHT_DEFAULTS.get(model_type or "")
    if defaults is None or any(not _whole(doc.get(key)) for key in _SIZES):
        return None
    if any(key in doc for key in _REWRITTEN) or "text_config" in doc or "layer_types" in doc:
        return None
    if doc["hidden_size"] % doc["num_attention_heads"] or not _typed(doc, defaults):
        return None  # transformers refuses it with its own message
    doc = {**defaults, **doc}
    if model_type == "llama":
        if not _plain_llama(doc):
            return None  # transformers fills, standardises or refuses these settings itself
        kv_heads = doc.get("num_key_value_heads")
        kv_heads = doc["num_attention_heads"] if kv_heads is None else kv_heads
        if not _whole(kv_heads) or doc["num_attention_heads"] % kv_heads:
            return None
        doc.update(num_key_value_heads=kv_heads,
                   head_dim=doc.get("head_dim") or doc["hidden_size"] // doc["num_attention_heads"])
    return ConfigView(doc)


def _plain_llama(doc: dict[str, Any]) -> bool:
    """Default rotary settings, a known activation, and every other key transformers checks well typed."""
    rope = doc.get("rope_parameters")
    if (not isinstance(rope, dict) or set(rope) != {"rope_type", "rope_theta"} or rope["rope_type"] != "default"
            or not isinstance(rope["rope_theta"], (int, float)) or isinstance(rope["rope_theta"], bool)
            or not rope["rope_theta"] > 0):
        return False
    if doc.get("hidden_act") not in _ACTIVATIONS:
        return False
    for key, kinds in _LLAMA_TYPES.items():
        value = doc.get(key)
        if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not _FLAG)):
            return False
    for key in _TOKEN_IDS:
        ids = doc.get(key)
        for token in ids if isinstance(ids, list) else [ids]:
            if token is not None and (not isinstance(token, int) or isinstance(token, bool)
                                      or not 0 <= token < doc["vocab_size"]):
                return False
    return True


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _typed(doc: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Every defaulted key the document sets has the default's type (strict transformers refuses others)."""
    for key, default in defaults.items():
        value = doc.get(key, default)
        kinds = (int, float) if isinstance(default, float) else type(default)
        if not isinstance(value, kinds) or (isinstance(value, bool) and not isinstance(default, bool)):
            return False
    head_dim = doc.get("head_dim")
    return head_dim is None or _whole(head_dim)


def _llama_tensors(config: Any) -> tuple[list[tuple[str, tuple[int, ...]]], dict[str, str]]:
    """LlamaForCausalLM's state dict (names and shapes, in its order) and its tied keys."""
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim

    def linear(name: str, rows: int, cols: int, bias: bool) -> list[tuple[str, tuple[int, ...]]]:
        return [(f"{name}.weight", (rows, cols))] + ([(f"{name}.bias", (rows,))] if bias else [])

    attn_bias, mlp_bias = bool(config.attention_bias), bool(config.mlp_bias)
    block = [*linear("self_attn.q_proj", q_rows, hidden, attn_bias),
             *linear("self_attn.k_proj", kv_rows, hidden, attn_bias),
             *linear("self_attn.v_proj", kv_rows, hidden, attn_bias),
             *linear("self_attn.o_proj", hidden, q_rows, attn_bias),
             *linear("mlp.gate_proj", inter, hidden, mlp_bias), *linear("mlp.up_proj", inter, hidden, mlp_bias),
             *linear("mlp.down_proj", hidden, inter, mlp_bias),
             ("input_layernorm.weight", (hidden,)), ("post_attention_layernorm.weight", (hidden,))]
    tensors: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for index in range(config.num_hidden_layers):
        tensors += [(f"model.layers.{index}.{rel}", shape) for rel, shape in block]
    tensors += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    tied = {"lm_head.weight": "model.embed_tokens.weight"} if config.tie_word_embeddings else {}
    return tensors, tied


def config_layout(config: Any) -> ModelLayout | None:
    """The output model's ``ModelLayout`` from a ``ConfigView`` alone, or None (use a meta model)."""
    if not isinstance(config, ConfigView) or getattr(config, "model_type", None) != "llama":
        return None
    table = family_for("llama")
    tensors, tied = _llama_tensors(config)
    params = 0
    for name, shape in tensors:
        if name not in tied:
            count = 1
            for size in shape:
                count *= size
            params += count
    # every tensor of this family is a floating parameter, made in the default float32
    entries = [(name, shape, "F32", True) for name, shape in tensors]
    return ModelLayout("LlamaForCausalLM", "model", table, entries, tied, params)
