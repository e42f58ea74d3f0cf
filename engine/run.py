"""The one forward entry point: every pass the engine makes goes through ``run``.

Captures, interventions, streaming-statistics observers, raw per-row edits, cancellation at
each layer, per-layer progress and last-position-only logits, all in one call. Analyzers,
stats, snapshots in motion, the build bench's evaluation and the app call it, so Esc stops
any of them at the next layer and a test can count the passes one action makes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.addresses import Target
from engine.errors import GarageError
from engine.hooks import Edit, Observer, PassComplete, Tap, hooked
from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.progress import Progress, check_cancel

__all__ = ["Progress", "RunOutput", "require_weights", "run"]


@dataclass
class RunOutput:
    """One forward pass: the model's main output, what it captured, and the ids it read."""

    # logits [B, T, vocab] for a causal LM ([B, 1, vocab] with last_logits_only); else the last hidden
    # state; None when the pass stopped after its capture points (stop_after_capture)
    main: Tensor | None
    tap: Tap
    ids: Tensor  # [B, T]
    cache: object | None = None  # the KV cache, when the pass was asked to keep one

    @property
    def logits(self) -> Tensor:
        """The main output under its usual name (a causal LM's logits)."""
        if self.main is None:
            raise GarageError("this pass stopped after its capture points (stop_after_capture), so it has no "
                              "output; run it without stop_after_capture to get one")
        return self.main


def require_weights(loaded: LoadedModel) -> None:
    """Refuse a structure-only model (no weights), or one opened without the parts its folder carries
    (B alone is not the model), with a message that says how to run it."""
    if loaded.structure_only:
        raise GarageError(f"'{loaded.name}' is open structure-only (no weights); open it with weights to run it")
    if loaded.detached:
        raise GarageError(f"'{loaded.name}' was opened without the {loaded.detached[0]} its folder carries "
                          "(attach=False, for reading weights); open it again with its parts to run it")


def run(
    loaded: LoadedModel,
    ids: Tensor,
    *,
    capture: Sequence[str] = (),
    interventions: Sequence[Intervention] = (),
    observers: Mapping[str, Observer] | None = None,
    edits: Sequence[tuple[Target, Edit]] = (),
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
    last_logits_only: bool = False,
    attention_mask: Tensor | None = None,
    cache: object | None = None,
    use_cache: bool = False,
    history: bool = False,
    grad: bool = False,
    stop_after_capture: bool = False,
) -> RunOutput:
    """One forward pass of ``ids`` (``[B, T]``) under ``interventions``.

    ``capture`` keeps the named points in ``RunOutput.tap``; ``observers`` (``{address:
    fn(value)}``) see a value without keeping it; ``edits`` are raw ``(target, fn)`` edits
    applied after the interventions. Setting ``cancel`` stops the pass with ``Cancelled`` at
    the next layer; ``progress(stage, fraction)`` hears of each layer. ``last_logits_only``
    runs a causal LM's head on the last position only. A padded batch passes its
    ``attention_mask``; mean ablation then leaves the pads out of its mean. ``use_cache``
    returns the KV cache in ``RunOutput.cache`` and ``cache`` continues from one (one
    decoding step). ``grad`` runs with autograd on instead of inference mode, so a trained part
    attached as an intervention (a blade) gets gradients through the frozen model.
    ``stop_after_capture`` ends the pass once every capture point and observer has seen its
    value: the layers after the last of them, the final norm and the head never run (a capture
    at layer 3 of 30 costs a tenth of a pass; every layer of Gemma, whose 262k-word head is more
    than half its pass, less than half), and ``RunOutput.main`` is None. Every hook is removed on the way
    out, also when the pass raises.
    """
    require_weights(loaded)
    check_cancel(cancel, "the forward pass")
    if loaded.standing:
        # parts the model's folder carries (a blade): part of the model, so first and in every pass
        if cache is not None and not all(item.position_independent() for item in loaded.standing):
            raise GarageError(f"'{loaded.name}' carries {loaded.standing[0].describe()}, which reads the whole "
                              "text: rerun the full sequence instead of continuing from a cache")
        interventions = [*loaded.standing, *interventions]
    extra: dict[str, object] = {}
    if attention_mask is not None:
        extra["attention_mask"] = attention_mask.to(ids.device)
    if loaded.is_causal_lm:
        extra["use_cache"] = use_cache
        if cache is not None:
            extra["cache"] = cache
        if last_logits_only:
            extra["logits_to_keep"] = 1
    if stop_after_capture and (use_cache or cache is not None):
        raise GarageError("stop_after_capture cannot keep or continue a KV cache: the cache needs every layer")
    autograd = torch.enable_grad() if grad else torch.inference_mode()
    with autograd, hooked(loaded.model, loaded.anatomy, capture, interventions, cancel, history, observers=observers,
                          edits=edits, progress=progress, stop_after_capture=stop_after_capture) as tap:
        try:
            output = loaded.model(input_ids=ids, **extra)
        except PassComplete:
            return RunOutput(None, tap, ids)
    main = output.logits if hasattr(output, "logits") else output.last_hidden_state
    return RunOutput(main, tap, ids, getattr(output, "cache", None) if use_cache else None)
