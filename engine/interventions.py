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
        if self.kind == "ablate":
            return f"{self.mode}-ablate {self.address}"
        if self.kind == "scale":
            return f"scale {self.address} ×{self.factor:g}"
        if self.kind == "steer":
            return f"steer {self.address} (strength {self.strength:g})"
        if self.kind == "patch":
            return f"patch {self.address}"
        return f"replace {self.address}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description; tensors and modules are named, not embedded."""
        doc: dict[str, Any] = {"kind": self.kind, "address": self.address}
        if self.kind == "ablate":
            doc["mode"] = self.mode
        if self.kind == "scale":
            doc["factor"] = self.factor
        if self.kind == "steer":
            doc["strength"] = self.strength
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

    ``origin`` records what the vector was made from (see ``steer_from_prompts``) so a session
    can store the steer as data and recompute the vector on restore.
    """
    return Intervention("steer", address, vector=vector, strength=float(strength),
                        positions=list(positions) if positions is not None else None, origin=origin)


def steer_from_prompts(loaded: Any, address: str, positive: Sequence[str], negative: Sequence[str],
                       strength: float = 4.0) -> Intervention:
    """A steer on layer ``address`` whose vector is the positive-minus-negative residual mean there.

    The vector comes from ``engine.analyzers.steering.steering_vector`` at the layer's output;
    the prompts travel in ``origin``, so the same call rebuilds an equal vector later.
    """
    from engine.analyzers.steering import steering_vector  # it imports this module

    target = resolve(loaded.anatomy, address)
    if target.part.kind != "layer" or target.point not in (None, "out"):
        raise InterventionError(
            f"cannot steer '{address}' from prompts: pick a layer such as L10 (its output is steered)"
        )
    if not math.isfinite(float(strength)):
        raise InterventionError(f"steering strength for '{address}' must be a finite number, got {strength}")
    positive, negative = [str(p) for p in positive], [str(n) for n in negative]
    layer = int(target.part.address.removeprefix("L"))
    vector = steering_vector(loaded, layer, positive, negative).vector
    return steer(target.part.address, vector, strength, origin={"positive": positive, "negative": negative})


def patch(address: str, value: Tensor, positions: Sequence[int] | None = None) -> Intervention:
    """Replace the activation at a capture point with ``value`` (e.g. from another prompt)."""
    return Intervention("patch", address, value=value, positions=list(positions) if positions is not None else None)


def replace(address: str, module: nn.Module) -> Intervention:
    return Intervention("replace", address, module=module)


@dataclass
class EditPlan:
    site: Any = None
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


def _output_transform(intervention: Intervention, mask: RunMask | None) -> Callable[[Tensor], Tensor]:
    if intervention.kind == "scale":
        return lambda value: value * intervention.factor
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
    from engine.hooks import head_view, site_for  # hooks imports this module

    kind = intervention.kind
    if kind in ("ablate", "scale"):
        target = resolve(anatomy, intervention.address)
        _check_kind(target, EDITABLE_KINDS, kind)
        transform = _output_transform(intervention, mask)
        part = target.part
        if part.kind == "head":
            z = Target(part, "z")
            return [EditPlan(site_for(anatomy, z), head_view(z, anatomy, transform))]
        if part.kind == "layer":
            return _layer_delta_edits(anatomy, target, transform)
        return [EditPlan(site_for(anatomy, Target(part, "out")), transform)]
    if kind == "steer":
        target = resolve_point(anatomy, intervention.address)
        if target.part.kind != "layer" and target.part.kind not in ("embed", "final_norm"):
            raise InterventionError(
                f"cannot steer '{target.address}': steer a residual point such as L10 or L10.in"
            )
        return [EditPlan(site_for(anatomy, target), _steer_edit(intervention, anatomy))]
    if kind == "patch":
        target = resolve_point(anatomy, intervention.address)
        if intervention.value is None:
            raise InterventionError(f"patch of '{target.address}' needs a value tensor")
        if target.point == "pattern":
            raise InterventionError(
                f"cannot patch '{target.address}': attention weights are an output the model does not "
                f"read back; patch {target.part.address}.z instead"
            )
        return [EditPlan(site_for(anatomy, target), head_view(target, anatomy, _patch_edit(intervention, target)))]
    if kind == "replace":
        target = resolve(anatomy, intervention.address)
        if target.part.kind == "head" or not target.part.module_path or intervention.module is None:
            raise InterventionError(f"cannot replace '{target.address}': name a part with a module and give one")
        return [EditPlan(swap=(target.part.module_path, intervention.module))]
    raise InterventionError(f"unknown intervention '{kind}'; use ablate, scale, steer, patch or replace")


def _layer_delta_edits(anatomy: Anatomy, target: Target, transform: Callable[[Tensor], Tensor]) -> list[EditPlan]:
    from engine.hooks import site_for

    held = _LayerInput()

    def remember(value: Tensor) -> None:
        held.value = value

    def on_output(value: Tensor) -> Tensor:
        residual_in = held.value
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
