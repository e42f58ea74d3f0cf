"""Every size limit the garage enforces, in one place, with the checks that name them.

The limits sit far above any model or document the garage is meant for (a 405B model has
hidden size 16,384 and 126 layers) and far below what would exhaust a machine, so a config
or count that crosses one is a mistake or an attack, refused before anything is allocated.
The README's "Limits" table lists the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

from engine.errors import GarageError

# documents (JSON / YAML: recipes, sessions, keymap, settings, catalog, configs)
MAX_DOC_BYTES = 64 * 1024**2
MAX_DOC_DEPTH = 100
MAX_DOC_NODES = 2_000_000
MAX_RECIPE_BYTES = 4 * 1024**2
# safetensors headers
MAX_ST_HEADER_BYTES = 100 * 1024**2
MAX_ST_DIMS = 8
# model configs (checked before any module, real or meta, is made)
MAX_HIDDEN = 65_536
MAX_LAYERS = 1_024
MAX_HEADS = 1_024
MAX_INTERMEDIATE = 1_048_576
MAX_VOCAB = 4_194_304
MAX_POSITIONS = 4_194_304
MAX_PARAMS = 2_000_000_000_000
# counts asked for on the command line or in a recipe
MAX_RECIPE_LAYERS = 1_024
MAX_REPEAT = 1_024
MAX_BINS = 100_000
MAX_GENERATE = 100_000
MAX_SAE_EXPANSION = 256  # features per input dimension
MAX_IG_STEPS = 1_024  # integrated-gradient steps run as one batch
MAX_WORKERS = 1_024
MAX_EPOCHS = 10_000


class LimitError(GarageError):
    """A size or count over one of the garage's limits; the message names the limit."""


def check_count(value: Any, what: str, limit: int, *, minimum: int = 0) -> int:
    """``value`` as an int in ``[minimum, limit]``, or a ``LimitError`` naming the limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and (not math.isfinite(value) or value != int(value))):
        raise LimitError(f"{what} must be a whole number, got {value!r}")
    number = int(value)
    if number < minimum:
        raise LimitError(f"{what} must be at least {minimum}, got {number}")
    if number > limit:
        raise LimitError(f"{what} is {number:,}, over the garage's limit of {limit:,}; ask for less")
    return number


def check_finite(value: Any, what: str) -> float:
    """``value`` as a finite float, or a ``LimitError`` (NaN and ±inf are never accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LimitError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise LimitError(f"{what} is {value!r}; only finite numbers are accepted")
    return number


CONFIG_LIMITS: tuple[tuple[tuple[str, ...], str, int], ...] = (
    (("hidden_size", "n_embd", "d_model", "dim"), "hidden size", MAX_HIDDEN),
    (("num_hidden_layers", "n_layer", "num_layers", "n_layers"), "layer count", MAX_LAYERS),
    (("num_attention_heads", "n_head", "num_heads", "num_key_value_heads"), "head count", MAX_HEADS),
    (("intermediate_size", "n_inner", "ffn_dim", "d_ff"), "intermediate size", MAX_INTERMEDIATE),
    (("vocab_size",), "vocabulary size", MAX_VOCAB),
    (("max_position_embeddings", "n_positions"), "position count", MAX_POSITIONS),
    (("head_dim",), "head size", MAX_HIDDEN),
)


def check_config_sizes(config: Any, label: str) -> None:
    """Refuse a model config (dict or transformers config) whose sizes cross a limit.

    Runs before transformers builds any module, on the meta device too: a 10⁹ hidden size
    would otherwise allocate (or, on meta, build) a model no machine can hold.
    """
    doc = config if isinstance(config, dict) else getattr(config, "__dict__", {})
    docs = [doc] + [sub for sub in (doc.get("text_config"), doc.get("vision_config")) if isinstance(sub, dict)]
    for sub_config in ("text_config", "vision_config"):
        value = doc.get(sub_config)
        if value is not None and not isinstance(value, dict) and hasattr(value, "__dict__"):
            docs.append(vars(value))
    for part in docs:
        for keys, what, limit in CONFIG_LIMITS:
            for key in keys:
                value = part.get(key)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                        isinstance(value, float) and not math.isfinite(value)):
                    raise LimitError(f"{label}: {key} is {value!r}, not a whole number; fix the config")
                if value < 0 or value > limit:
                    raise LimitError(f"{label}: {key} is {value:,}, outside the garage's limit for the {what} "
                                     f"(0 to {limit:,}); the config is damaged or not a model the garage opens")
        hidden = _first(part, CONFIG_LIMITS[0][0])
        layers = _first(part, CONFIG_LIMITS[1][0])
        inter = _first(part, CONFIG_LIMITS[3][0]) or 4 * hidden
        vocab = _first(part, ("vocab_size",))
        estimate = layers * (4 * hidden * hidden + 3 * hidden * inter) + 2 * vocab * hidden
        if estimate > MAX_PARAMS:
            raise LimitError(f"{label}: its sizes make about {estimate:,} parameters, over the garage's limit of "
                             f"{MAX_PARAMS:,}; the config is damaged or not a model the garage opens")


def _first(doc: dict[str, Any], keys: tuple[str, ...]) -> int:
    for key in keys:
        value = doc.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return 0


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")
MAX_CHARS_PER_TOKEN = 64  # no tokenizer's token is longer; more characters than this × context cannot fit


def context_length(config: Any) -> int | None:
    """How many positions the model reads (its ``max_position_embeddings``), or None when unknown."""
    for source in (config, getattr(config, "text_config", None)):
        if source is None:
            continue
        for key in CONTEXT_KEYS:
            value = source.get(key) if isinstance(source, dict) else getattr(source, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_prompt_chars(prompt: str, config: Any, model_name: str) -> None:
    """Refuse, before tokenizing, a prompt with far more characters than the context could hold."""
    limit = context_length(config)
    if limit is not None and len(prompt) > limit * MAX_CHARS_PER_TOKEN:
        raise LimitError(f"the prompt has {len(prompt):,} characters, far more than {model_name} reads "
                         f"({limit:,} tokens, its max_position_embeddings); shorten the prompt")


def check_context(tokens: int, config: Any, model_name: str, what: str = "the prompt") -> None:
    """Refuse a sequence longer than the model's context, naming the limit."""
    limit = context_length(config)
    if limit is not None and tokens > limit:
        raise LimitError(f"{what} is {tokens:,} tokens but {model_name} reads at most {limit:,} "
                         "(its max_position_embeddings); shorten it")
