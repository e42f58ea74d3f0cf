"""Captured states on disk: safetensors files with JSON metadata, never pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from engine.errors import StorageError
from engine.storage import atomic_output_path

META_KEY = "garage"


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` (names kept as given) and ``metadata`` atomically to ``path``."""
    from safetensors.torch import save_file

    target = Path(path)
    if target.suffix != ".safetensors":
        raise StorageError(f"output {target} should end in .safetensors")
    plain = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    with atomic_output_path(target) as staging:
        save_file(plain, str(staging), metadata={META_KEY: json.dumps(metadata)})
    return target


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata written by ``save_tensors``; refuses anything else clearly."""
    from safetensors import safe_open

    from engine.checks import check_safetensors

    source = Path(path)
    if not source.is_file():
        raise StorageError(f"no such file: {source}")
    check_safetensors(source)
    with safe_open(str(source), framework="pt") as handle:
        raw_meta = (handle.metadata() or {}).get(META_KEY, "{}")
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    return tensors, json.loads(raw_meta)
