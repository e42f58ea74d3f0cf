"""What analyzers share: the checks they make on a model, and replaying a clean prefix.

Every analyzer runs the model through ``engine.run.run``; batched sweeps (head importance,
patching) also record one clean pass's block outputs and replay them for the blocks before
the first edited layer, so each batch only pays for the blocks it changes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from engine.errors import GarageError
from engine.families import HeadGeometry
from engine.loading import LoadedModel
from engine.progress import Progress, check_cancel, notify
from engine.run import run
from engine.tensors import first_tensor, replace_first

__all__ = ["Progress", "check_cancel", "notify", "record_blocks", "replay_prefix", "require_causal",
           "require_heads"]


def require_causal(loaded: LoadedModel, what: str) -> None:
    """Refuse models without an LM head for analyzers that read next-token logits."""
    if not loaded.is_causal_lm:
        raise GarageError(
            f"{what} needs a causal language model with an LM head; '{loaded.name}' has none "
            "(try stats, attention or similarity on it instead)"
        )


def require_heads(loaded: LoadedModel) -> HeadGeometry:
    """The model's head geometry, or a clear error for models this garage cannot split into heads."""
    if loaded.anatomy.geometry is None or not loaded.anatomy.n_layers:
        raise GarageError(f"'{loaded.name}' has no attention heads this garage knows how to address")
    return loaded.anatomy.geometry


class _ReplayBlock(nn.Module):
    """Stands in for a transformer block whose output is already known (same for every row)."""

    def __init__(self, output: object) -> None:
        super().__init__()
        self.recorded = output

    def forward(self, hidden_states: Tensor, *args: object, **kwargs: object) -> object:
        value = first_tensor(self.recorded)
        return replace_first(self.recorded, value.expand(hidden_states.shape[0], *value.shape[1:]))


def _block(loaded: LoadedModel, layer: int) -> nn.Module:
    return loaded.model.get_submodule(loaded.anatomy.module_path_of(layer, "").rstrip("."))


def record_blocks(loaded: LoadedModel, ids: Tensor, cancel: threading.Event | None = None,
                  progress: Progress | None = None) -> tuple[Tensor, list[object]]:
    """A clean run of ``ids`` (one row): its logits and every block's raw output, for ``replay_prefix``."""
    outputs: list[object] = []
    handles = [_block(loaded, layer).register_forward_hook(lambda module, args, output: outputs.append(output))
               for layer in range(loaded.anatomy.n_layers)]
    try:
        logits = run(loaded, ids, cancel=cancel, progress=progress).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs


@contextlib.contextmanager
def replay_prefix(loaded: LoadedModel, recorded: Sequence[object], start: int) -> Iterator[None]:
    """Skip blocks ``0 … start-1`` by replaying their recorded clean outputs.

    Rows whose edits all sit at block ``start`` or later compute exactly what a full pass
    would, so batched ablation and patching sweeps only pay for the blocks they change.
    """
    swaps = []
    try:
        for layer in range(min(start, len(recorded))):
            path = loaded.anatomy.module_path_of(layer, "").rstrip(".")
            parent_path, _, attr = path.rpartition(".")
            parent = loaded.model.get_submodule(parent_path)
            swaps.append((parent, attr, getattr(parent, attr)))
            setattr(parent, attr, _ReplayBlock(recorded[layer]))
        yield
    finally:
        for parent, attr, original in reversed(swaps):
            setattr(parent, attr, original)
