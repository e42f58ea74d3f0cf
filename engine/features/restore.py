"""Feature edits in sessions: SAE/transcoder splices (with their per-feature edits) and direction
edits are stored by their parts-bin name plus the part's sha256, and rebuilt from the bin.

A session holds no tensor: the coder or direction comes back from the parts bin, checked
against the model it was made for and against the digest recorded when the session was
saved, so a part replaced under the same name is refused instead of silently giving
another run.
"""

from __future__ import annotations

from typing import Any

from engine.errors import GarageError
from engine.features.errors import FeatureError

FEATURE_INTERVENTIONS = ("features", "direction")


def _bin() -> Any:
    from engine.parts import PartsBin

    return PartsBin()


def with_part_digest(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (an intervention's ``to_dict()``) plus ``part_sha256`` when it names a bin part."""
    part = document.get("part")
    if document.get("kind") not in FEATURE_INTERVENTIONS or not isinstance(part, str):
        return document
    try:
        return {**document, "part_sha256": _bin().get(part).sha256}
    except GarageError:  # a session still saves; restoring it then names the missing part
        return document


def _part_name(document: dict[str, Any]) -> str:
    part = document.get("part")
    if not isinstance(part, str) or not part:
        raise FeatureError(f"{document.get('kind')} edit on {document.get('address')} has no parts-bin part, so a "
                           "session cannot bring its tensors back; save the coder or direction as a part first")
    return part


def _check_digest(document: dict[str, Any], record: Any) -> None:
    stored = document.get("part_sha256")
    if stored is not None and stored != record.sha256:
        raise FeatureError(f"part '{record.name}' changed since the session was saved (sha256 {str(stored)[:12]}… "
                           f"then, {record.sha256[:12]}… now); re-attach it by hand or restore the old part")


def _number(document: dict[str, Any], key: str, default: float) -> float:
    import math

    value = document.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise FeatureError(f"{document.get('kind')} edit on {document.get('address')} has a non-numeric '{key}'")
    return float(value)


def _feature_edits(document: dict[str, Any]) -> list[Any]:
    from engine.features.attach import FeatureEdit
    from engine.limits import check_count

    raw = document.get("edits") or []
    if not isinstance(raw, list):
        raise FeatureError(f"feature splice on {document.get('address')} has 'edits' that are not a list")
    check_count(len(raw), "feature edits in one splice", 100_000)  # a session file is user input
    edits = []
    for item in raw:
        features = item.get("features") if isinstance(item, dict) else None
        if not isinstance(features, list) or not all(type(f) is int for f in features):
            raise FeatureError(f"feature edit {item!r} needs 'op' and a list of integer 'features'")
        check_count(len(features), "features in one edit", 10_000_000)
        edits.append(FeatureEdit(str(item.get("op")), list(features), _number(item, "value", 0.0)))
    return edits


def feature_intervention(document: dict[str, Any], loaded: Any = None) -> Any:
    """Rebuild a ``features`` or ``direction`` intervention from its session document."""
    from engine.features.parts import load_coder, load_direction

    kind = document.get("kind")
    address = document.get("address")
    bin_ = _bin()
    name = _part_name(document)
    if kind == "features":
        from engine.features.attach import splice

        part = load_coder(bin_, name, loaded)
        _check_digest(document, part.record)
        address_out = document.get("address_out")
        return splice(part.coder, str(address), address_out=address_out if isinstance(address_out, str) else None,
                      exact=bool(document.get("exact", True)), edits=_feature_edits(document), part=name)
    if kind == "direction":
        from engine.features.directions import direction_edit

        record, vector = load_direction(bin_, name, loaded)
        _check_digest(document, record)
        return direction_edit(vector, str(address), str(document.get("how", "ablate")),
                              _number(document, "strength", 1.0), part=name)
    raise FeatureError(f"'{kind}' is not a feature intervention")
