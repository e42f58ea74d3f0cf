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
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import torch
from torch import Tensor

from engine.addresses import resolve_point
from engine.analyzers._sites import require_causal
from engine.analyzers.generate import _position_independent
from engine.errors import GarageError
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.runner import encode, forward
from engine.snapshots import SNAPSHOT_FORMAT, Snapshot, all_points

Step = Callable[[Tensor], Tensor]  # token ids so far → logits of the last position


def take_motion_snapshot(
    loaded: LoadedModel,
    prompt: str,
    addresses: Sequence[str] | None = None,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 16,
    cancel: threading.Event | None = None,
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
    cached = all(_position_independent(item) for item in interventions)
    run = _cached_steps if cached else _rerun_steps
    new_tokens, states = run(loaded, ids, wanted, list(interventions), max_new_tokens, cancel)
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


def _done(new_tokens: list[int], max_new_tokens: int, eos: int | None) -> bool:
    return len(new_tokens) == max_new_tokens or bool(new_tokens) and new_tokens[-1] == eos


def _cached_steps(loaded, ids, wanted, interventions, max_new_tokens, cancel):
    from engine.hooks import hooked

    eos = loaded.tokenizer.eos_token_id
    new_tokens: list[int] = []
    with torch.inference_mode(), hooked(loaded.model, loaded.anatomy, wanted, interventions, cancel,
                                        history=True) as tap:
        output = loaded.model(input_ids=ids, use_cache=True)
        while not _done(new_tokens, max_new_tokens, eos):
            new_tokens.append(int(output.logits[0, -1].argmax()))
            # The new token goes in once more, so its own states are recorded too.
            output = loaded.model(input_ids=ids.new_tensor([[new_tokens[-1]]]), cache=output.cache, use_cache=True)
    return new_tokens, {address: tap.history[address] for address in wanted}


def _rerun_steps(loaded, ids, wanted, interventions, max_new_tokens, cancel):
    eos = loaded.tokenizer.eos_token_id
    new_tokens: list[int] = []
    states: dict[str, list[Tensor]] = {address: [] for address in wanted}
    while True:
        logits, tap = forward(loaded, ids, capture=wanted, interventions=interventions, cancel=cancel)
        for address in wanted:
            states[address].append(tap[address] if not new_tokens else tap[address][:, -1:])
        if _done(new_tokens, max_new_tokens, eos):
            return new_tokens, states
        new_tokens.append(int(logits[0, -1].argmax()))
        ids = torch.cat([ids, ids.new_tensor([[new_tokens[-1]]])], dim=1)
