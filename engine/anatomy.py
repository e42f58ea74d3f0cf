"""A loaded (or meta) model as a plain tree of parts; no UI, no hooks.

The tree is built from a family table when the architecture is known and from the bare
``nn.Module`` tree otherwise, so every model opens; only known families get heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from engine.errors import AddressError
from engine.families import FamilyTable, HeadGeometry, family_for, head_geometry, head_row_ranges
from engine.module_paths import join_path as _join

# Capture points each kind of part offers, beyond its own address.
POINTS_BY_KIND: dict[str, tuple[str, ...]] = {
    "layer": ("in", "out"),
    "attn": ("in", "out", "z", "pattern"),
    "head": ("z", "pattern"),
    "mlp": ("in", "out", "hidden"),
    "norm": ("in", "out"),
    "final_norm": ("in", "out"),
    "embed": ("out",),
    "lm_head": ("in", "out"),
    "proj": ("in", "out"),
    "module": ("in", "out"),
}


@dataclass
class Part:
    """One node of the engine bay: a named part with its size and where it lives in HF terms."""

    address: str
    kind: str
    module_path: str | None
    params: int = 0
    shapes: dict[str, list[int]] = field(default_factory=dict)
    dtype: str | None = None
    children: list[Part] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def points(self) -> tuple[str, ...]:
        return POINTS_BY_KIND.get(self.kind, ())

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self, depth: int | None = None) -> dict[str, Any]:
        node: dict[str, Any] = {
            "address": self.address,
            "kind": self.kind,
            "module": self.module_path,
            "params": self.params,
            "shapes": self.shapes,
            "dtype": self.dtype,
            "points": [f"{self.address}.{p}" for p in self.points],
        }
        if self.info:
            node["info"] = self.info
        if depth is None or depth > 0:
            next_depth = None if depth is None else depth - 1
            node["children"] = [child.to_dict(next_depth) for child in self.children]
        return node


@dataclass
class Anatomy:
    """The part tree plus the lookups addresses and hooks need."""

    root: Part
    family: FamilyTable | None
    geometry: HeadGeometry | None
    n_layers: int
    base_path: str
    by_address: dict[str, Part]
    note: str | None = None

    def part(self, address: str) -> Part:
        return self.by_address[address]

    def module_path_of(self, block_index: int, relative: str) -> str:
        prefix = f"{self.base_path}." if self.base_path else ""
        return f"{prefix}{self.family.blocks}.{block_index}.{relative}" if self.family else relative


def _module_summary(module: nn.Module, recurse: bool = True) -> tuple[int, dict[str, list[int]], str | None]:
    shapes: dict[str, list[int]] = {}
    total = 0
    dtype = None
    for name, param in module.named_parameters(recurse=recurse):
        shapes[name] = list(param.shape)
        total += param.numel()
        dtype = dtype or str(param.dtype).replace("torch.", "")
    return total, shapes, dtype


def _get(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        return None


def _make_part(root: nn.Module, address: str, kind: str, path: str, **info: Any) -> Part | None:
    module = _get(root, path)
    if module is None:
        return None
    params, shapes, dtype = _module_summary(module)
    return Part(address, kind, path, params, shapes, dtype, info=dict(info))


def _find_base(model: nn.Module, table: FamilyTable) -> str | None:
    for base in table.bases:
        blocks_path = f"{base}.{table.blocks}" if base else table.blocks
        if isinstance(_get(model, blocks_path), nn.ModuleList):
            return base
    return None


def attention_kind(config: Any, index: int) -> dict[str, Any]:
    """Whether layer ``index`` attends globally or in a sliding window, from the config's
    ``layer_types`` (transformers 5 writes it for every family that mixes the two)."""
    layer_types = getattr(config, "layer_types", None) or []
    kind = layer_types[index] if index < len(layer_types) else "full_attention"
    if kind == "sliding_attention":
        return {"attention": "sliding", "window": int(getattr(config, "sliding_window", 0) or 0)}
    return {"attention": "global" if kind == "full_attention" else str(kind)}


def _attention_part(
    model: nn.Module, table: FamilyTable, geometry: HeadGeometry, block_path: str, index: int,
    config: Any = None,
) -> Part | None:
    attn_table = table.attention
    part = _make_part(
        model, f"L{index}.attn", "attn", _join(block_path, attn_table.module),
        heads=geometry.n_heads, kv_heads=geometry.n_kv_heads, head_dim=geometry.head_dim,
        gqa=geometry.n_kv_heads != geometry.n_heads, **attention_kind(config, index),
    )
    if part is None:
        return None
    for short in ("q", "k", "v", "qkv", "o"):
        rel = getattr(attn_table, short)
        if rel:
            proj = _make_part(model, f"L{index}.attn.{short}", "proj", _join(block_path, rel))
            if proj:
                part.children.append(proj)
    for short in ("q_norm", "k_norm"):
        rel = getattr(attn_table, short)
        norm = _make_part(model, f"L{index}.attn.{short}", "norm", _join(block_path, rel)) if rel else None
        if norm:
            part.children.append(norm)
    per_head_params = sum(
        (stop - start) * _row_width(model, _join(block_path, getattr(attn_table, name)), name == "o", attn_table.conv1d)
        for name, ranges in head_row_ranges(attn_table, geometry, 0).items()
        for start, stop in ranges
    )
    for head in range(geometry.n_heads):
        part.children.append(
            Part(
                f"L{index}.attn.h{head}", "head", part.module_path, per_head_params, {},
                part.dtype, info={"head": head, "kv_group": geometry.kv_group(head), "head_dim": geometry.head_dim},
            )
        )
    return part


def _row_width(model: nn.Module, path: str, is_output: bool, conv1d: bool) -> int:
    """Elements per sliced row of a projection's weight (the other dimension's size)."""
    module = _get(model, path)
    weight = getattr(module, "weight", None)
    if weight is None:
        return 0
    out_dim, in_dim = (weight.shape[1], weight.shape[0]) if conv1d else (weight.shape[0], weight.shape[1])
    return out_dim if is_output else in_dim


def _mlp_part(model: nn.Module, table: FamilyTable, block_path: str, index: int) -> Part:
    mlp_table = table.mlp
    children = []
    for short in ("gate", "up", "gate_up", "down"):
        rel = getattr(mlp_table, short)
        if rel:
            proj = _make_part(model, f"L{index}.mlp.{short}", "proj", _join(block_path, rel))
            if proj:
                children.append(proj)
    path = _join(block_path, mlp_table.module) if mlp_table.module else None
    mlp_module = _get(model, path) if path is not None else None
    if mlp_module is not None:
        params, shapes, dtype = _module_summary(mlp_module)
    else:
        params = sum(c.params for c in children)
        shapes = {f"{c.address.rsplit('.', 1)[1]}.{k}": v for c in children for k, v in c.shapes.items()}
        dtype = children[0].dtype if children else None
    gated = bool(mlp_table.gate or mlp_table.gate_up)
    return Part(f"L{index}.mlp", "mlp", path, params, shapes, dtype, children, info={"gated": gated})


def build_anatomy(model: nn.Module, config: Any) -> Anatomy:
    """The part tree of ``model``: from its family table, or a generic module tree."""
    table = family_for(getattr(config, "model_type", None))
    base = _find_base(model, table) if table else None
    if table is None or base is None:
        return _generic_anatomy(model, config)
    geometry = head_geometry(config)
    total, _, dtype = _module_summary(model)
    root = Part("model", "model", "", total, {}, dtype, info={
        "family": table.name, "model_type": config.model_type,
        "layers": 0, "heads": geometry.n_heads, "kv_heads": geometry.n_kv_heads,
        "head_dim": geometry.head_dim, "hidden_size": int(config.hidden_size),
        "layout": table.layout, "norm": table.norm_kind, "rotary": table.rotary,
    })
    embed = _make_part(model, "embed", "embed", _join(base, table.embed))
    if embed:
        root.children.append(embed)
    for name, rel in table.extra_embeds.items():
        extra = _make_part(model, name, "norm" if name.endswith("norm") else "embed", _join(base, rel))
        if extra:
            root.children.append(extra)
    blocks = _get(model, _join(base, table.blocks))
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        return _generic_anatomy(model, config)
    n_layers = len(blocks)
    root.info["layers"] = n_layers
    for index in range(n_layers):
        block_path = _join(base, table.blocks, str(index))
        layer = _make_part(model, f"L{index}", "layer", block_path)
        if layer is None:  # a ModuleList always holds its indices
            raise AddressError(f"block {block_path} is missing from the model")
        attn = _attention_part(model, table, geometry, block_path, index, config)
        layer.info.update(attention_kind(config, index))
        if attn:
            layer.children.append(attn)
        layer.children.append(_mlp_part(model, table, block_path, index))
        for norm_name, rel in table.norms.items():
            norm = _make_part(model, f"L{index}.{norm_name}", "norm", _join(block_path, rel))
            if norm:
                layer.children.append(norm)
        root.children.append(layer)
    if table.final_norm:
        final = _make_part(model, "final_norm", "final_norm", _join(base, table.final_norm))
        if final:
            root.children.append(final)
    if table.lm_head:
        head = _make_part(model, "lm_head", "lm_head", table.lm_head)
        if head:
            head.info["tied"] = bool(getattr(config, "tie_word_embeddings", False))
            root.children.append(head)
    by_address = {part.address: part for part in root.walk()}
    return Anatomy(root, table, geometry, n_layers, base, by_address)


def _generic_anatomy(model: nn.Module, config: Any) -> Anatomy:
    """Any ``nn.Module`` tree, addressed by its module paths; no heads, no layer numbers."""

    def visit(module: nn.Module, path: str) -> Part:
        params, shapes, dtype = _module_summary(module, recurse=False)
        part = Part(path or "model", "module", path, params, shapes, dtype)
        for name, child in module.named_children():
            child_part = visit(child, _join(path, name))
            part.params += child_part.params
            part.dtype = part.dtype or child_part.dtype
            part.children.append(child_part)
        return part

    root = visit(model, "")
    root.kind = "model"
    model_type = getattr(config, "model_type", None)
    note = (
        f"architecture '{model_type}' has no family table: showing its generic module tree "
        "(no heads or capture points beyond module inputs and outputs)"
    )
    root.info = {"family": None, "model_type": model_type, "note": note}
    by_address = {part.address: part for part in root.walk()}
    return Anatomy(root, None, None, 0, "", by_address, note=note)
