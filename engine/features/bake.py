"""Bake an intervention into the weights, so plain ``transformers`` runs the edited model.

* ``ablate_direction``: orthogonalise every matrix that writes to the residual stream (the
  embedding rows, each ``o_proj`` and ``down_proj``; their biases too) against the direction.
  The residual stream then never carries it — the runtime ``DirectionEdit(address="writers")``.
  With tied embeddings the LM head is untied first and keeps the original matrix, since the
  runtime edit does not touch the unembedding.
* ``steer_bias``: a constant steer ``strength × v`` at ``L{n}.out`` becomes a bias on that layer's
  ``down_proj`` (the MLP output is the last write of the block). Llama-family MLPs have no bias,
  so the config gets ``mlp_bias: true`` and every other MLP projection a zero bias — a config
  plain transformers loads. Families without an ``mlp_bias`` switch are refused.
* ``scale_head``: a head's scale folded into its ``o_proj`` columns.

Provenance (``garage_bake.json`` in the output) records the op, its parameters, the source model
and the direction part's digest.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.features.errors import FeatureError
from engine.storage import atomic_output_dir

BAKE_OPS = ("ablate_direction", "steer_bias", "scale_head")
PROVENANCE_FILE = "garage_bake.json"


@dataclass
class BakeOp:
    """One bake: ``op`` with its parameters; ``direction_digest`` is the direction part's sha256."""

    op: str
    vector: Tensor | None = None
    layer: int | None = None
    head: int | None = None
    strength: float = 1.0
    factor: float = 1.0
    direction_part: str | None = None
    direction_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "layer": self.layer, "head": self.head, "strength": self.strength,
                "factor": self.factor, "direction_part": self.direction_part,
                "direction_digest": self.direction_digest,
                "direction_norm": float(self.vector.norm()) if self.vector is not None else None}


@dataclass
class BakeResult:
    output: Path
    ops: list[dict[str, Any]]
    changed_tensors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "ops": self.ops, "changed_tensors": self.changed_tensors}


def _linear(model: nn.Module, path: str) -> nn.Linear:
    module = model.get_submodule(path)
    if not isinstance(module, nn.Linear):
        raise FeatureError(f"{path} is a {type(module).__name__}, not a Linear layer; baking supports "
                           "Llama-style families (Llama, Mistral, Qwen2, Gemma)")
    return module


def _writers(model: nn.Module, anatomy: Any) -> list[str]:
    table = anatomy.family
    if table is None or not table.attention.o or not table.mlp.down:
        raise FeatureError("this model has no family table naming its o_proj/down_proj; cannot bake")
    paths = []
    for layer in range(anatomy.n_layers):
        paths.append(anatomy.module_path_of(layer, table.attention.o))
        paths.append(anatomy.module_path_of(layer, table.mlp.down))
    return paths


def _orthogonalise(model: Any, anatomy: Any, unit: Tensor, config: Any) -> list[str]:
    changed = []
    embed = model.get_input_embeddings()
    if getattr(config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        head = model.get_output_embeddings()
        head.weight = nn.Parameter(head.weight.detach().clone())  # the unembedding keeps the original
        config.tie_word_embeddings = False
        changed.append("lm_head.weight (untied)")
    with torch.no_grad():
        u = unit.to(embed.weight.dtype)
        weight = embed.weight
        weight -= torch.outer(weight @ u, u)
        changed.append("embed")
        for path in _writers(model, anatomy):
            module = _linear(model, path)
            u = unit.to(module.weight.dtype)
            module.weight.sub_(torch.outer(u, u @ module.weight))  # W: [hidden, in]; rows write the residual
            if module.bias is not None:
                module.bias.sub_((module.bias @ u) * u)
            changed.append(path)
    return changed


def _steer_bias(model: nn.Module, anatomy: Any, config: Any, layer: int, shift: Tensor) -> list[str]:
    table = anatomy.family
    if table is None or not hasattr(config, "mlp_bias"):
        raise FeatureError(f"'{getattr(config, 'model_type', '?')}' has no mlp_bias switch, so a constant steer "
                           "cannot be carried as a bias that plain transformers loads; use the runtime steer")
    if not 0 <= layer < anatomy.n_layers:
        raise FeatureError(f"layer {layer} is out of range: this model has layers 0–{anatomy.n_layers - 1}")
    changed = []
    if not config.mlp_bias:
        for i in range(anatomy.n_layers):
            for short in (table.mlp.gate, table.mlp.up, table.mlp.down):
                if short:
                    module = _linear(model, anatomy.module_path_of(i, short))
                    module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype,
                                                           device=module.weight.device))
        config.mlp_bias = True
        changed.append("mlp biases (zero)")
    down = _linear(model, anatomy.module_path_of(layer, table.mlp.down))
    with torch.no_grad():
        down.bias.add_(shift.to(down.bias.dtype).to(down.bias.device))
    changed.append(f"{anatomy.module_path_of(layer, table.mlp.down)}.bias")
    return changed


def _scale_head(model: nn.Module, anatomy: Any, layer: int, head: int, factor: float) -> list[str]:
    geometry = anatomy.geometry
    if geometry is None or not 0 <= head < geometry.n_heads:
        raise FeatureError(f"head {head} is out of range for this model")
    path = anatomy.module_path_of(layer, anatomy.family.attention.o)
    o_proj = _linear(model, path)
    start = head * geometry.head_dim
    with torch.no_grad():
        o_proj.weight[:, start:start + geometry.head_dim] *= factor
    return [f"{path}.weight[:, {start}:{start + geometry.head_dim}]"]


def bake(loaded: Any, ops: list[BakeOp], output: str | Path) -> BakeResult:
    """Write ``loaded`` with ``ops`` baked into its weights as an HF folder (atomically)."""
    if loaded.structure_only:
        raise FeatureError(f"'{loaded.name}' is open structure-only; open it with weights to bake")
    from engine.quantised import refuse_quantised

    refuse_quantised(loaded, "bake into")
    if not ops:
        raise FeatureError("nothing to bake; give at least one op")
    model = copy.deepcopy(loaded.model)
    changed = bake_into(model, loaded.anatomy, ops)
    target = Path(output).expanduser()
    provenance: dict[str, Any] = {
        "format": "garage-bake/1", "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"name": loaded.name, "path": loaded.source, "config_hash": loaded.config_hash},
        "ops": [op.to_dict() for op in ops], "changed": changed,
    }
    with atomic_output_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    del model
    return BakeResult(target, provenance["ops"], changed)


def bake_into(model: Any, anatomy: Any, ops: list[BakeOp]) -> list[str]:
    """Apply ``ops`` to ``model`` in place (its config too); returns what changed.

    ``anatomy`` is ``model``'s (or a same-shaped model's) part tree. The build bench's ``bake``
    model op calls this on the assembled hybrid; ``bake`` calls it on a copy of an open model.
    """
    config = model.config
    changed: list[str] = []
    for op in ops:
        if op.op not in BAKE_OPS:
            raise FeatureError(f"unknown bake op '{op.op}'; use one of: {', '.join(BAKE_OPS)}")
        if op.op == "ablate_direction":
            if op.vector is None or float(op.vector.norm()) == 0.0:
                raise FeatureError("ablate_direction needs a non-zero direction")
            changed += _orthogonalise(model, anatomy, (op.vector / op.vector.norm()).float(), config)
        elif op.op == "steer_bias":
            if op.vector is None or op.layer is None:
                raise FeatureError("steer_bias needs a vector and a layer")
            changed += _steer_bias(model, anatomy, config, op.layer, op.strength * op.vector)
        else:
            if op.layer is None or op.head is None:
                raise FeatureError("scale_head needs a layer and a head")
            changed += _scale_head(model, anatomy, op.layer, op.head, op.factor)
    return changed
