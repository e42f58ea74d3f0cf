"""Which catalogued parts fit a slot of a model: same kind, shapes, head geometry and norm type."""

from __future__ import annotations

from typing import Any

from engine.parts.plan import plan_part
from engine.parts.record import PartRecord


def slot_signature(loaded: Any, address: str) -> dict[str, Any]:
    """The signature a part needs to fit ``address`` of ``loaded`` (a meta model is enough)."""
    return plan_part(loaded.model, loaded.config, loaded.anatomy, address).signature


def signature_mismatch(slot: dict[str, Any], part: dict[str, Any]) -> str | None:
    """Why a part with signature ``part`` does not fit ``slot``; None when it fits."""
    if slot.get("kind") != part.get("kind"):
        return f"kind {part.get('kind')} ≠ {slot.get('kind')}"
    if slot.get("shapes") != part.get("shapes"):
        return "tensor names or shapes differ"
    if slot.get("geometry") != part.get("geometry"):
        return f"head geometry {part.get('geometry')} ≠ {slot.get('geometry')}"
    if slot.get("norm") != part.get("norm"):
        return f"norm {part.get('norm')} ≠ {slot.get('norm')}"
    return None


def fitting(records: list[PartRecord], loaded: Any, address: str) -> list[PartRecord]:
    slot = slot_signature(loaded, address)
    return [record for record in records if signature_mismatch(slot, record.signature) is None]
