"""Stitches as parts of the bin: safetensors plus provenance of both models and the fit."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.parts import PartRecord, PartsBin
from engine.parts.plan import PartPlan
from engine.parts.record import TensorEntry
from engine.transfer.fitting import StitchReport
from engine.transfer.pairs import TransferError

if TYPE_CHECKING:
    from engine.transfer.judge import TransferJudgement
    from engine.transfer.stitch import Stitch

__all__ = ["STITCH_FORMAT", "TRANSFER_METHOD", "StitchPart", "load_stitch", "report_document", "save_stitch",
           "save_transferred"]

TRANSFER_METHOD = "transfer"

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
                     "pairs": report.held_out.pairs, "sinks": report.held_out.sinks},
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


@dataclass
class StitchPart:
    """A stitch read back from the bin, with where and on what it was fitted."""

    name: str
    stitch: Stitch
    address_a: str
    address_b: str
    alignment: str
    text_digest: str
    metrics: dict[str, Any]


def load_stitch(bin_: PartsBin, name: str, loaded_a: Any | None = None, loaded_b: Any | None = None) -> StitchPart:
    """A stitch part as a ``Stitch``; with models given, refuse it unless it was fitted between them."""
    import torch

    from engine.transfer.stitch import Stitch

    record = bin_.get(name)
    if record.kind != "stitch" or record.config.get("format") != STITCH_FORMAT:
        raise TransferError(f"part '{name}' is a {record.kind}, not a stitch; `garage parts list --kind stitch` "
                            "shows the stitches")
    for role, loaded in (("model_a", loaded_a), ("model_b", loaded_b)):
        made_for = record.config[role]
        if loaded is not None and made_for.get("config_hash") != loaded.config_hash:
            raise TransferError(f"stitch '{name}' was fitted with {made_for.get('name')} as {role[-1].upper()} "
                                f"(config {str(made_for.get('config_hash'))[:8]}), not {loaded.name} (config "
                                f"{str(loaded.config_hash)[:8]}); fit one between these models with `garage stitch`")
    metrics = record.config["metrics"]
    tensors = bin_.load_tensors(name)
    kind = metrics["kind"]
    if kind == "ae":
        encoder_w, decoder_w = tensors["encoder.weight"], tensors["decoder.weight"]
        encoder = torch.nn.Linear(encoder_w.shape[1], encoder_w.shape[0])
        decoder = torch.nn.Linear(decoder_w.shape[1], decoder_w.shape[0])
        with torch.no_grad():
            for layer, key in ((encoder, "encoder"), (decoder, "decoder")):
                layer.weight.copy_(tensors[f"{key}.weight"])
                layer.bias.copy_(tensors[f"{key}.bias"])
        x_scale, y_scale = (float(v) for v in tensors["scales"])
        stitch = Stitch("ae", encoder_w.shape[1], decoder_w.shape[0], encoder=encoder.eval(), decoder=decoder.eval(),
                        x_mean=tensors["x_mean"], x_scale=x_scale, y_mean=tensors["y_mean"], y_scale=y_scale,
                        fit_pairs=int(metrics.get("fit_pairs") or 0))
    else:
        weight = tensors["weight"]
        stitch = Stitch(kind, weight.shape[0], weight.shape[1], weight, tensors["bias"], rank=metrics.get("rank"),
                        fit_pairs=int(metrics.get("fit_pairs") or 0))
    return StitchPart(name, stitch, metrics["address_a"], metrics["address_b"], metrics["alignment"],
                      metrics["text_digest"], metrics)


def save_transferred(bin_: PartsBin, loaded_a: Any, loaded_b: Any, judgement: TransferJudgement, *,
                     alignment: str, text_digest: str, stitch: dict[str, Any], name: str | None = None,
                     tags: tuple[str, ...] | list[str] = (), notes: str = "") -> PartRecord:
    """Catalog the mapped vector as a direction part of B, with both models, the stitch and the judged numbers.

    It is an ordinary ``direction`` part (``garage direction run`` adds it), whose provenance
    also keeps the calibrated strength range: multipliers of the stored vector where it worked.
    """
    from engine.features.parts import save_direction

    provenance = {
        "model_a": _model(loaded_a), "model_b": _model(loaded_b), "address_a": judgement.address_a,
        "address_b": judgement.address_b, "alignment": alignment, "text_digest": text_digest, "stitch": stitch,
        "task": judgement.task, "metrics": judgement.to_dict(), "strength_range": judgement.to_dict()["strength_range"],
        "unit_strength": judgement.norm_native / judgement.norm_mapped,  # the strength giving B's native norm
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return save_direction(bin_, loaded_b, judgement.mapped_vector, judgement.address_b, method=TRANSFER_METHOD,
                          provenance=provenance, name=name, tags=tags, notes=notes)
