"""What a part is made of, worked out from the anatomy alone (works on meta models too).

A plan names every tensor of the part (relative name, full source name, slice) and the
config fragment that rebuilds it. Extraction from a loaded model and from a checkpoint share
one plan, so both write byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from torch import nn

from engine.addresses import resolve
from engine.anatomy import Anatomy, Part
from engine.families import head_row_ranges
from engine.parts.errors import PartError
from engine.parts.record import TensorEntry

FORMAT = "garage-part/1"
# Keys that describe a file or a run rather than the architecture (as in ``config_hash``).
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "quantization_config", "dtype", "torch_dtype",
                         "architectures", "_attn_implementation_autoset", "_commit_hash")
MODULE_KINDS = ("layer", "attn", "mlp", "norm", "final_norm", "embed", "lm_head", "proj")


@dataclass
class PartPlan:
    """The tensors and rebuild fragment of one part of one model."""

    address: str
    kind: str
    tensors: list[TensorEntry]
    fragment: dict[str, Any]
    signature: dict[str, Any]
    family: str | None
    model_type: str | None
    config_hash: str


def normalized_config(config: Any) -> dict[str, Any]:
    """The architecture config as plain JSON data, stable across loads and file formats."""
    doc = config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        doc.pop(key, None)
    return json.loads(json.dumps(doc, sort_keys=True, default=str))


def _join(*pieces: str) -> str:
    return ".".join(p for p in pieces if p)


def _relative_to_base(anatomy: Anatomy, path: str) -> str:
    base = anatomy.base_path
    return path[len(base) + 1:] if base and path.startswith(base + ".") else path


def _module_tensors(model: nn.Module, module_path: str, prefix: str = "") -> list[TensorEntry]:
    module = model.get_submodule(module_path)
    entries = [
        TensorEntry(_join(prefix, name), tuple(param.shape), _join(module_path, name))
        for name, param in module.named_parameters()
    ]
    if not entries:
        raise PartError(f"module {module_path} holds no weights; there is nothing to extract")
    return entries


def _head_tensors(model: nn.Module, anatomy: Anatomy, part: Part, layer: int) -> list[TensorEntry]:
    """The head's q/k/v rows (its KV group's for GQA) and its o-projection columns."""
    assert anatomy.family is not None and anatomy.geometry is not None  # plan_part checked the family
    table = anatomy.family.attention
    head = part.info["head"]
    ranges = head_row_ranges(table, anatomy.geometry, head)
    entries: list[TensorEntry] = []
    for short, spans in ranges.items():
        module_path = anatomy.module_path_of(layer, getattr(table, short))
        module = model.get_submodule(module_path)
        roles = ["q", "k", "v"] if short == "qkv" and len(spans) == 3 else [short]
        for role, (start, stop) in zip(roles, spans, strict=True):
            for pname, param in module.named_parameters(recurse=False):
                if short == "o" and pname == "bias":
                    continue  # the o bias belongs to the whole block, not to one head
                if pname == "weight":
                    # Linear stores [out, in]; Conv1D stores [in, out]. Rows of q/k/v are outputs,
                    # the o columns are inputs.
                    dim = (1 if table.conv1d else 0) if short != "o" else (0 if table.conv1d else 1)
                else:
                    dim = 0
                shape = list(param.shape)
                shape[dim] = stop - start
                entries.append(TensorEntry(f"{role}.{pname}", tuple(shape), _join(module_path, pname),
                                           (dim, start, stop)))
    for short in ("q_norm", "k_norm"):  # per-head norms (Gemma 3): one weight shared by every head, whole
        rel = getattr(table, short)
        if rel:
            entries.extend(_module_tensors(model, anatomy.module_path_of(layer, rel), short))
    return entries


def plan_part(model: nn.Module, config: Any, anatomy: Anatomy, address: str) -> PartPlan:
    """Work out the part at ``address``: its tensors, rebuild fragment and fit signature."""
    from engine.loading import config_hash

    target = resolve(anatomy, address)
    if target.point is not None:
        raise PartError(f"'{address}' is a capture point, not a part; extract '{target.part.address}' instead")
    part = target.part
    if part.kind in ("model", "module") or anatomy.family is None:
        raise PartError(
            f"'{address}' cannot be extracted: only parts of known families (embed, Ln, Ln.attn, Ln.attn.hN, "
            "Ln.mlp, norms, lm_head) can; run `garage inspect MODEL` to list addresses"
        )
    table = anatomy.family
    layer = target.layer
    module_path = part.module_path or ""
    fragment: dict[str, Any] = {
        "format": FORMAT, "address": part.address, "kind": part.kind, "family": table.name,
        "layer": layer, "module_path": part.module_path,
        "base_relative_path": _relative_to_base(anatomy, module_path),
        "causal": bool(table.lm_head is not None or getattr(config, "is_decoder", False)),
        "norm": table.norm_kind, "layout": table.layout,
        "config": normalized_config(config),
    }
    geometry = anatomy.geometry
    if part.kind in ("attn", "head", "layer") and geometry is not None:
        fragment["geometry"] = {"heads": geometry.n_heads, "kv_heads": geometry.n_kv_heads,
                                "head_dim": geometry.head_dim}
        if table.rotary:
            fragment["rotary"] = _rotary_settings(config, geometry.head_dim)
    if part.kind == "head" and geometry is not None and layer is not None:
        attention = model.get_submodule(anatomy.module_path_of(layer, table.attention.module))
        fragment.update(head=part.info["head"], kv_group=part.info["kv_group"],
                        scaling=float(getattr(attention, "scaling", None) or geometry.head_dim ** -0.5),
                        conv1d=table.attention.conv1d, qkv_layout=table.attention.qkv_layout)
        tensors = _head_tensors(model, anatomy, part, layer)
    elif part.kind == "mlp" and part.module_path is None:
        tensors = [entry for child in part.children
                   for entry in _module_tensors(model, child.module_path or "", child.address.rsplit(".", 1)[1])]
        fragment["hidden_act"] = getattr(config, "hidden_act", None)
        fragment["children"] = {child.address.rsplit(".", 1)[1]: _relative_to_base(anatomy, child.module_path or "")
                                for child in part.children}
    elif part.kind in MODULE_KINDS:
        tensors = _module_tensors(model, module_path)
    else:
        raise PartError(f"'{address}' is a {part.kind}, which the parts bin cannot extract")
    tensors.sort(key=lambda entry: entry.name)
    return PartPlan(part.address, part.kind, tensors, fragment, fit_signature(part.kind, tensors, fragment), table.name,
                    getattr(config, "model_type", None), config_hash(config))


def fit_signature(kind: str, tensors: list[TensorEntry], fragment: dict[str, Any]) -> dict[str, Any]:
    """What must match for a part to fit a slot: kind, tensor shapes, head geometry, norm type."""
    return {
        "kind": "norm" if kind == "final_norm" else kind,
        "shapes": {entry.name: list(entry.shape) for entry in tensors},
        "geometry": fragment.get("geometry"),
        "norm": fragment.get("norm") if kind in ("layer", "norm", "final_norm") else None,
    }


def _rotary_settings(config: Any, head_dim: int) -> dict[str, Any]:
    """The rotary settings the standalone module needs (they are also inside ``config``)."""
    settings: dict[str, Any] = {"head_dim": head_dim,
                                "max_position_embeddings": getattr(config, "max_position_embeddings", None)}
    for key in ("rope_parameters", "rope_theta", "rope_scaling", "partial_rotary_factor", "rotary_pct"):
        value = getattr(config, key, None)
        if value is not None:
            settings[key] = json.loads(json.dumps(value, default=str))
    return settings
