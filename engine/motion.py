"""Snapshots in motion: hidden states captured while the model generates, step by step.

A greedy generation runs under the hooks. With interventions that treat every position alike,
the KV cache is used and each cached step's states (one new position) are stitched after the
prompt's; interventions that depend on the whole sequence (mean ablation, patches,
position-specific steering) rerun the sequence at every step, as ``generate`` does, and keep
the step's last position. Either way the snapshot covers the prompt and every generated token
along the position axis, and diffs like any other snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime, timezone

import torch

from engine.addresses import resolve_point
from engine.analyzers.base import Progress, require_causal
from engine.decode import greedy_decode
from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.runner import encode
from engine.snapshots import SNAPSHOT_FORMAT, Snapshot, all_points


def take_motion_snapshot(
    loaded: LoadedModel,
    prompt: str,
    addresses: Sequence[str] | None = None,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 16,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Snapshot:
    """Generate up to ``max_new_tokens`` greedily from ``prompt``, keeping every step's states.

    Each tensor is ``[1, prompt + generated, ...]``: position ``i`` holds the states the model
    computed when token ``i`` went in, so the last generated token's states are included.
    """
    require_causal(loaded, "a snapshot in motion")
    if max_new_tokens < 1:
        raise GarageError(f"max new tokens must be at least 1, got {max_new_tokens}")
    wanted = []
    for address in addresses or all_points(loaded.anatomy):
        target = resolve_point(loaded.anatomy, address)
        if target.point == "pattern":
            raise GarageError(f"'{address}' is an attention pattern, which grows with every step; "
                              "capture it in a snapshot without --generate")
        wanted.append(target.address)
    ids = encode(loaded, prompt)
    decoded = greedy_decode(loaded, ids, max_new_tokens, interventions, capture=wanted, feed_last=True,
                            cancel=cancel, progress=progress)
    new_tokens, states, cached = decoded.new_tokens, decoded.states, decoded.mode == "kv-cache"
    tensors = {address: torch.cat(states[address], dim=1) for address in wanted}
    metadata = {
        "format": SNAPSHOT_FORMAT, "model": loaded.name, "config_hash": loaded.config_hash,
        "prompt": prompt, "token_ids": ids[0].tolist() + new_tokens, "addresses": wanted,
        "interventions": [item.to_dict() for item in interventions],
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "motion": {"prompt_tokens": ids.shape[1], "generated_ids": new_tokens,
                   "generated_text": loaded.tokenizer.decode(new_tokens),
                   "mode": "kv-cache" if cached else "rerun"},
    }
    return Snapshot(tensors, metadata)
