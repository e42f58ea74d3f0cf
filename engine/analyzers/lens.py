"""Logit lens: what each layer's residual stream would predict if the model stopped there.

Each layer's output residual is read through the model's own final norm and LM head. The
last layer's reading is exactly the model's prediction, which the tests pin.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.analyzers.base import Progress, require_causal
from engine.errors import GarageError
from engine.hooks import Tap
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.run import run
from engine.runner import encode


@dataclass
class LensLayer:
    address: str
    top: list[tuple[int, str, float]]  # (token id, text, probability), best first
    final_token_rank: int  # rank of the model's own top-1 token in this layer's reading
    final_token_prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "final_token_rank": self.final_token_rank,
                "final_token_prob": self.final_token_prob,
                "top": [{"token_id": i, "token": text, "prob": p} for i, text, p in self.top]}


@dataclass
class LensReport:
    prompt: str
    token_ids: list[int]
    final_token_id: int
    final_token: str
    layers: list[LensLayer] = field(default_factory=list)
    position: int = -1  # the position read, counted from 0; the last one unless asked

    def first_layer_with_answer(self, top: int = 1) -> str | None:
        """The earliest layer whose reading ranks the final answer within ``top``."""
        return next((layer.address for layer in self.layers if layer.final_token_rank < top), None)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "token_ids": self.token_ids, "position": self.position,
                "final_token_id": self.final_token_id,
                "final_token": self.final_token, "first_layer_with_answer": self.first_layer_with_answer(),
                "layers": [layer.to_dict() for layer in self.layers]}


def read_residual(loaded: LoadedModel, residual: Tensor) -> Tensor:
    """Logits from a residual ``[..., hidden]`` through the final norm and the LM head."""
    anatomy = loaded.anatomy
    norm_part = anatomy.by_address.get("final_norm")
    head_part = anatomy.by_address.get("lm_head")
    if head_part is None or head_part.module_path is None:
        raise GarageError(f"'{loaded.name}' has no LM head to read the residual stream through")
    norm = loaded.model.get_submodule(norm_part.module_path) if norm_part and norm_part.module_path else None
    head = loaded.model.get_submodule(head_part.module_path)
    with torch.inference_mode():
        logits = head(norm(residual) if norm is not None else residual)
        # Gemma 2 (and any config that sets it) squashes the logits as its own forward does.
        cap = getattr(loaded.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def logit_lens(
    loaded: LoadedModel,
    prompt: str,
    top_k: int = 5,
    interventions: Sequence[Intervention] = (),
    position: int = -1,
    *,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> LensReport:
    """For each layer, the top-k next tokens read from its output residual at ``position``.

    ``position`` counts prompt tokens from 0 (negative from the end); the default reads the
    last one, where the model predicts the continuation.
    """
    require_causal(loaded, "the logit lens")
    if top_k < 1:
        raise GarageError(f"top-k must be at least 1, got {top_k}")
    ids = encode(loaded, prompt)
    n_tokens = ids.shape[1]
    if not -n_tokens <= position < n_tokens:
        raise GarageError(f"position {position} is outside the prompt's {n_tokens} tokens; "
                          f"pass one from 0 to {n_tokens - 1} (or -1 for the last)")
    position %= n_tokens
    addresses = ["embed.out"] + [f"L{i}.out" for i in range(loaded.anatomy.n_layers)]
    output = run(loaded, ids, interventions=interventions, capture=addresses, cancel=cancel, progress=progress)
    return lens_rows(loaded, ids, output.logits, output.tap, addresses, top_k, position, prompt)


def lens_rows(loaded: LoadedModel, ids: Tensor, logits: Tensor, tap: Tap, addresses: Sequence[str], top_k: int,
              position: int, prompt: str) -> LensReport:
    """The lens report from a pass already made: its logits and its captured residuals at ``addresses``.

    ``position`` is a prompt position (negative from the end); ``prompt_report`` reads the lens
    off its own pass this way instead of running the model again.
    """
    position %= ids.shape[1]
    final_id = int(logits[0, position].argmax())
    residuals = torch.stack([tap[address][0, position] for address in addresses])
    lens_logits = read_residual(loaded, residuals).float()
    probs = torch.softmax(lens_logits, dim=-1)
    report = LensReport(prompt, ids[0].tolist(), final_id, loaded.tokenizer.decode([final_id]), position=position)
    for address, row_logits, row_probs in zip(addresses, lens_logits, probs, strict=True):
        values, indices = row_probs.topk(min(top_k, row_probs.shape[-1]))
        rank = int((row_logits > row_logits[final_id]).sum())
        report.layers.append(LensLayer(
            address,
            [(int(i), loaded.tokenizer.decode([int(i)]), float(p)) for p, i in zip(values, indices, strict=True)],
            rank, float(row_probs[final_id])))
    return report
