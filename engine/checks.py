"""Cheap checks of model files before transformers sees them, so errors name the real problem."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from engine.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"


def check_safetensors(path: Path) -> dict:
    """Parse a safetensors header and check the file holds every byte it promises."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("header length runs past the end of the file")
            header = json.loads(handle.read(header_len))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable .safetensors file ({exc}); re-download or re-export it"
        ) from exc
    entries = [entry for key, entry in header.items() if key != "__metadata__"] if isinstance(header, dict) else None
    if entries is None or not all(
        isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
        for entry in entries
    ):
        raise ModelLoadError(f"{path} has a malformed .safetensors header; re-download or re-export it")
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        raise ModelLoadError(
            f"{path} is truncated: its header promises {8 + header_len + data_end} bytes but the file has "
            f"{size}; re-download or re-export it"
        )
    return header


def check_gguf(path: Path) -> None:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (it does not start with 'GGUF'); pass a real .gguf file"
        )
