"""Raw site hooks for analyzers: observers and batch-row edits at capture points.

``hooked`` covers captures and named interventions; analyzers also need to *observe* a value
without keeping it (streaming statistics) and to edit one batch row per ablation (batched
head importance). Both reuse the core's site mapping so they hook exactly where captures do.
Hooks installed here are entered after ``hooked``'s, so they see the intervened value.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

from torch import Tensor, nn

from engine.addresses import Target, resolve_point
from engine.anatomy import Anatomy
from engine.errors import GarageError
from engine.hooks import Site, SiteHooks, head_view, installed, site_for
from engine.loading import Cancelled, LoadedModel

Observer = Callable[[Tensor], None]
Edit = Callable[[Tensor], Tensor | None]
Progress = Callable[[str, float | None], None]


@contextlib.contextmanager
def site_hooks(
    model: nn.Module,
    anatomy: Anatomy,
    observers: Mapping[str, Observer] | None = None,
    edits: Sequence[tuple[Target, Edit]] = (),
) -> Iterator[None]:
    """Observe capture points (``{address: fn(value)}``) and apply raw edits for the block.

    Head addresses are lifted with ``head_view`` so an observer sees one head's slice.
    Switches to eager attention while a ``pattern`` point is observed; always restores.
    """
    bundles: dict[Site, SiteHooks] = {}
    targets = []
    for target, edit in edits:
        site = site_for(anatomy, target)
        bundles.setdefault(site, SiteHooks(site)).edits.append(edit)
    for address, observe in (observers or {}).items():
        target = resolve_point(anatomy, address)
        targets.append(target)
        site = site_for(anatomy, target)
        # after the raw edits, an observer is an edit returning None, lifted to the head's slice where needed
        bundles.setdefault(site, SiteHooks(site)).edits.append(head_view(target, anatomy, _returning_none(observe)))
    with installed(model, bundles, eager=any(t.point == "pattern" for t in targets)):
        yield


def _returning_none(observe: Observer) -> Edit:
    def edit(value: Tensor) -> None:
        observe(value)
        return None

    return edit


def require_causal(loaded: LoadedModel, what: str) -> None:
    """Refuse models without an LM head for analyzers that read next-token logits."""
    if not loaded.is_causal_lm:
        raise GarageError(
            f"{what} needs a causal language model with an LM head; '{loaded.name}' has none "
            "(try stats, attention or similarity on it instead)"
        )


def require_heads(loaded: LoadedModel):
    """The model's head geometry, or a clear error for models this garage cannot split into heads."""
    if loaded.anatomy.geometry is None or not loaded.anatomy.n_layers:
        raise GarageError(f"'{loaded.name}' has no attention heads this garage knows how to address")
    return loaded.anatomy.geometry


def check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} was cancelled; no partial report was kept")


def notify(progress: Progress | None, stage: str, fraction: float | None) -> None:
    if progress is not None:
        progress(stage, fraction)


def run_with(
    loaded: LoadedModel,
    ids: Tensor,
    *,
    interventions: Sequence = (),
    capture: Sequence[str] = (),
    observers: Mapping[str, Observer] | None = None,
    edits: Sequence[tuple[Target, Edit]] = (),
    last_logits_only: bool = False,
):
    """One forward pass: interventions (via ``hooked``) first, then raw edits and observers.

    Returns ``(main output, tap)``: logits for a causal LM, the last hidden state otherwise.
    ``last_logits_only`` skips the LM head on all but the last position (logits ``[B, 1, V]``).
    """
    import torch

    from engine.hooks import hooked

    if loaded.structure_only:
        raise GarageError(f"'{loaded.name}' is open structure-only (no weights); open it with weights to run it")
    with torch.inference_mode(), hooked(loaded.model, loaded.anatomy, capture, interventions) as tap, \
            site_hooks(loaded.model, loaded.anatomy, observers or {}, edits):
        if loaded.is_causal_lm:
            extra = {"logits_to_keep": 1} if last_logits_only else {}
            output = loaded.model(input_ids=ids, use_cache=False, **extra)
        else:
            output = loaded.model(input_ids=ids)
    main = output.logits if hasattr(output, "logits") else output.last_hidden_state
    return main, tap


class _ReplayBlock(nn.Module):
    """Stands in for a transformer block whose output is already known (same for every row)."""

    def __init__(self, output: object) -> None:
        super().__init__()
        self.recorded = output

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> object:
        from engine.tensors import first_tensor, replace_first

        value = first_tensor(self.recorded)
        return replace_first(self.recorded, value.expand(hidden_states.shape[0], *value.shape[1:]))


def record_blocks(loaded: LoadedModel, ids: Tensor) -> tuple[Tensor, list[object]]:
    """A clean run of ``ids`` (one row): its logits and every block's raw output, for ``replay_prefix``."""
    outputs: list[object] = []
    handles = []
    for layer in range(loaded.anatomy.n_layers):
        block = loaded.model.get_submodule(loaded.anatomy.module_path_of(layer, "").rstrip("."))
        handles.append(block.register_forward_hook(lambda module, args, output: outputs.append(output)))
    try:
        logits, _ = run_with(loaded, ids)
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
