"""Plain records of the parts bin: what a part is, where it came from, and what verify found."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a part: its name inside the part and where it sits in the source model.

    ``source`` is the full state-dict name in the source model; ``slice`` is ``(dim, start,
    stop)`` when the part holds only those rows/columns of it (heads), else None.
    """

    name: str
    shape: tuple[int, ...]
    source: str
    slice: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "source": self.source,
                "slice": list(self.slice) if self.slice else None}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TensorEntry:
        piece = doc.get("slice")
        return cls(doc["name"], tuple(int(n) for n in doc["shape"]), doc["source"],
                   tuple(int(n) for n in piece) if piece else None)  # type: ignore[arg-type]


@dataclass
class PartRecord:
    """A catalogued part. ``config`` is the fragment ``rebuild`` needs; ``file`` is relative to ``parts/``."""

    name: str
    kind: str
    address: str
    source: dict[str, Any]  # name, path, kind, weights_path, config_hash
    family: str | None
    model_type: str | None
    tensors: list[TensorEntry]
    dtype: str
    params: int
    sha256: str
    size_bytes: int
    created_at: str
    file: str
    config: dict[str, Any]
    signature: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    path: Path | None = None  # absolute file path, filled in by the bin

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {entry.name: list(entry.shape) for entry in self.tensors}

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["tensors"] = [entry.to_dict() for entry in self.tensors]
        doc["path"] = str(self.path) if self.path else None
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], parts_dir: Path | None = None) -> PartRecord:
        fields = {key: doc[key] for key in cls.__dataclass_fields__ if key in doc and key != "path"}
        fields["tensors"] = [TensorEntry.from_dict(entry) for entry in doc.get("tensors", [])]
        fields["tags"] = list(doc.get("tags", []))
        record = cls(**fields)
        if parts_dir is not None:
            record.path = parts_dir / record.file
        return record


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found for one part: ``ok``, ``missing`` or ``altered``."""

    name: str
    status: str
    path: str
    expected_sha256: str
    actual_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "kind": (str,), "address": (str,), "source": (dict,), "family": (str, type(None)),
    "model_type": (str, type(None)), "tensors": (list,), "dtype": (str,), "params": (int,), "sha256": (str,),
    "size_bytes": (int,), "created_at": (str,), "file": (str,), "config": (dict,), "signature": (dict,),
}
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {"tags": (list,), "notes": (str,)}


def record_problem(doc: Any) -> str | None:
    """What is wrong with one catalog record read from disk (missing fields, wrong types), or None."""
    if not isinstance(doc, dict):
        return f"a record is a {type(doc).__name__}, not an object"
    label = f"record {doc.get('name')!r}" if isinstance(doc.get("name"), str) else "a record"
    for key, types in _RECORD_TYPES.items():
        if key not in doc:
            return f"{label} has no '{key}'"
        if not isinstance(doc[key], types) or (int in types and isinstance(doc[key], bool)):
            return f"{label} has '{key}' of the wrong type ({type(doc[key]).__name__})"
    for key, types in _OPTIONAL_TYPES.items():
        if key in doc and not isinstance(doc[key], types):
            return f"{label} has '{key}' of the wrong type ({type(doc[key]).__name__})"
    if not all(isinstance(tag, str) for tag in doc.get("tags", [])):
        return f"{label} has a tag that is not text"
    for entry in doc["tensors"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("source"), str) and isinstance(entry.get("shape"), list)
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry["shape"])
                and (entry.get("slice") is None or (isinstance(entry["slice"], list) and len(entry["slice"]) == 3
                                                    and all(isinstance(n, int) for n in entry["slice"])))):
            return f"{label} has a malformed tensor entry"
    return None


def catalog_problem(document: Any) -> str | None:
    """What is wrong with a whole TinyDB catalog document, or None when every record is sound."""
    if not isinstance(document, dict):
        return f"the top level is a {type(document).__name__}, not a table map"
    for table_name, table in document.items():
        if not isinstance(table, dict):
            return f"table '{table_name}' is a {type(table).__name__}, not a map of records"
        for doc_id, doc in table.items():
            if not str(doc_id).isdigit():
                return f"table '{table_name}' has a record id '{doc_id}' that is not a number"
            problem = record_problem(doc)
            if problem is not None:
                return problem
    return None
