"""Interventions as values: what to change, where, and by how much.

An ``Intervention`` is plain data (it serialises into sessions, minus tensors); ``edits_for``
turns it into hook edits at the right sites. Layer-level edits act on the layer's *delta*
(output minus input), so zero-ablating a layer skips it and scaling a layer scales what it
adds to the residual stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from engine.addresses import Target, resolve, resolve_point
from engine.anatomy import Anatomy
from engine.errors import InterventionError
from engine.intervention_kinds import INTERVENTIONS, InterventionKind, register_intervention
from engine.sites import Site, head_view, site_for
from engine.tensors import position_mean

ABLATE_MODES = ("zero", "mean")
EDITABLE_KINDS = ("head", "attn", "mlp", "layer", "norm", "final_norm", "embed", "lm_head", "proj", "module")


@dataclass
class Intervention:
    kind: str  # ablate | scale | steer | patch | replace
    address: str
    mode: str = "zero"
    factor: float = 1.0
    vector: Tensor | None = None
    strength: float = 1.0
    value: Tensor | None = None
    positions: list[int] | None = None
    module: nn.Module | None = None
    # Data a tensor was made from (a steer's prompts), so a session can rebuild the tensor.
    origin: dict[str, Any] | None = None

    def describe(self) -> str:
        """One line for lists and status bars, e.g. ``zero-ablate L3.attn.h2``."""
        return INTERVENTIONS.get(self.kind).describe(self)

    def position_independent(self) -> bool:
        """True when every position is edited alike, so cached decoding is exact (else: rerun)."""
        return self.kind in INTERVENTIONS and INTERVENTIONS.get(self.kind).position_independent(self)

    def needs_mask(self) -> bool:
        """True when the edit reads the pass's attention mask (mean ablation leaves pads out)."""
        return self.kind in INTERVENTIONS and INTERVENTIONS.get(self.kind).needs_mask(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description; tensors and modules are named, not embedded."""
        doc: dict[str, Any] = {"kind": self.kind, "address": self.address}
        for name in INTERVENTIONS.get(self.kind).fields:
            doc[name] = getattr(self, name)
        if self.positions is not None:
            doc["positions"] = list(self.positions)
        if self.origin is not None:
            doc["origin"] = {key: list(value) if isinstance(value, (list, tuple)) else value
                             for key, value in self.origin.items()}
        return doc


def ablate(address: str, mode: str = "zero") -> Intervention:
    """Zero- or mean-ablate a head, attention block, MLP or layer.

    The mean is over batch and positions, leaving out positions the model's
    ``attention_mask`` marks as padding.
    """
    if mode not in ABLATE_MODES:
        raise InterventionError(f"unknown ablation mode '{mode}'; use one of: {', '.join(ABLATE_MODES)}")
    return Intervention("ablate", address, mode=mode)


def scale(address: str, factor: float) -> Intervention:
    """Multiply a part's output (a head's z; a layer's delta) by ``factor``."""
    if not math.isfinite(float(factor)):
        raise InterventionError(f"scale factor for '{address}' must be a finite number, got {factor}")
    return Intervention("scale", address, factor=float(factor))


def steer(address: str, vector: Tensor, strength: float = 1.0, positions: Sequence[int] | None = None,
          origin: dict[str, Any] | None = None) -> Intervention:
    """Add ``strength * vector`` to a residual point (a layer means its output).

    ``origin`` records what the vector was made from (see ``engine.analyzers.steering.steer_from_prompts``) so a session
    can store the steer as data and recompute the vector on restore.
    """
    if not math.isfinite(float(strength)):
        raise InterventionError(f"steering strength for '{address}' must be a finite number, got {strength}")
    return Intervention("steer", address, vector=vector, strength=float(strength),
                        positions=list(positions) if positions is not None else None, origin=origin)


def patch(address: str, value: Tensor, positions: Sequence[int] | None = None) -> Intervention:
    """Replace the activation at a capture point with ``value`` (e.g. from another prompt)."""
    return Intervention("patch", address, value=value, positions=list(positions) if positions is not None else None)


def replace(address: str, module: nn.Module) -> Intervention:
    return Intervention("replace", address, module=module)


@dataclass
class EditPlan:
    site: Site | None = None
    edit: Callable[[Tensor], Tensor | None] | None = None
    swap: tuple[str, nn.Module] | None = None
    observe: bool = False  # run after every edit at the site, seeing the final value


@dataclass
class RunMask:
    """The attention mask of the pass in flight, read off the model's own call by ``hooked``."""

    value: Tensor | None = None


@dataclass
class _LayerInput:
    value: Tensor | None = field(default=None)


def _check_kind(target: Target, kinds: Sequence[str], verb: str) -> None:
    if target.part.kind not in kinds or target.point not in (None, "out"):
        raise InterventionError(
            f"cannot {verb} '{target.address}': {verb} works on a part ({', '.join(kinds)}), "
            "not a capture point"
        )


def _scale_transform(intervention: Intervention, mask: RunMask | None) -> Callable[[Tensor], Tensor]:
    return lambda value: value * intervention.factor


def _ablate_transform(intervention: Intervention, mask: RunMask | None) -> Callable[[Tensor], Tensor]:
    if intervention.mode == "mean":
        held: list[Tensor] = []

        def mean_ablate(value: Tensor) -> Tensor:
            # A cached generation step sees one position, whose own mean is itself: reuse
            # the mean of the last multi-position pass (the prompt) instead.
            if value.shape[-2] > 1 or not held:
                held[:] = [position_mean(value, mask.value if mask is not None else None)]
            return held[0].expand_as(value).to(value.dtype)

        return mean_ablate
    return torch.zeros_like


def edits_for(anatomy: Anatomy, intervention: Intervention, mask: RunMask | None = None) -> list[EditPlan]:
    """The hook edits that carry out ``intervention`` on a model with this anatomy.

    ``mask`` lets mean ablation leave padded positions out of its mean.
    """
    return INTERVENTIONS.get(intervention.kind).plan(anatomy, intervention, mask)


def _part_output_edits(make: Callable[[Intervention, RunMask | None], Callable[[Tensor], Tensor]]):
    """A planner editing a part's output (a head's z; a layer's delta) with ``make``'s transform."""

    def plan(anatomy: Anatomy, intervention: Intervention, mask: RunMask | None) -> list[EditPlan]:
        target = resolve(anatomy, intervention.address)
        _check_kind(target, EDITABLE_KINDS, intervention.kind)
        transform = make(intervention, mask)
        part = target.part
        if part.kind == "head":
            z = Target(part, "z")
            return [EditPlan(site_for(anatomy, z), head_view(z, anatomy, transform))]
        if part.kind == "layer":
            return _layer_delta_edits(anatomy, target, transform)
        return [EditPlan(site_for(anatomy, Target(part, "out")), transform)]

    return plan


def _plan_steer(anatomy: Anatomy, intervention: Intervention, mask: RunMask | None) -> list[EditPlan]:
    target = resolve_point(anatomy, intervention.address)
    if target.part.kind != "layer" and target.part.kind not in ("embed", "final_norm"):
        raise InterventionError(
            f"cannot steer '{target.address}': steer a residual point such as L10 or L10.in"
        )
    return [EditPlan(site_for(anatomy, target), _steer_edit(intervention, anatomy))]


def _plan_patch(anatomy: Anatomy, intervention: Intervention, mask: RunMask | None) -> list[EditPlan]:
    target = resolve_point(anatomy, intervention.address)
    if intervention.value is None:
        raise InterventionError(f"patch of '{target.address}' needs a value tensor")
    if target.point == "pattern":
        raise InterventionError(
            f"cannot patch '{target.address}': attention weights are an output the model does not "
            f"read back; patch {target.part.address}.z instead"
        )
    return [EditPlan(site_for(anatomy, target), head_view(target, anatomy, _patch_edit(intervention, target)))]


def _plan_replace(anatomy: Anatomy, intervention: Intervention, mask: RunMask | None) -> list[EditPlan]:
    target = resolve(anatomy, intervention.address)
    if target.part.kind == "head" or not target.part.module_path or intervention.module is None:
        raise InterventionError(f"cannot replace '{target.address}': name a part with a module and give one")
    return [EditPlan(swap=(target.part.module_path, intervention.module))]


def _layer_delta_edits(anatomy: Anatomy, target: Target, transform: Callable[[Tensor], Tensor]) -> list[EditPlan]:
    held = _LayerInput()

    def remember(value: Tensor) -> None:
        held.value = value

    def on_output(value: Tensor) -> Tensor:
        if held.value is None:  # the layer's input hook runs first in every pass
            raise InterventionError(f"the input of {target.address} was not seen before its output")
        residual_in = held.value.to(value.device)  # a split model's layer may run on another device
        return residual_in + transform(value - residual_in)

    return [
        EditPlan(site_for(anatomy, Target(target.part, "in")), remember, observe=True),
        EditPlan(site_for(anatomy, Target(target.part, "out")), on_output),
    ]


def _steer_edit(intervention: Intervention, anatomy: Anatomy) -> Callable[[Tensor], Tensor]:
    vector = intervention.vector
    if vector is None:
        raise InterventionError(f"steer at '{intervention.address}' needs a vector")
    hidden = anatomy.root.info.get("hidden_size")
    if hidden is not None and vector.shape[-1] != hidden:
        raise InterventionError(
            f"steering vector has size {vector.shape[-1]} but the residual stream has {hidden}"
        )

    def edit(value: Tensor) -> Tensor:
        shift = (intervention.strength * vector).to(device=value.device, dtype=value.dtype)
        if intervention.positions is None:
            return value + shift
        _check_positions(intervention, value.shape[1], value.shape[1])
        value = value.clone()
        value[:, intervention.positions] += shift
        return value

    return edit


def _patch_edit(intervention: Intervention, target: Target) -> Callable[[Tensor], Tensor]:
    source = intervention.value
    if source is None:
        raise InterventionError(f"patch of '{target.address}' needs a value tensor")

    def edit(value: Tensor) -> Tensor:
        patched_in = source.to(device=value.device, dtype=value.dtype)
        if intervention.positions is None:
            if patched_in.shape != value.shape:
                raise InterventionError(
                    f"patch for '{target.address}' has shape {list(patched_in.shape)} but the run has "
                    f"{list(value.shape)}; prompts must have the same token length"
                )
            return patched_in
        _check_positions(intervention, value.shape[1], patched_in.shape[1])
        value = value.clone()
        value[:, intervention.positions] = patched_in[:, intervention.positions]
        return value

    return edit


def _check_positions(intervention: Intervention, run_length: int, value_length: int) -> None:
    length = min(run_length, value_length)
    for position in intervention.positions or ():
        if not -length <= position < length:
            raise InterventionError(
                f"position {position} of {intervention.kind} at '{intervention.address}' is out of range: "
                f"the run has {run_length} positions (count from 0, negative from the end)"
            )


def _restore_scale(document: dict[str, Any]) -> Intervention:
    factor = document.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool):
        raise InterventionError(f"scale intervention on {document['address']} needs a numeric 'factor'")
    return scale(document["address"], float(factor))


register_intervention(InterventionKind(
    "ablate", _part_output_edits(_ablate_transform), lambda i: f"{i.mode}-ablate {i.address}", ("mode",),
    position_independent=lambda i: i.mode == "zero", needs_mask=lambda i: i.mode == "mean",
    restore=lambda doc: ablate(doc["address"], str(doc.get("mode", "zero")))))
register_intervention(InterventionKind(
    "scale", _part_output_edits(_scale_transform), lambda i: f"scale {i.address} ×{i.factor:g}", ("factor",),
    position_independent=lambda i: True, restore=_restore_scale))
register_intervention(InterventionKind(
    "steer", _plan_steer, lambda i: f"steer {i.address} (strength {i.strength:g})", ("strength",),
    position_independent=lambda i: i.positions is None))
register_intervention(InterventionKind("patch", _plan_patch, lambda i: f"patch {i.address}"))
register_intervention(InterventionKind(
    "replace", _plan_replace, lambda i: f"replace {i.address}", position_independent=lambda i: True))
