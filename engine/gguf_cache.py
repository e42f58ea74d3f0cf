"""GGUF files dequantised once into a safetensors folder under the conversion cache.

Dequantising SmolLM2 takes tens of seconds; the cached folder opens in about one. The cache
key covers the file's identity (path, size, mtime) and the transformers version, since the
conversion is transformers' own.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

from engine.errors import Cancelled, GarageError, ModelLoadError
from engine.storage import atomic_output_dir, atomic_write_json, cache_dir

MARKER = "garage-conversion.json"


def cache_key(gguf_path: Path) -> str:
    import transformers

    stat = gguf_path.stat()
    identity = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def cached_folder_for(gguf_path: Path) -> Path:
    return cache_dir() / "gguf" / f"{gguf_path.stem}-{cache_key(gguf_path)}"


def converted_folder(
    gguf_path: Path,
    progress: Callable[[str, float | None], None] | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """The cached HF folder for ``gguf_path``, converting it first if needed."""
    folder = cached_folder_for(gguf_path)
    if (folder / MARKER).is_file():
        return folder
    if progress:
        progress("dequantising GGUF (once; cached afterwards)", 0.05)
    with atomic_output_dir(folder) as staging:
        _convert(gguf_path, staging)
        if cancel is not None and cancel.is_set():
            raise Cancelled("GGUF conversion was cancelled; nothing was cached")
        atomic_write_json(staging / MARKER, {"source": str(gguf_path), "key": cache_key(gguf_path)})
    return folder


def _convert(gguf_path: Path, staging: Path) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except GarageError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot read GGUF {gguf_path}: {str(exc).splitlines()[0]}") from exc
    state = _unshared_state_dict(model)
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    config_doc = model.config.to_dict()
    # The weights are dequantised now; a leftover quantization config would make
    # transformers try to load them as GGUF again.
    config_doc.pop("quantization_config", None)
    config_doc["dtype"] = "float32"
    (staging / "config.json").write_text(json.dumps(config_doc, indent=2))
    tokenizer.save_pretrained(staging)


def _unshared_state_dict(model) -> dict:
    """State dict with tied duplicates dropped (safetensors refuses shared storage)."""
    seen: set[int] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        pointer = tensor.data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        state[name] = tensor.contiguous()
    return state
