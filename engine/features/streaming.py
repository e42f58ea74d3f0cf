"""Run a model only as far as one capture point: a stop exception raised right after the point's
value is seen, so nothing beyond it runs (how SAE training and feature reading stay cheap)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from torch import Tensor


class _Reached(Exception):
    """Raised inside the forward pass once the wanted point has been seen (never leaves this module)."""


def activations_at(loaded: Any, ids: Tensor, address: str, *, cancel: threading.Event | None = None,
                   observe: Callable[[Tensor], None] | None = None) -> Tensor:
    """The value at ``address`` for ``ids``, stopping the forward pass right there."""
    from engine.run import run

    seen: list[Tensor] = []

    def grab(value: Tensor) -> None:
        seen.append(value.detach())
        if observe is not None:
            observe(value)
        raise _Reached

    try:
        run(loaded, ids, observers={address: grab}, cancel=cancel)
    except _Reached:
        pass
    if not seen:
        raise RuntimeError(f"'{address}' never ran")  # an address the family table maps to an unused module
    return seen[0]
