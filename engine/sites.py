"""Where each address's value flows: the module and hook phase of every capture point.

``site_for`` maps a resolved address onto one *site* (a module and whether the value is its
input or its output); ``head_view`` lifts an edit of one head's slice to the whole site
value. Hooks, interventions and analyzers all hook through this one mapping, so a capture
and an edit of the same address always meet at the same place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from engine.addresses import Target
from engine.anatomy import POINTS_BY_KIND, Anatomy
from engine.errors import AddressError
from engine.families import FamilyTable
from engine.module_paths import join_path
from engine.registry import Registry
from engine.tensors import split_heads

Edit = Callable[[Tensor], Tensor | None]


@dataclass(frozen=True)
class Site:
    """A module and whether the value is its first input (``pre``) or its output (``post``)."""

    module_path: str
    phase: str  # "pre": the module's first input; "post": its output
    output_index: int = 0  # which output item, for modules returning tuples


@dataclass(frozen=True)
class BlockSite:
    """A site rule's inputs: the block's module path and the family table's attention and MLP rows."""

    block: str
    table: FamilyTable

    def at(self, relative: str | None, phase: str, output_index: int = 0) -> Site:
        return Site(join_path(self.block, relative), phase, output_index)


# "kind.point" → where that value flows inside a block ("layer." is a layer named without a point)
SiteRule = Callable[[BlockSite], Site]
SITE_RULES: Registry[SiteRule] = Registry("site rule", AddressError)


def register_site_rule(kind: str, point: str | None, rule: SiteRule) -> SiteRule:
    """Teach ``site_for`` where point ``point`` of a part of ``kind`` flows (inside its block).

    A new point becomes an address of every such part (``L3.mlp.gate``) at once.
    """
    if point is not None and point not in POINTS_BY_KIND.get(kind, ()):
        POINTS_BY_KIND[kind] = (*POINTS_BY_KIND.get(kind, ()), point)
    return SITE_RULES.register(f"{kind}.{point or ''}", rule)


def site_for(anatomy: Anatomy, target: Target) -> Site:
    """Where a capture point's value flows: the module and hook phase."""
    part, point = target.part, target.point
    table = anatomy.family
    layer = target.layer
    if table is None or layer is None or part.kind in ("norm", "proj"):
        if part.module_path is None:
            raise AddressError(f"'{target.address}' has no module to hook")
        return Site(part.module_path, "pre" if point == "in" else "post")
    kind = "attn" if part.kind == "head" else part.kind
    key = f"{kind}.{point or ''}"
    if key not in SITE_RULES:
        raise AddressError(f"'{target.address}' is not a capture point of this model")
    return SITE_RULES.get(key)(BlockSite(anatomy.module_path_of(layer, "").rstrip("."), table))


register_site_rule("layer", "in", lambda b: Site(b.block, "pre"))
register_site_rule("layer", "out", lambda b: Site(b.block, "post"))
register_site_rule("layer", None, lambda b: Site(b.block, "post"))
register_site_rule("attn", "in", lambda b: b.at(b.table.attention.module, "pre"))
register_site_rule("attn", "out", lambda b: b.at(b.table.attention.out_module or b.table.attention.module, "post"))
register_site_rule("attn", "z", lambda b: b.at(b.table.attention.o, "pre"))
register_site_rule("attn", "pattern",
                   lambda b: b.at(b.table.attention.pattern_module or b.table.attention.module, "post", 1))
register_site_rule("mlp", "in", lambda b: b.at(b.table.mlp.module or b.table.mlp.up or b.table.mlp.gate_up, "pre"))
register_site_rule("mlp", "out", lambda b: b.at(b.table.mlp.out_module or b.table.mlp.module, "post"))
register_site_rule("mlp", "hidden", lambda b: b.at(b.table.mlp.down, "pre"))


def head_view(target: Target, anatomy: Anatomy, edit: Edit) -> Edit:
    """Lift an edit of one head's slice to an edit of the whole site value."""
    head = target.head
    if head is None:
        return edit
    if anatomy.geometry is None:
        raise AddressError(f"'{target.address}' names a head, but this model has no head geometry")
    n_heads = anatomy.geometry.n_heads

    def on_full(value: Tensor) -> Tensor:
        if target.point == "pattern":
            updated = edit(value[:, head])
            if updated is None:
                return value
            value = value.clone()
            value[:, head] = updated
            return value
        heads = split_heads(value, n_heads)
        updated = edit(heads[..., head, :])
        if updated is None:
            return value
        heads = heads.clone()
        heads[..., head, :] = updated
        return heads.flatten(-2)

    return on_full
