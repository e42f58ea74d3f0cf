"""Prompts in, predictions out: tokenising and running a model under hooks."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import GarageError
from engine.hooks import Tap
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.run import Progress, require_weights, run


@dataclass(frozen=True)
class TokenGuess:
    token_id: int
    text: str
    prob: float
    logit: float


@dataclass
class RunResult:
    token_ids: list[int]
    logits: Tensor  # [vocab], last position
    top: list[TokenGuess]
    tap: Tap


def encode(loaded: LoadedModel, prompt: str) -> Tensor:
    """Token ids ``[1, T]`` on the model's input device."""
    require_weights(loaded)
    if loaded.tokenizer is None:
        raise GarageError(f"'{loaded.name}' has no tokenizer files; put tokenizer.json beside its config.json")
    if not prompt:
        raise GarageError("the prompt is empty; pass some text with --prompt")
    from engine.limits import check_context, check_prompt_chars

    check_prompt_chars(prompt, loaded.config, loaded.name)  # a megabyte prompt is refused untokenized
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    check_context(int(ids.shape[1]), loaded.config, loaded.name)
    return ids.to(loaded.input_device)


def forward(
    loaded: LoadedModel,
    ids: Tensor,
    *,
    capture: Sequence[str] = (),
    interventions: Sequence[Intervention] = (),
    cancel: threading.Event | None = None,
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, Tap]:
    """``engine.run.run`` returning ``(main output, tap)``, for callers written before it."""
    output = run(loaded, ids, capture=capture, interventions=interventions, cancel=cancel,
                 attention_mask=attention_mask)
    return output.logits, output.tap


def top_tokens(loaded: LoadedModel, last_logits: Tensor, k: int) -> list[TokenGuess]:
    """The ``k`` likeliest next tokens from one position's logits, best first."""
    probs = torch.softmax(last_logits.float(), dim=-1)
    values, indices = probs.topk(min(k, probs.shape[-1]))
    return [
        TokenGuess(int(i), loaded.tokenizer.decode([int(i)]), float(p), float(last_logits[i]))
        for p, i in zip(values, indices, strict=True)
    ]


def predict(
    loaded: LoadedModel,
    prompt: str,
    *,
    interventions: Sequence[Intervention] = (),
    capture: Sequence[str] = (),
    top_k: int = 5,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Next-token prediction for ``prompt`` under ``interventions``."""
    if not loaded.is_causal_lm and loaded.anatomy.family is None:
        raise GarageError(
            f"'{loaded.name}' is a '{getattr(loaded.config, 'model_type', '?')}' model, an architecture without "
            "a family table, so `garage run` cannot drive it; `garage inspect` shows its module tree"
        )
    if not loaded.is_causal_lm:
        raise GarageError(
            f"'{loaded.name}' has no language-model head, so it predicts no next token; "
            "use `garage capture` to read its activations"
        )
    if top_k < 1:
        raise GarageError(f"--top-k must be at least 1, got {top_k}")
    ids = encode(loaded, prompt)
    output = run(loaded, ids, capture=capture, interventions=interventions, cancel=cancel, progress=progress)
    last = output.logits[0, -1]
    return RunResult(ids[0].tolist(), last, top_tokens(loaded, last, top_k), output.tap)
