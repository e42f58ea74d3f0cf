"""One address grammar for parts and capture points.

Parts: ``embed``, ``L10``, ``L10.attn``, ``L10.attn.h3``, ``L10.attn.q``, ``L10.mlp``,
``L10.mlp.down``, ``L10.norm1``, ``final_norm``, ``lm_head``. A capture point is a part plus
one of its points: ``L10.in``, ``L10.out``, ``L10.attn.out``, ``L10.attn.z``,
``L10.attn.h3.z``, ``L10.attn.pattern``, ``L10.mlp.hidden``. HF module paths and
TransformerLens hook names are accepted as aliases.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from engine.anatomy import Anatomy, Part
from engine.errors import AddressError

# TransformerLens hook names that map onto ours; {i} is the layer, {h} a head where relevant.
_TRANSFORMER_LENS = (
    (re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), "L{0}.in"),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), "L{0}.out"),
    (re.compile(r"^blocks\.(\d+)\.hook_attn_out$"), "L{0}.attn.out"),
    (re.compile(r"^blocks\.(\d+)\.hook_mlp_out$"), "L{0}.mlp.out"),
    (re.compile(r"^blocks\.(\d+)\.attn\.hook_z$"), "L{0}.attn.z"),
    (re.compile(r"^blocks\.(\d+)\.attn\.hook_pattern$"), "L{0}.attn.pattern"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$"), "L{0}.mlp.hidden"),
    (re.compile(r"^hook_embed$"), "embed.out"),
)
_HEAD = re.compile(r"^L(\d+)\.attn\.h(\d+)(?:\.|$)")
_LAYER = re.compile(r"^L(\d+)(?:\.|$)")


@dataclass(frozen=True)
class Target:
    """A resolved address: a part, and the capture point on it (None for the part itself)."""

    part: Part
    point: str | None

    @property
    def address(self) -> str:
        return f"{self.part.address}.{self.point}" if self.point else self.part.address

    @property
    def head(self) -> int | None:
        return self.part.info.get("head") if self.part.kind == "head" else None

    @property
    def layer(self) -> int | None:
        match = _LAYER.match(self.part.address)
        return int(match.group(1)) if match else None


def all_addresses(anatomy: Anatomy) -> list[str]:
    """Every part address and capture point of the model, in tree order."""
    names: list[str] = []
    for part in anatomy.root.walk():
        if part.kind != "model":
            names.append(part.address)
        names.extend(f"{part.address}.{point}" for point in part.points)
    return names


def resolve(anatomy: Anatomy, text: str) -> Target:
    """Resolve an address or alias; raise ``AddressError`` naming the nearest valid ones."""
    address = text.strip()
    if address in anatomy.by_address:
        return Target(anatomy.by_address[address], None)
    for pattern, template in _TRANSFORMER_LENS:
        match = pattern.match(address)
        if match:
            return resolve(anatomy, template.format(*match.groups()))
    # a part's point before HF module paths: the path search walks the whole tree, and hooking
    # every head's z resolves 270 of these per block (the two namespaces never overlap)
    part_address, _, point = address.rpartition(".")
    part = anatomy.by_address.get(part_address)
    if part is not None and point in part.points:
        return Target(part, point)
    target = _resolve_hf_path(anatomy, address)
    if target:
        return target
    _raise_out_of_range(anatomy, address)
    nearest = difflib.get_close_matches(address, all_addresses(anatomy), n=5, cutoff=0.6)
    hint = f"nearest valid: {', '.join(nearest)}" if nearest else "run `garage inspect MODEL` to list addresses"
    raise AddressError(f"unknown address '{address}'; {hint}")


def _resolve_hf_path(anatomy: Anatomy, address: str) -> Target | None:
    for part in anatomy.root.walk():
        if part.kind != "head" and part.module_path and part.module_path == address:
            return Target(part, None)
    return None


def _raise_out_of_range(anatomy: Anatomy, address: str) -> None:
    layer_match = _LAYER.match(address)
    if layer_match and anatomy.n_layers and int(layer_match.group(1)) >= anatomy.n_layers:
        raise AddressError(
            f"layer {layer_match.group(1)} is out of range in '{address}': "
            f"this model has layers L0–L{anatomy.n_layers - 1}"
        )
    head_match = _HEAD.match(address)
    if head_match and anatomy.geometry and int(head_match.group(2)) >= anatomy.geometry.n_heads:
        raise AddressError(
            f"head {head_match.group(2)} is out of range in '{address}': "
            f"L{head_match.group(1)}.attn has heads h0–h{anatomy.geometry.n_heads - 1}"
        )


def resolve_point(anatomy: Anatomy, text: str) -> Target:
    """Resolve a capture point; a bare part means its output (``L10`` is ``L10.out``)."""
    target = resolve(anatomy, text)
    if target.point is not None:
        return target
    points = target.part.points
    if "out" in points:
        return Target(target.part, "out")
    if "z" in points:
        return Target(target.part, "z")
    raise AddressError(f"'{target.address}' has no capture point; try one of: {', '.join(points) or 'none'}")
