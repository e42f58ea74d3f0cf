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
