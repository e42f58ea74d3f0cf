"""Re-catalog part files the catalog lacks, from the metadata each file carries.

Reindex is the way back from a damaged catalog, so it must itself survive damage: a catalog
that is still corrupted is kept aside first, and each file in ``parts/`` is checked on its
own (header validated before its bytes are read); a foreign or damaged file is left in place
and named in ``bin_.notes``, and every other part file is still catalogued.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import GarageError
from engine.parts.errors import CatalogCorruptError, PartError
from engine.parts.extract import META_KEY, dtype_name, params_of, read_part_file
from engine.parts.file_record import content_digest, record_of
from engine.parts.naming import check_name
from engine.parts.plan import fit_signature
from engine.parts.record import PartRecord, TensorEntry
from engine.parts.store import TABLE, locked, open_db, record_doc
from engine.safetensors_check import check_file

if TYPE_CHECKING:
    from engine.parts.catalog import PartsBin

MAX_PART_FILE_BYTES = 64 * 1024**3


def _record_from_file(path: Path, name: str) -> PartRecord:
    """A catalog record rebuilt from one part file; PartError when it is not a part the bin wrote."""
    check_name(name)
    if path.is_symlink() or not path.is_file():
        raise PartError("not a plain file")
    header = check_file(path)  # a lying header is refused before the file is read whole
    if META_KEY not in (header.get("__metadata__") or {}):
        raise PartError("a safetensors file without the parts bin's metadata (not a part)")
    if path.stat().st_size > MAX_PART_FILE_BYTES:
        raise PartError(f"larger than {MAX_PART_FILE_BYTES:,} bytes")
    payload = path.read_bytes()
    tensors, meta = read_part_file(payload)
    kept = record_of(header)  # the catalog record the bin wrote into the file (parts from before: none)
    try:
        entries = [TensorEntry.from_dict(doc) for doc in meta["tensors"]]
        fragment: dict[str, Any] = meta["fragment"]
        kind, address = meta["kind"], meta["address"]
        if not (isinstance(fragment, dict) and isinstance(kind, str) and isinstance(address, str)):
            raise TypeError("metadata fields of the wrong type")
        lost: dict[str, Any] = {
            "source": {"name": "reindexed", "path": None, "kind": "reindexed", "weights_path": None,
                       "config_hash": meta.get("config_hash")},
            "tags": ["reindexed"], "notes": "re-catalogued from its file; source name and path unknown",
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        record = kept if kept is not None and _valid_record(kept) else lost
        return PartRecord(
            name=name, kind=kind, address=address, source=dict(record["source"]),
            family=meta.get("family"), model_type=meta.get("model_type"), tensors=entries,
            dtype=str(meta.get("dtype") or dtype_name(tensors)), params=params_of(tensors),
            sha256=content_digest(payload), size_bytes=len(payload), created_at=str(record["created_at"]),
            file=path.name, config=fragment, signature=fit_signature(kind, entries, fragment),
            tags=sorted(record["tags"]), notes=record["notes"], path=path,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PartError(f"its part metadata is damaged ({type(exc).__name__})") from exc


def _valid_record(record: dict[str, Any]) -> bool:
    """Whether a record read from a file has the catalog's types (a damaged one is ignored, not trusted)."""
    source, tags = record.get("source"), record.get("tags")
    return (isinstance(source, dict) and all(isinstance(source.get(key), (str, type(None)))
                                             for key in ("name", "path", "kind", "weights_path", "config_hash"))
            and isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)
            and isinstance(record.get("notes"), str) and isinstance(record.get("created_at"), str))


def reindex(bin_: PartsBin) -> list[PartRecord]:
    """Catalog part files that the catalog lacks (after a corrupted catalog was kept aside).

    Each file carries its address, kind, tensors and config fragment, and (parts written since
    the record was kept inside the file) its source, tags, notes and creation time, all of
    which come back. A file without a record gets source ``reindexed`` and that tag.
    """
    added = []
    with locked(bin_.parts_dir):
        try:
            with open_db(bin_.parts_dir) as db:
                db.table(TABLE).all()
        except CatalogCorruptError as exc:
            bin_.notes.append(str(exc))  # kept aside by the read; reindex starts a fresh catalog
        with open_db(bin_.parts_dir) as db:
            table = db.table(TABLE)
            known = {doc["file"] for doc in table.all()}
            for path in sorted(bin_.parts_dir.glob("*.safetensors")):
                if path.name in known:
                    continue
                try:
                    record = _record_from_file(path, path.name[: -len(".safetensors")])
                except (GarageError, OSError) as exc:
                    reason = str(exc).split(": ", 1)[-1] if isinstance(exc, GarageError) else exc.strerror
                    bin_.notes.append(f"{path} was left as it is and not catalogued: {reason}")
                    continue
                table.insert(record_doc(record))
                added.append(record)
    return added
