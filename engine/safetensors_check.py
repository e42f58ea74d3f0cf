"""One validator for every safetensors file the garage reads: weights, snapshots, parts.

A safetensors file is an 8-byte little-endian header length, a JSON header, then the data.
The header is data from disk, so it is checked before any tensor is read: the length is
bounded, every entry has a known dtype, a shape of small non-negative whole numbers whose
size does not overflow, whole-number offsets in order, and a byte span equal to the shape
times the dtype's size, inside the file. A lying header ends as one ``BadSafetensorsError``
naming the file, the tensor and what to do.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from engine.errors import ModelLoadError
from engine.limits import MAX_ST_DIMS, MAX_ST_HEADER_BYTES

DTYPE_BYTES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
    "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}


class BadSafetensorsError(ModelLoadError):
    """A safetensors file whose header is unreadable or disagrees with its bytes."""


def _fail(label: str, what: str) -> BadSafetensorsError:
    return BadSafetensorsError(f"{label} is not a valid .safetensors file: {what}; re-download or re-export it")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_header(header: Any, data_bytes: int, label: str) -> dict[str, Any]:
    """Check a parsed header against ``data_bytes`` bytes of data; returns it unchanged."""
    if not isinstance(header, dict):
        raise _fail(label, "its header is not a JSON object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise _fail(label, "its __metadata__ is not a map of text to text")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _fail(label, f"tensor {name!r} has no description")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise _fail(label, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > MAX_ST_DIMS or not all(_whole(n) for n in shape):
            raise _fail(label, f"tensor {name!r} has a shape that is not a list of up to {MAX_ST_DIMS} "
                               "non-negative whole numbers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(n) for n in offsets)):
            raise _fail(label, f"tensor {name!r} has data_offsets that are not two whole numbers")
        start, stop = offsets
        numel = 1
        for n in shape:
            numel *= n
            if numel * DTYPE_BYTES[dtype] >= 2**63:
                raise _fail(label, f"tensor {name!r} of shape {shape} has a size that overflows (needs more bytes "
                                   "than any file holds)")
        if stop < start or stop - start != numel * DTYPE_BYTES[dtype]:
            raise _fail(label, f"tensor {name!r} ({dtype}, shape {shape}) needs {numel * DTYPE_BYTES[dtype]} bytes "
                               f"but its data_offsets span {stop - start}")
        if stop > data_bytes:
            raise _fail(label, f"tensor {name!r} ends at byte {stop} of a {data_bytes}-byte data section "
                               "(the file is truncated)")
        spans.append((start, stop, name))
    spans.sort()
    for (_, stop, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        if start < stop:
            raise _fail(label, f"tensors {first!r} and {second!r} overlap")
    return header


def parse_header_bytes(prefix: bytes | memoryview, total_size: int, label: str) -> tuple[dict[str, Any], int]:
    """Header and its length from the first bytes of a file of ``total_size`` bytes."""
    from engine.safe_parse import BadDocumentError, loads_json

    if total_size < 8 or len(prefix) < 8:
        raise _fail(label, "it is shorter than 8 bytes")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len == 0 or header_len > MAX_ST_HEADER_BYTES or 8 + header_len > total_size:
        raise _fail(label, f"its header length {header_len} does not fit the file ({total_size} bytes)")
    if len(prefix) < 8 + header_len:
        raise _fail(label, "its header is cut short")
    try:
        header = loads_json(bytes(prefix[8:8 + header_len]), f"{label} header")
    except BadDocumentError as exc:
        raise _fail(label, f"its header is not readable JSON ({str(exc).split(' (', 1)[-1].rstrip(')')}") from exc
    check_header(header, total_size - 8 - header_len, label)
    return header, header_len


def check_file(path: Path) -> dict[str, Any]:
    """Validate the safetensors file at ``path`` (reads only its header); returns the header."""
    label = str(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            first = handle.read(8)
            if len(first) < 8:
                raise _fail(label, "it is shorter than 8 bytes")
            (header_len,) = struct.unpack("<Q", first)
            if header_len == 0 or header_len > MAX_ST_HEADER_BYTES or 8 + header_len > size:
                raise _fail(label, f"its header length {header_len} does not fit the file ({size} bytes)")
            prefix = first + handle.read(header_len)
    except OSError as exc:
        raise BadSafetensorsError(f"cannot read {path}: {exc.strerror}") from exc
    header, _ = parse_header_bytes(prefix, size, label)
    return header


def check_bytes(payload: bytes, label: str) -> dict[str, Any]:
    """Validate a whole safetensors file held in memory; returns its header."""
    header, _ = parse_header_bytes(memoryview(payload), len(payload), label)
    return header
