"""Model op ``bake``: write an intervention into the weights of the built hybrid (issue 17).

* ``- op: bake, kind: ablate-direction, part: NAME`` — orthogonalise every residual writer against a
  direction part (the runtime ``direction_edit(v, "writers")``);
* ``kind: steer, part: NAME, layer: 15, strength: 4`` — a constant steer at ``L15.out`` as a
  ``down_proj`` bias (the runtime ``steer("L15", v, 4)``); ``layer`` defaults to the part's own;
* ``kind: head-scale, head: L3.H2, factor: 0.5`` — a head's output scaled inside ``o_proj``.

``part`` is a parts-bin name or a prefix (8+ hex digits) of the part's sha256; the build's
provenance records the part's name and full sha256 (``engine.features.bake.bake_into`` does the math).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from engine.build.model_ops import ModelOp, register_model_op
from engine.build.ops import OpFieldError
from engine.errors import GarageError

KINDS = {"ablate-direction": ("part",), "steer": ("part", "layer", "strength"), "head-scale": ("head", "factor")}
REQUIRED = {"ablate-direction": ("part",), "steer": ("part", "strength"), "head-scale": ("head", "factor")}
_HEAD = re.compile(r"^L(?P<layer>\d+)\.(?:attn\.)?[hH](?P<head>\d+)$")
_LAYER_OF = re.compile(r"^L(\d+)\b")


def _number(entry: Mapping[str, Any], key: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise OpFieldError(key, f"bake {key} must be a finite number, got {value!r}")
    return float(value)


def _parse(entry: Mapping[str, Any]) -> dict[str, Any]:
    kind = entry.get("kind")
    if kind not in KINDS:
        raise OpFieldError("kind", f"bake kind must be one of {', '.join(KINDS)}, got {kind!r}")
    for key in ("part", "layer", "strength", "head", "factor"):
        if key in entry and key not in KINDS[kind]:
            raise OpFieldError(key, f"bake kind '{kind}' takes {', '.join(KINDS[kind])}, not '{key}'")
    for key in REQUIRED[kind]:
        if key not in entry:
            raise OpFieldError(key, f"bake kind '{kind}' needs '{key}'")
    params: dict[str, Any] = {"kind": kind}
    if "part" in entry:
        if not isinstance(entry["part"], str) or not entry["part"]:
            raise OpFieldError("part", "part names a direction part in the bin (its name or sha256 prefix)")
        params["part"] = entry["part"]
    if "layer" in entry:
        layer = entry["layer"]
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise OpFieldError("layer", f"layer must be a layer number ≥ 0, got {layer!r}")
        params["layer"] = layer
    for key in ("strength", "factor"):
        if key in entry:
            params[key] = _number(entry, key)
    if "head" in entry:
        match = _HEAD.match(str(entry["head"]).strip())
        if match is None:
            raise OpFieldError("head", f"head is written like L3.H2 (layer 3, head 2), got {entry['head']!r}")
        params["layer"], params["head"] = int(match["layer"]), int(match["head"])
    return params


def direction_record(ref: str) -> Any:
    """The direction part called ``ref``, or whose sha256 starts with ``ref`` (catalog only, no tensor)."""
    from engine.parts import PartsBin

    record = PartsBin().find(ref, "direction")
    if record.kind != "direction":
        raise OpFieldError("part", f"part '{record.name}' is a {record.kind}, not a direction; make one with "
                                   "`garage direction make`")
    return record


def _layer_of(params: Mapping[str, Any], record: Any) -> int:
    if "layer" in params:
        return int(params["layer"])
    match = _LAYER_OF.match(record.address or "")
    if match is None:
        raise OpFieldError("layer", f"direction '{record.name}' sits at {record.address}; say which layer to steer")
    return int(match.group(1))


def _check(params: Mapping[str, Any], config: dict[str, Any]) -> None:
    layers = int(config.get("num_hidden_layers") or 0)
    kind = params["kind"]
    record = None
    if "part" in params:
        try:
            record = direction_record(params["part"])
        except OpFieldError:
            raise
        except GarageError as exc:
            raise OpFieldError("part", str(exc)) from None
        width = record.tensors[0].shape[-1] if record.tensors else None
        hidden = config.get("hidden_size")
        if width != hidden:
            raise OpFieldError("part", f"direction '{record.name}' is {width} wide but the model's residual stream "
                                       f"is {hidden}; use a direction made on a model of this width")
    if kind == "ablate-direction":
        config["tie_word_embeddings"] = False  # the head keeps the original unembedding
        return
    layer = _layer_of(params, record)
    if not 0 <= layer < layers:
        raise OpFieldError("head" if kind == "head-scale" else "layer",
                           f"layer {layer} does not exist: the model has L0-L{layers - 1}")
    if kind == "head-scale":
        heads = int(config.get("num_attention_heads") or 0)
        if not 0 <= params["head"] < heads:
            raise OpFieldError("head", f"head {params['head']} does not exist: the model has h0-h{heads - 1}")
        return
    if "mlp_bias" not in config:
        raise OpFieldError("kind", f"a '{config.get('model_type')}' model has no mlp_bias switch, so a constant "
                                   "steer cannot be carried as a bias; use the runtime steer")
    config["mlp_bias"] = True


def _apply(model: Any, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    from engine.anatomy import build_anatomy
    from engine.features.bake import BakeOp, bake_into
    from engine.parts import PartsBin

    kind = params["kind"]
    record, vector, found = None, None, {}
    if "part" in params:
        record = direction_record(params["part"])
        vector = PartsBin().load_tensors(record.name)["direction"]  # checks the file's sha256 first
        hidden = int(model.config.hidden_size)
        if vector.shape[-1] != hidden:
            raise OpFieldError("part", f"direction '{record.name}' is {vector.shape[-1]} wide but the model is "
                                       f"{hidden}")
        found = {"direction_part": record.name, "direction_sha256": record.sha256,
                 "direction_address": record.address, "direction_norm": float(vector.float().norm())}
    if kind == "ablate-direction":
        op = BakeOp("ablate_direction", vector=vector)
    elif kind == "steer":
        op = BakeOp("steer_bias", vector=vector, layer=_layer_of(params, record), strength=float(params["strength"]))
    else:
        op = BakeOp("scale_head", layer=int(params["layer"]), head=int(params["head"]), factor=float(params["factor"]))
    changed = bake_into(model, build_anatomy(model, model.config), [op])
    return model, {"kind": kind, "bake_op": op.op, "layer": op.layer, "head": op.head, **found, "changed": changed}


register_model_op(ModelOp("bake", ("kind", "part", "layer", "strength", "head", "factor"), _parse, _check, _apply))
