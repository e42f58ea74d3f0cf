"""Cheap checks of model files before transformers sees them, so errors name the real problem."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"


def check_safetensors(path: Path) -> dict:
    """Parse a safetensors header and check it against the file (see engine/safetensors_check.py)."""
    from engine.safetensors_check import check_file

    return check_file(path)


def check_gguf(path: Path) -> None:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (it does not start with 'GGUF'); pass a real .gguf file"
        )
