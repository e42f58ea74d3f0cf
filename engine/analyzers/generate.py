"""Greedy generation under interventions, for steering and quick checks.

The decoding loop itself (KV cache when the edits allow, rerun otherwise) is
``engine.decode.greedy_decode``, shared with snapshots in motion and evaluation.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.analyzers.base import Progress, require_causal
from engine.decode import greedy_decode
from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.runner import encode


@dataclass
class Generation:
    prompt: str
    token_ids: list[int]  # the new tokens only
    text: str  # the new text only
    interventions: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "token_ids": self.token_ids, "text": self.text,
                "interventions": self.interventions}


def generate(
    loaded: LoadedModel,
    prompt: str,
    max_new_tokens: int = 20,
    interventions: Sequence[Intervention] = (),
    *,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Generation:
    """Greedy continuation of ``prompt`` (deterministic), stopping early at end-of-sequence."""
    require_causal(loaded, "generation")
    if max_new_tokens < 1:
        raise GarageError(f"max new tokens must be at least 1, got {max_new_tokens}")
    ids = encode(loaded, prompt)
    new_tokens = greedy_decode(loaded, ids, max_new_tokens, interventions, cancel=cancel,
                               progress=progress).new_tokens
    return Generation(prompt, new_tokens, loaded.tokenizer.decode(new_tokens),
                      [i.to_dict() for i in interventions])
