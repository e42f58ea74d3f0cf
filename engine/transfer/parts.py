"""Stitches as parts of the bin: safetensors plus provenance of both models and the fit."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from engine.parts import PartRecord, PartsBin
from engine.parts.plan import PartPlan
from engine.parts.record import TensorEntry
from engine.transfer.fitting import StitchReport

__all__ = ["STITCH_FORMAT", "report_document", "save_stitch"]

STITCH_FORMAT = "garage-stitch/1"


def _model(loaded: Any) -> dict[str, Any]:
    return {"name": loaded.name, "source": loaded.source, "config_hash": loaded.config_hash,
            "model_type": getattr(loaded.config, "model_type", None)}


def report_document(report: StitchReport) -> dict[str, Any]:
    """The report's numbers and fit settings as plain JSON data (the part's metrics and ``--json``)."""
    loss = report.loss
    return {
        "kind": report.stitch.kind, "address_a": report.address_a, "address_b": report.address_b,
        "alignment": report.alignment, "text_digest": report.text_digest, "fit_pairs": report.stitch.fit_pairs,
        "rank": report.stitch.rank, "settings": dict(report.stitch.extra),
        "held_out": {"r2": report.held_out.r2, "mean_cosine": report.held_out.mean_cosine,
                     "pairs": report.held_out.pairs},
        "loss": None if loss is None else {
            "a": loss.loss_a, "b_clean": loss.loss_b_clean, "b_zero": loss.loss_b_zero, "b_mean": loss.loss_b_mean,
            "stitched": loss.loss_stitched, "recovered_vs_zero": loss.recovered_vs_zero,
            "recovered_vs_mean": loss.recovered_vs_mean},
    }


def save_stitch(bin_: PartsBin, loaded_a: Any, loaded_b: Any, report: StitchReport, *, name: str | None = None,
                tags: tuple[str, ...] | list[str] = (), notes: str = "") -> PartRecord:
    """Catalog a fitted stitch as a part of model A at its address, with B and the fit in its provenance."""
    tensors = {key: value.detach().float().contiguous() for key, value in report.stitch.tensors().items()}
    fragment = {"format": STITCH_FORMAT, "model_a": _model(loaded_a), "model_b": _model(loaded_b),
                "metrics": report_document(report),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    entries = [TensorEntry(key, tuple(t.shape), f"stitch:{key}") for key, t in sorted(tensors.items())]
    plan = PartPlan(address=report.address_a, kind="stitch", tensors=entries, fragment=fragment,
                    signature={"kind": "stitch", "stitch_kind": report.stitch.kind,
                               "shapes": {key: list(t.shape) for key, t in sorted(tensors.items())}},
                    family=loaded_a.anatomy.family.name if loaded_a.anatomy.family is not None else None,
                    model_type=getattr(loaded_a.config, "model_type", None), config_hash=loaded_a.config_hash)
    source = {"name": loaded_a.name, "path": loaded_a.source, "kind": "stitch",
              "weights_path": str(loaded_a.weights_path) if loaded_a.weights_path else None,
              "config_hash": loaded_a.config_hash}
    return bin_.add_planned(plan, tensors, source, name, tags, notes)
