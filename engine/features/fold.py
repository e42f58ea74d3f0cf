"""Fold a feature scale into a sparse coder's decoder rows, saved as a new part of the bin.

A feature's activation reaches the model only through its decoder row: every architecture the
garage reads decodes ``acts @ W_dec + b_dec`` and then applies steps that depend on the input
alone (un-normalising, a transcoder's skip term ``x @ W_skip.T``), and no encoder reads
``W_dec``. So a coder whose row ``i`` is multiplied by ``s`` produces, for every input, the
output of the parent coder with feature ``i``'s activation multiplied by ``s`` — the runtime
``FeatureEdit("scale", [i], s)``; ``s = 0`` is a folded ablation. The skip term, biases and
encoder are copied untouched.

When it is exact:

* Lossy splice (``splice(folded, ..., exact=False)``) and every tool that runs the coder itself
  (an exported SAELens folder run as the SAE): equal to the parent with the runtime scale edit.
  Power-of-two factors (and 0) scale without rounding, so the two runs were bit-equal on SmolLM2;
  other factors round ``(a·s)·w`` and ``a·(s·w)`` differently: measured ≤ 2.4e-6 relative
  (≤ 7.9e-5 absolute) on SmolLM2 logits, a seeded TopK SAE at L15.out, five prompts.
* Exact splice (the error term): refused. The error term would be computed with the same coder,
  ``x − decode'(encode(x))``, so the fold would cancel and the run silently equal the unspliced
  one. The folded coder's config carries ``folded_from`` (the unfolded ancestor's part name; kept
  in the part's stored coder config, restored from the ``fold`` provenance for older parts, never
  written to an exported cfg.json) and ``FeatureSplice`` refuses ``exact=True`` on it. To keep
  the error term and scale a feature, attach the parent with ``FeatureEdit("scale", ...)``.
  Edits made on top of a folded coder in a lossy splice act relative to the folded rows.

The new part keeps the parent's address, output address and the base model's config hash, so
attaching it to another model or width is refused like the parent; its provenance (``fold`` in
the part's config) names the parent, the parent's sha256, the features, their factors and the
date. The parent is never changed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from engine.features.coder import SparseCoder
from engine.features.errors import FeatureError
from engine.features.formats import PICKLE_SUFFIXES, refuse_pickle
from engine.features.parts import CoderPart, load_coder
from engine.parts import PartRecord, PartsBin

FOLD_FORMAT = "garage-fold/1"
EXACT_SPLICE_NOTE = ("attach it lossy: an exact splice is refused, its error term would cancel the fold "
                     "(attach the parent with a scale edit to keep the error term)")


@dataclass
class FoldResult:
    """A folded coder saved in the bin: what it came from and what was folded."""

    name: str
    parent: str
    parent_sha256: str
    sha256: str
    kind: str
    address: str
    address_out: str | None
    features: list[int]
    factors: list[float]
    created_at: str
    exact_splice: str = EXACT_SPLICE_NOTE

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "parent": self.parent, "parent_sha256": self.parent_sha256,
                "sha256": self.sha256, "kind": self.kind, "address": self.address, "address_out": self.address_out,
                "features": list(self.features), "factors": list(self.factors), "created_at": self.created_at,
                "exact_splice": self.exact_splice}


def _checked_scales(coder: SparseCoder, scales: Mapping[int, float]) -> dict[int, float]:
    if not scales:
        raise FeatureError("nothing to fold; give at least one feature and its factor")
    checked: dict[int, float] = {}
    for feature, factor in scales.items():
        # bool is an int subclass; True as a feature index is a caller's mistake, not feature 1
        if isinstance(feature, bool) or not isinstance(feature, int):
            raise FeatureError(f"feature {feature!r} is not an integer index")
        if not 0 <= feature < coder.d_sae:
            raise FeatureError(f"feature {feature} is out of range: this coder has features 0–{coder.d_sae - 1}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(float(factor)):
            raise FeatureError(f"feature {feature}'s factor {factor!r} is not a finite number")
        checked[feature] = float(factor)
    return checked


def fold_feature_scale(coder: SparseCoder | CoderPart, scales: Mapping[int, float]) -> SparseCoder:
    """A new coder equal to ``coder`` with decoder row ``i`` multiplied by ``scales[i]``.

    Equals the runtime ``scale`` edit on ``coder`` wherever the coder's own output is used (a
    lossy splice, an export); an exact splice of it is refused (module docstring). ``coder`` is
    not changed; the other tensors are shared with it (read-only use), only ``W_dec`` and the
    config are new. The new config's ``folded_from`` names the unfolded ancestor: ``coder``'s own
    ``folded_from`` when it is itself a fold, else its part name ("" for a bare coder).
    """
    parent = coder.coder if isinstance(coder, CoderPart) else coder
    checked = _checked_scales(parent, scales)
    w_dec = parent.W_dec.clone()
    for feature, factor in checked.items():
        w_dec[feature] = w_dec[feature] * factor  # in the coder's dtype, as its runtime edit would be
    ancestor = parent.config.folded_from
    if ancestor is None:
        ancestor = coder.record.name if isinstance(coder, CoderPart) else ""
    return SparseCoder(dataclasses.replace(parent.config, folded_from=ancestor), {**parent.tensors, "W_dec": w_dec})


def _plan(record: PartRecord, tensors: dict[str, Tensor], fragment: dict[str, Any]) -> Any:
    from engine.parts.plan import PartPlan
    from engine.parts.record import TensorEntry

    entries = [TensorEntry(name, tuple(t.shape), f"{record.kind}:{name}") for name, t in sorted(tensors.items())]
    signature = {"kind": record.kind, "shapes": {name: list(t.shape) for name, t in sorted(tensors.items())}}
    # the parent's config hash, family and address: the fold belongs exactly where its parent does
    return PartPlan(address=record.address, kind=record.kind, tensors=entries, fragment=fragment,
                    signature=signature, family=record.family, model_type=record.model_type,
                    config_hash=str(record.source.get("config_hash") or ""))


def _parent_part(bin_: PartsBin, argument: str) -> CoderPart:
    """The parent coder part; a file given instead is refused (a pickle with the conversion line)."""
    from pathlib import Path

    from engine.parts.errors import PartNameError, PartNotFoundError

    try:
        return load_coder(bin_, argument)
    except (PartNotFoundError, PartNameError):
        path = Path(argument).expanduser()
        if path.suffix.lower() in PICKLE_SUFFIXES:
            refuse_pickle(path)
        if path.exists():
            raise FeatureError(f"'{argument}' is a file or folder; fold works on a part in the bin — import it "
                               "first with `garage sae import FOLDER MODEL --name N`") from None
        raise


def fold_part(bin_: PartsBin, parent: str, scales: Mapping[int, float], *, name: str | None = None,
              tags: tuple[str, ...] | list[str] = (), notes: str = "") -> FoldResult:
    """Fold ``scales`` into part ``parent``'s decoder rows and catalog the result as a new part."""
    part = _parent_part(bin_, parent)
    checked = _checked_scales(part.coder, scales)
    coder = fold_feature_scale(part, checked)
    features = sorted(checked)
    factors = [checked[f] for f in features]
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record = part.record
    provenance = {"format": FOLD_FORMAT, "op": "feature_scale", "parent": record.name,
                  "parent_sha256": record.sha256, "features": features, "factors": factors,
                  "created_at": created, "exact_splice": EXACT_SPLICE_NOTE}
    # the parent's training metrics describe its reconstruction, not this one's, so they are not copied
    fragment = {**record.config, "coder": coder.config.to_dict(), "metrics": {}, "fold": provenance}
    source = {**record.source, "kind": "fold"}
    tensors = {key: value.contiguous() for key, value in coder.tensors.items()}
    summary = ", ".join(f"#{f}×{factor:g}" for f, factor in zip(features, factors, strict=True))
    saved = bin_.add_planned(_plan(record, tensors, fragment), tensors, source, name, tags,
                             notes or f"{record.name} with {summary}", base_name=f"{record.name}-fold")
    return FoldResult(saved.name, record.name, record.sha256, saved.sha256, saved.kind, saved.address,
                      saved.config.get("address_out"), features, factors, created)
