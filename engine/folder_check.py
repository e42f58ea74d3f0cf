"""Checks of a model folder's small files before transformers reads them.

``config.json`` (parsed with limits, sizes checked against engine/limits.py),
``model.safetensors.index.json`` (a map of tensor names to shard files inside the folder),
``tokenizer.json`` (UTF-8 JSON within the size and depth limits), and the weights themselves
(a folder holding only a pickled checkpoint is named as such: pickles are never opened).
Used by model loading and by the build bench's sources, so both say the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.attached import weight_files
from engine.errors import ModelLoadError
from engine.limits import check_config_sizes
from engine.safe_parse import BadDocumentError, load_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT_HINT = ("convert it once, in a trusted environment, with: python -c \"import torch, safetensors.torch as s; "
                "s.save_file(torch.load('pytorch_model.bin', weights_only=True), 'model.safetensors')\"")


def check_config_file(path: Path) -> dict[str, Any]:
    """The config document at ``path``, refused when unreadable, not an object or of absurd size."""
    try:
        doc = load_json(path, "model config")
    except BadDocumentError as exc:
        raise ModelLoadError(str(exc)) from exc
    if not isinstance(doc, dict):
        raise ModelLoadError(f"model config {path} is not a JSON object; it is not a transformers config")
    check_config_sizes(doc, f"model config {path}")
    return doc


def index_files(folder: Path) -> list[Path] | None:
    """Shard files named by ``model.safetensors.index.json`` (None when there is no index)."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return None
    try:
        doc = load_json(index, "weight index")
    except BadDocumentError as exc:
        raise ModelLoadError(f"{exc}; re-download the model") from exc
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ModelLoadError(f"weight index {index} has no 'weight_map' of tensor names to shard files; "
                             "re-download the model")
    files = []
    for name in sorted(set(weight_map.values())):
        shard = folder / name
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise ModelLoadError(f"weight index {index} names {name!r}, not a .safetensors file in {folder}; "
                                 "re-download the model")
        if not shard.is_file():
            raise ModelLoadError(f"weight index {index} names {name}, which is missing from {folder}; "
                                 "re-download the model")
        files.append(shard)
    return files


def file_key(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime): what a per-process cache of a file's contents is keyed by."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


# tokenizer files already checked: a recipe is validated at every bench edit, and SmolLM2's
# tokenizer.json takes a second to parse
_TOKENIZERS_CHECKED: set[tuple[str, int, int]] = set()


def check_tokenizer_file(folder: Path) -> None:
    """Refuse a ``tokenizer.json`` that is not UTF-8 JSON within the limits (truncated, damaged)."""
    path = folder / "tokenizer.json"
    if not path.is_file() or file_key(path) in _TOKENIZERS_CHECKED:
        return
    try:
        doc = load_json(path, "tokenizer file")
    except BadDocumentError as exc:
        raise ModelLoadError(f"{exc}; re-download the model's tokenizer") from exc
    if not isinstance(doc, dict):
        raise ModelLoadError(f"tokenizer file {path} is not a JSON object; re-download the model's tokenizer")
    _TOKENIZERS_CHECKED.add(file_key(path))


def check_weights_present(folder: Path, *, lenient: bool = False) -> None:
    """Refuse a folder with no safetensors weights, naming a pickled checkpoint when that is all it has.

    ``lenient``: for callers that read the weights alone, a damaged parts manifest does not stop
    them (``engine.attached.weight_files``)."""
    if weight_files(folder, lenient=lenient):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise ModelLoadError(f"{folder} holds only a pickled checkpoint ({pickles[0]}); the garage never opens "
                             f"pickles (they can run code); {CONVERT_HINT}")
    raise ModelLoadError(f"{folder} has no *.safetensors weights; pass a folder with model.safetensors")


def check_model_folder(folder: Path, *, weights: bool) -> dict[str, Any]:
    """Every small-file check of a model folder; returns its config document."""
    doc = check_config_file(folder / "config.json")
    index_files(folder)
    if weights:
        check_weights_present(folder)
        check_tokenizer_file(folder)
    return doc
