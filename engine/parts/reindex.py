"""Re-catalog part files the catalog lacks, from the metadata each file carries."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from engine.parts import catalog
from engine.parts.errors import PartError
from engine.parts.extract import params_of, read_part_file, sha256_bytes
from engine.parts.naming import check_name
from engine.parts.plan import fit_signature
from engine.parts.record import PartRecord, TensorEntry
from engine.parts.store import locked, open_db

if TYPE_CHECKING:
    from engine.parts.catalog import PartsBin


def reindex(bin_: PartsBin) -> list[PartRecord]:
    """Catalog part files that the catalog lacks (after a corrupted catalog was kept aside).

    Each file carries its address, kind, tensors and config fragment; only the source's
    name and path are lost, so those records say ``reindexed`` and get that tag.
    """
    added = []
    with locked(bin_.parts_dir), open_db(bin_.parts_dir) as db:
        table = db.table(catalog.TABLE)
        known = {doc["file"] for doc in table.all()}
        for path in sorted(bin_.parts_dir.glob("*.safetensors")):
            if path.name in known:
                continue
            name = path.name[: -len(".safetensors")]
            try:
                check_name(name)
                payload = path.read_bytes()
                tensors, meta = read_part_file(payload)
            except (PartError, OSError):
                continue  # unreadable or badly named: left in place, the other files still get catalogued
            if meta.get("format") is None or "fragment" not in meta:
                continue  # not a part file written by the bin
            entries = [TensorEntry.from_dict(doc) for doc in meta["tensors"]]
            record = PartRecord(
                name=name, kind=meta["kind"], address=meta["address"],
                source={"name": "reindexed", "path": None, "kind": "reindexed", "weights_path": None,
                        "config_hash": meta.get("config_hash")},
                family=meta.get("family"), model_type=meta.get("model_type"), tensors=entries,
                dtype=meta.get("dtype", catalog._dtype(tensors)), params=params_of(tensors),
                sha256=sha256_bytes(payload), size_bytes=len(payload),
                created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                file=path.name, config=meta["fragment"],
                signature=fit_signature(meta["kind"], entries, meta["fragment"]),
                tags=["reindexed"], notes="re-catalogued from its file; source name and path unknown", path=path,
            )
            table.insert(catalog._doc(record))
            added.append(record)
    return added

