"""Model op ``blade``: a trained blade baked into the built hybrid (issue 15).

``- op: blade, part: NAME`` (or a sha256 prefix of the part) puts a blade part — ``gate ·
map(h_A)`` into B's residual — into the hybrid. The weights stay B's: a standard architecture
cannot hold a second model's stream, so the build copies the part file beside them
(``blade-00.safetensors``, byte for byte, its sha256 in the provenance) and lists it, with A's
recorded source, in ``garage_attached.json``. Opening the folder in the garage opens A and
attaches the blade to every pass (``engine.transfer.blade_folder``); plain transformers gets B alone.

The check: the part exists and is a blade, it writes into a layer the model has, at the model's
width, and the model the recipe makes has exactly the config (hash) of the blade's B. A blade op
comes after every op that changes the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.attached import AttachmentKind, OpenOptions, register_attachment_kind
from engine.build.model_ops import ModelOp, register_model_op
from engine.build.ops import OpFieldError
from engine.errors import GarageError
from engine.intervention_kinds import InterventionKind, register_intervention

if TYPE_CHECKING:
    from engine.anatomy import Anatomy
    from engine.interventions import EditPlan, Intervention, RunMask


def _parse(entry: Mapping[str, Any]) -> dict[str, Any]:
    part = entry.get("part")
    if not isinstance(part, str) or not part:
        raise OpFieldError("part", "blade needs part: the name (or sha256 prefix) of a blade part in the bin")
    return {"part": part}


def _record(params: Mapping[str, Any]) -> Any:
    from engine.transfer.blade_folder import blade_record

    try:
        return blade_record(params["part"])
    except GarageError as exc:
        raise OpFieldError("part", str(exc)) from None


def _check(params: Mapping[str, Any], config: dict[str, Any]) -> None:
    import re

    record = _record(params)
    settings = record.config.get("blade") or {}
    layers = int(config.get("num_hidden_layers") or 0)
    match = re.match(r"^L(\d+)\b", str(record.config.get("address_b", "")))
    if match is not None and int(match.group(1)) >= layers:
        raise OpFieldError("part", f"blade '{record.name}' writes into {record.config['address_b']} but the model "
                                   f"has L0-L{layers - 1}")
    if settings.get("width_b") != config.get("hidden_size"):
        raise OpFieldError("part", f"blade '{record.name}' writes {settings.get('width_b')} values per token but the "
                                   f"model's residual stream is {config.get('hidden_size')} wide")
    # the exact test needs transformers' defaults, so it is paid only by recipes with a blade
    from engine.transfer.blade_folder import config_hash_of, mismatch

    try:
        why = mismatch(record, config_hash_of(config))
    except GarageError as exc:
        raise OpFieldError("part", str(exc)) from None
    if why is not None:
        raise OpFieldError("part", why)


def _apply(model: Any, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    from engine.loading import config_hash
    from engine.transfer.blade_folder import mismatch, write_record

    record = _record(params)
    why = mismatch(record, config_hash(model.config))
    if why is not None:
        raise OpFieldError("part", why)
    return model, write_record(record)


def _write(folder: Path, params: Mapping[str, Any], record: dict[str, Any]) -> list[str]:
    from engine.transfer.blade_folder import write_blade

    return write_blade(folder, params["part"], record)


def _attach(loaded: Any, params: Mapping[str, Any], record: dict[str, Any]) -> None:
    from engine.transfer.blade_folder import attach_from_bin

    attach_from_bin(loaded, params["part"])


def _attach_folder(loaded: Any, folder: Path, entry: dict[str, Any], options: OpenOptions) -> None:
    from engine.transfer.blade_folder import attach_from_folder

    attach_from_folder(loaded, folder, entry, options)


# torch loads when a standing blade is planned, not when plugins are listed
def _plan(anatomy: Anatomy, item: Intervention, mask: RunMask | None) -> list[EditPlan]:
    from engine.transfer.blade_folder import plan_standing_blade

    return plan_standing_blade(anatomy, item, mask)


def _describe(item: Intervention) -> str:
    from engine.transfer.blade_folder import StandingBlade

    return item.describe() if isinstance(item, StandingBlade) else f"standing blade into {item.address}"


register_model_op(ModelOp("blade", ("part",), _parse, _check, _apply, write=_write, attach=_attach))
register_attachment_kind(AttachmentKind("blade", _attach_folder))
# reads the pass's attention mask to leave padding out of what A reads and B receives
register_intervention(InterventionKind("standing-blade", _plan, _describe, needs_mask=lambda item: True))
