"""Feature parts in the parts bin: sparse coders and directions, each bound to a model and an address.

A feature part records the base model's config hash and the address it reads; attaching it to
another model (a different config hash) or a point of another width is refused, because an
SAE silently mis-applied still produces numbers (a known failure of other tools).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from engine.features.coder import CoderConfig, SparseCoder
from engine.features.errors import FeatureMismatchError
from engine.parts import PartRecord, PartsBin
from engine.parts.plan import PartPlan
from engine.parts.record import TensorEntry

CODER_FORMAT = "garage-feature/1"
DIRECTION_FORMAT = "garage-direction/1"
CODER_KINDS = ("sae", "transcoder")
FEATURE_KINDS = (*CODER_KINDS, "direction")


@dataclass
class CoderPart:
    """A sparse coder loaded from the bin, with where it belongs."""

    record: PartRecord
    coder: SparseCoder
    address: str
    address_out: str | None
    config_hash: str | None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.record.config.get("metrics") or {})


def _source(loaded: Any, origin: str) -> dict[str, Any]:
    return {"name": loaded.name, "path": loaded.source, "kind": origin,
            "weights_path": str(loaded.weights_path) if loaded.weights_path else None,
            "config_hash": loaded.config_hash}


def _plan(kind: str, address: str, tensors: dict[str, Tensor], fragment: dict[str, Any], loaded: Any) -> PartPlan:
    entries = [TensorEntry(name, tuple(t.shape), f"{kind}:{name}") for name, t in sorted(tensors.items())]
    signature = {"kind": kind, "shapes": {name: list(t.shape) for name, t in sorted(tensors.items())}}
    return PartPlan(address=address, kind=kind, tensors=entries, fragment=fragment, signature=signature,
                    family=loaded.anatomy.family.name if loaded.anatomy.family is not None else None,
                    model_type=getattr(loaded.config, "model_type", None), config_hash=loaded.config_hash)


def save_coder(bin_: PartsBin, loaded: Any, coder: SparseCoder, address: str, *, address_out: str | None = None,
               name: str | None = None, origin: str = "import", metrics: dict[str, Any] | None = None,
               tags: tuple[str, ...] | list[str] = (), notes: str = "") -> PartRecord:
    """Catalog ``coder`` as a part of ``loaded`` at ``address`` (checked against the model first)."""
    from engine.addresses import resolve_point

    target = resolve_point(loaded.anatomy, address)
    out_target = resolve_point(loaded.anatomy, address_out) if address_out else None
    check_width(loaded, target.address, coder.config.d_in)
    if out_target is not None:
        check_width(loaded, out_target.address, coder.config.d_out)
    kind = "transcoder" if coder.config.is_transcoder else "sae"
    fragment = {"format": CODER_FORMAT, "coder": coder.config.to_dict(), "address_out": out_target.address
                if out_target else None, "metrics": metrics or {}}
    tensors = {key: value.contiguous() for key, value in coder.tensors.items()}
    plan = _plan(kind, target.address, tensors, fragment, loaded)
    return bin_.add_planned(plan, tensors, _source(loaded, origin), name, tags, notes)


def save_direction(bin_: PartsBin, loaded: Any, vector: Tensor, address: str, *, method: str,
                   provenance: dict[str, Any], name: str | None = None, tags: tuple[str, ...] | list[str] = (),
                   notes: str = "") -> PartRecord:
    """Catalog a residual-stream direction with how it was made (method and its inputs)."""
    from engine.addresses import resolve_point

    target = resolve_point(loaded.anatomy, address)
    check_width(loaded, target.address, int(vector.shape[-1]))
    fragment = {"format": DIRECTION_FORMAT, "method": method, "provenance": provenance,
                "norm": float(vector.float().norm())}
    tensors = {"direction": vector.detach().reshape(-1).contiguous()}
    return bin_.add_planned(_plan("direction", target.address, tensors, fragment, loaded), tensors,
                            _source(loaded, method), name, tags, notes)


def load_coder(bin_: PartsBin, name: str, loaded: Any | None = None) -> CoderPart:
    """A coder part; with ``loaded``, refuse it unless it was made for that model."""
    record = bin_.get(name)
    if record.kind not in CODER_KINDS:
        raise FeatureMismatchError(f"part '{name}' is a {record.kind}, not an SAE or transcoder; "
                                   "`garage parts list --kind sae` shows the coders")
    config = CoderConfig.from_dict(record.config["coder"])
    fold = record.config.get("fold")
    if config.folded_from is None and isinstance(fold, dict):
        # a fold saved before the coder config carried the marker: its provenance still says so
        config.folded_from = str(fold.get("parent") or "")
    coder = SparseCoder(config, bin_.load_tensors(name))
    part = CoderPart(record, coder, record.address, record.config.get("address_out"),
                     record.source.get("config_hash"))
    if loaded is not None:
        check_model(record, loaded)
    return part


def load_direction(bin_: PartsBin, name: str, loaded: Any | None = None) -> tuple[PartRecord, Tensor]:
    record = bin_.get(name)
    if record.kind != "direction":
        raise FeatureMismatchError(f"part '{name}' is a {record.kind}, not a direction")
    if loaded is not None:
        check_model(record, loaded)
    return record, bin_.load_tensors(name)["direction"]


def check_model(record: PartRecord, loaded: Any) -> None:
    """Refuse a feature part made on another model (config hash) with a line naming both."""
    made_for = record.source.get("config_hash")
    if made_for and made_for != loaded.config_hash:
        raise FeatureMismatchError(
            f"part '{record.name}' was made on '{record.source.get('name')}' (config {made_for}) but "
            f"'{loaded.name}' has config {loaded.config_hash}; a {record.kind} only reads the model it was "
            "trained on — open that model, or import/train one for this model"
        )


def point_width(loaded: Any, address: str) -> int | None:
    """The last-dimension size of a capture point, from the config alone (None when unknown)."""
    from engine.addresses import resolve_point

    target = resolve_point(loaded.anatomy, address)
    hidden = getattr(loaded.config, "hidden_size", None)
    geometry = loaded.anatomy.geometry
    if target.point == "z" and geometry is not None:
        return geometry.head_dim if target.head is not None else geometry.n_heads * geometry.head_dim
    if target.point == "hidden":
        return getattr(loaded.config, "intermediate_size", None)
    if target.point in ("in", "out") and target.part.kind in ("layer", "attn", "mlp", "embed", "final_norm"):
        return hidden
    return None


def check_width(loaded: Any, address: str, width: int) -> None:
    expected = point_width(loaded, address)
    if expected is not None and expected != width:
        raise FeatureMismatchError(
            f"'{address}' of '{loaded.name}' is {expected} wide but the coder/direction expects {width}; "
            "pick the address it was trained on (its hook) or a coder made for this width"
        )
