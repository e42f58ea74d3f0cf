"""The catalog record kept inside each part file, and the content digest that ignores it.

A part file's safetensors metadata holds two keys: ``garage_part`` (what the part *is*:
address, kind, tensors, config fragment; written once) and ``garage_record`` (what the bin
says *about* it: source model, tags, notes, creation time). ``parts reindex`` rebuilds a lost
catalog from both. Tags and notes change, so the record is rewritten in place (header only,
atomically; the tensor bytes are copied unchanged) and the part's digest covers everything
*except* the record: the same tensors extracted from a loaded model or from its checkpoint
keep one sha256 whatever their source, tags or notes. Files written before the record
existed keep their whole-file digest, which ``digest_matches`` still accepts.
No torch here: ``parts tag|note`` stay light.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from engine.parts.errors import PartError

RECORD_KEY = "garage_record"
RECORD_FIELDS = ("source", "tags", "notes", "created_at")
_CHUNK = 1 << 20


def _split(prefix: bytes) -> tuple[dict[str, Any], int]:
    """The header and where the tensor data starts, from the file's first bytes."""
    if len(prefix) < 8:
        raise PartError("not a safetensors file (shorter than its length prefix)")
    size = int.from_bytes(prefix[:8], "little")
    if size <= 0 or 8 + size > len(prefix):
        raise PartError("not a safetensors file (its header length runs past the file)")
    try:
        header = json.loads(bytes(prefix[8:8 + size]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PartError("not a safetensors file (its header is not JSON)") from exc
    if not isinstance(header, dict):
        raise PartError("not a safetensors file (its header is not an object)")
    return header, 8 + size


def _header_bytes(header: dict[str, Any]) -> bytes:
    """A header in one canonical form (sorted keys, no spaces), padded to 8 bytes as safetensors aligns."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _without_record(header: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != RECORD_KEY}
    rest = {k: v for k, v in header.items() if k != "__metadata__"}
    return {**rest, "__metadata__": metadata} if metadata else rest


def with_record(payload: bytes, record: dict[str, Any]) -> bytes:
    """``payload`` (a part file) with ``record`` as its catalog record; the tensor bytes are untouched."""
    header, start = _split(payload)
    metadata = dict(header.get("__metadata__") or {})
    metadata[RECORD_KEY] = json.dumps({key: record.get(key) for key in RECORD_FIELDS},
                                      sort_keys=True, separators=(",", ":"))
    return _header_bytes({**header, "__metadata__": metadata}) + payload[start:]


def record_of(header: dict[str, Any]) -> dict[str, Any] | None:
    """The catalog record a part file's header carries, or None (a file from before records were kept)."""
    text = (header.get("__metadata__") or {}).get(RECORD_KEY)
    if not isinstance(text, str):
        return None
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def content_digest(payload: bytes) -> str:
    """sha256 of the part without its catalog record: canonical header, then the tensor bytes."""
    header, start = _split(payload)
    digest = hashlib.sha256(_header_bytes(_without_record(header)))
    digest.update(memoryview(payload)[start:])
    return digest.hexdigest()


def content_digest_file(path: Path) -> str:
    """``content_digest`` of a file on disk, reading the tensor bytes in chunks."""
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if size <= 0 or size > 100 * 1024 * 1024:
            raise PartError("not a safetensors file (implausible header length)")
        header, _ = _split(size.to_bytes(8, "little") + handle.read(size))
        digest = hashlib.sha256(_header_bytes(_without_record(header)))
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_matches(expected: str, payload: bytes) -> bool:
    """Whether ``payload`` is the part catalogued with ``expected``: its content digest, or (for files
    written before records were kept inside them) the whole file's sha256."""
    if hashlib.sha256(payload).hexdigest() == expected:
        return True
    try:
        return content_digest(payload) == expected
    except PartError:
        return False
