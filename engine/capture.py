"""Capture a prompt's activations at a set of addresses."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from torch import Tensor

from engine.addresses import resolve_point
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.progress import Progress
from engine.run import run
from engine.runner import encode


def capture_prompt(
    loaded: LoadedModel,
    prompt: str,
    addresses: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Tensor], list[int]]:
    """``{canonical address: tensor}`` for one forward pass of ``prompt``, and its token ids.

    Addresses are resolved before the forward pass, so a typo fails fast. Keys are canonical
    (``L10`` is stored as ``L10.out``; aliases become our own names).
    """
    canonical = [resolve_point(loaded.anatomy, address).address for address in addresses]
    ids = encode(loaded, prompt)
    tap = run(loaded, ids, capture=canonical, interventions=interventions, cancel=cancel, progress=progress,
              stop_after_capture=True).tap
    return {address: tap[address] for address in canonical}, ids[0].tolist()
