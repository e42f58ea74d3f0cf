"""Where a part's bytes come from: a loaded model, or a checkpoint opened structure-only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.parts.errors import PartError


@dataclass
class CheckpointSource:
    """A safetensors checkpoint plus a meta-device model of its config (no weights read)."""

    name: str
    path: str  # what the user named: bundled name, GGUF file, folder or .safetensors
    weights: Path  # folder or file holding the safetensors
    loaded: Any  # LoadedModel opened structure-only


_STRUCTURES: dict[tuple[str, int], Any] = {}


def _structure(weights: Path) -> Any:
    """A structure-only open of ``weights``, cached per process (the concurrency test adds 50 parts)."""
    from engine.loading import open_model

    config_file = (weights if weights.is_dir() else weights.parent) / "config.json"
    key = (str(weights.resolve()), config_file.stat().st_mtime_ns if config_file.exists() else 0)
    if key not in _STRUCTURES:
        _STRUCTURES[key] = open_model(str(weights), structure_only=True)
    return _STRUCTURES[key]


def checkpoint_source(spec: str | Path) -> CheckpointSource:
    """Resolve a model argument to its safetensors weights without loading them.

    Bundled names and GGUF files go through the conversion cache (converted once); folders
    and ``.safetensors`` files are used as they are. Hub ids need the model opened instead.
    """
    from engine.gguf_cache import converted_folder
    from engine.loading import locate

    text = str(spec)
    source = locate(text)
    weights: Path | None = None
    if source.kind in ("bundled-gguf", "gguf") and source.file is not None:
        weights = converted_folder(source.file)
    elif source.kind in ("bundled-folder", "folder"):
        weights = source.folder
    elif source.kind == "safetensors":
        weights = source.file
    if weights is None:
        raise PartError(
            f"cannot read '{text}' as a checkpoint ({source.kind}); pass a bundled name, a model folder, "
            "a .safetensors or .gguf file"
        )
    if weights.is_dir() and not any(weights.glob("*.safetensors")):
        raise PartError(f"{weights} holds no .safetensors weights; extract from a loaded model instead")
    return CheckpointSource(source.name, text, Path(weights), _structure(Path(weights)))
