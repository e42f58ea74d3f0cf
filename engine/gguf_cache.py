"""GGUF files dequantised once into a safetensors folder under the conversion cache.

A first open dequantises the weights and converts the tokenizer (on 2 CPU cores: SmolLM2 9 s,
Gemma's 262k-entry tokenizer 30 s; the file's metadata is parsed once, by ``engine.gguf_reader``);
the cached folder, tokenizer included, opens in about one. The cache key
covers the file's identity (path, size, mtime), the target dtype, the transformers version
(the name mapping and tokenizer conversion are transformers' own) and this module's format.

Weights are dequantised tensor by tensor (large embeddings row block by row block) straight
into the safetensors file, so the conversion never holds more than one tensor in memory.

An entry is built in a staging folder named ``.<entry>.staging-<pid>-<random>`` and renamed
into place; its manifest lists every file's size, mtime and sha256 and is checked on each open
(sizes always, sha256 of small files, mtime of large ones; ``check_entry(deep=True)`` re-hashes
everything), so a half-written or altered entry is rebuilt, never loaded. Stale staging
folders of dead processes are removed on the next conversion. A second dtype of the same GGUF
reuses the first entry's converted tokenizer. Processes that open one GGUF at once convert it
once: each takes the entry's lock file before converting, and one that waited finds
the entry made and opens it — without the lock the second would replace the folder the first is
reading from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from engine.errors import Cancelled, GarageError, ModelLoadError
from engine.storage import atomic_write_json, cache_dir, ensure_dir

MARKER = "garage-conversion.json"
FORMAT = 2  # bump when the folder's layout or the conversion changes
FULL_HASH_LIMIT = 64 << 20  # files up to this size are re-hashed on every open
ROW_BLOCK_BYTES = 64 << 20  # dequantise big row-independent tensors in blocks of about this many output bytes
_ROW_INDEPENDENT = ("token_embd.weight", "output.weight")  # no tensor processor touches these
_STAGING = ".staging-"
Progress = Callable[[str, float | None], None]


def cache_key(gguf_path: Path, dtype: str = "float32") -> str:
    from importlib.metadata import version  # transformers.__version__, without importing transformers

    stat = gguf_path.stat()
    identity = (f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{version('transformers')}"
                f"|{dtype}|format{FORMAT}")
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def cached_folder_for(gguf_path: Path, dtype: str = "float32") -> Path:
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return cache_dir() / "gguf" / f"{gguf_path.stem}{suffix}-{cache_key(gguf_path, dtype)}"


@dataclass(frozen=True)
class EntryCheck:
    """Whether a cache entry may be loaded, and if not, the first thing found wrong."""

    ok: bool
    problem: str | None = None


def check_entry(folder: Path, deep: bool = False) -> EntryCheck:
    """Compare an entry with its manifest: every file present with its size; small files (and,
    with ``deep``, all files) re-hashed; large files must keep the mtime recorded when they were
    hashed, so an edit in place is caught without re-reading a gigabyte on every open."""
    try:
        manifest = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return EntryCheck(False, "no readable manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("files"), dict):
        return EntryCheck(False, "manifest of another format")
    for name, record in manifest["files"].items():
        path = folder / name
        try:
            stat = path.stat()
        except OSError:
            return EntryCheck(False, f"{name} is missing")
        if stat.st_size != record.get("size"):
            return EntryCheck(False, f"{name} has {stat.st_size} bytes, manifest says {record.get('size')}")
        if deep or stat.st_size <= FULL_HASH_LIMIT:
            if _sha256(path) != record.get("sha256"):
                return EntryCheck(False, f"{name} does not match its sha256")
        elif stat.st_mtime_ns != record.get("mtime_ns"):
            return EntryCheck(False, f"{name} was modified after it was written")
    return EntryCheck(True)


def converted_folder(
    gguf_path: Path,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    dtype: str = "float32",
) -> Path:
    """The cached HF folder for ``gguf_path``, converting it first if missing or damaged."""
    folder = cached_folder_for(gguf_path, dtype)
    if check_entry(folder).ok:
        return folder
    with conversion_lock(folder, progress, cancel):
        if check_entry(folder).ok:  # made by the process we waited for
            return folder
        remove_stale_staging(folder.parent)
        if progress:
            progress("dequantising GGUF (once; cached afterwards)", 0.05)
        with _staging_dir(folder) as staging:
            files = convert_gguf(gguf_path, staging, dtype=dtype, progress=progress, cancel=cancel,
                                 tokenizer_from=_sibling_entry(gguf_path, dtype))
            _write_manifest(staging, gguf_path, dtype, files)
    return folder


@contextlib.contextmanager
def conversion_lock(folder: Path, progress: Progress | None, cancel: threading.Event | None) -> Iterator[None]:
    """Hold ``.<entry>.lock`` beside the entry; waiting polls, so Esc still stops a process queued behind another."""
    ensure_dir(folder.parent)
    lock = FileLock(str(folder.parent / f".{folder.name}.lock"))
    told = False
    while True:
        try:
            lock.acquire(timeout=0.2)
            break
        except Timeout:
            _check_cancel(cancel)
            if progress and not told:
                progress("waiting for another process converting this GGUF", None)
                told = True
    try:
        yield
    finally:
        lock.release()


def _sibling_entry(gguf_path: Path, dtype: str) -> Path | None:
    """A sound entry of the same GGUF in another dtype: its converted tokenizer is reused as is."""
    for other in ("float32", "bfloat16", "float16"):
        folder = cached_folder_for(gguf_path, other)
        if other != dtype and check_entry(folder).ok:
            return folder
    return None


def remove_stale_staging(parent: Path) -> list[Path]:
    """Delete staging folders left by processes that no longer run (a kill mid-conversion)."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for path in parent.iterdir():
        if not (path.is_dir() and path.name.startswith(".") and _STAGING in path.name):
            continue
        pid_text = path.name.split(_STAGING, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue  # another process is converting right now
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _staging_dir(folder: Path) -> Iterator[Path]:
    """A staging folder beside ``folder`` that becomes ``folder`` only if the block succeeds."""
    ensure_dir(folder.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_STAGING}{os.getpid()}-", dir=folder.parent))
    try:
        yield staging
        if folder.exists():
            shutil.rmtree(folder)  # a damaged entry being replaced
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(staging: Path, gguf_path: Path, dtype: str, files: list[str]) -> None:
    records = {}
    for name in files:
        stat = (staging / name).stat()
        records[name] = {"size": stat.st_size, "sha256": _sha256(staging / name), "mtime_ns": stat.st_mtime_ns}
    atomic_write_json(staging / MARKER, {
        "format": FORMAT, "source": str(gguf_path), "key": cache_key(gguf_path, dtype), "dtype": dtype,
        "files": records,
    })


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("GGUF conversion was cancelled; nothing was cached")


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    dtype: str = "float32",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    tokenizer_from: Path | None = None,
) -> list[str]:
    """Write an HF folder (config, ``model.safetensors``, tokenizer files) for ``gguf_path``.

    Returns the names of the files written. Checks ``cancel`` before every tensor. The
    tokenizer files are copied from ``tokenizer_from`` (an entry of the same GGUF) when given.
    """
    from engine.gguf_reader import FastGGUFReader, shared

    try:
        reader = FastGGUFReader(gguf_path)
    except (OSError, ValueError, KeyError, IndexError) as exc:  # not a GGUF, or cut short
        raise ModelLoadError(f"cannot read GGUF {gguf_path} ({str(exc).splitlines()[0]}); the file is damaged or "
                             "cut short: download it again") from exc
    with shared(reader):  # transformers' reads of the file below take this reader: one parse in all
        return _convert(reader, gguf_path, out_dir, dtype, progress, cancel, tokenizer_from)


def _convert(reader: Any, gguf_path: Path, out_dir: Path, dtype: str, progress: Progress | None,
             cancel: threading.Event | None, tokenizer_from: Path | None) -> list[str]:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        _check_cancel(cancel)
        model_class = _write_weights(reader, config, out_dir / "model.safetensors", dtype, progress, cancel)
    except GarageError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, NotImplementedError) as exc:
        raise ModelLoadError(f"cannot read GGUF {gguf_path}: {str(exc).splitlines()[0]}") from exc
    config_doc = config.to_dict()
    # The weights are dequantised now; a leftover quantization config would make
    # transformers try to load them as GGUF again.
    config_doc.pop("quantization_config", None)
    config_doc["dtype"] = dtype
    config_doc["architectures"] = [model_class]  # a GGUF config names none; the loader picks the class by it
    (out_dir / "config.json").write_text(json.dumps(config_doc, indent=2))
    _check_cancel(cancel)
    if tokenizer_from is not None:
        names = [n for n in json.loads((tokenizer_from / MARKER).read_text())["files"]
                 if n not in ("config.json", "model.safetensors")]
        for name in names:
            shutil.copyfile(tokenizer_from / name, out_dir / name)
        return sorted({*names, "config.json", "model.safetensors"})
    if progress:
        progress("converting the GGUF tokenizer (once; cached afterwards)", 0.2)
    before = set(os.listdir(out_dir))
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (OSError, ValueError, KeyError, TypeError):
        tokenizer = None  # a GGUF without tokenizer metadata still opens; prompts then need token ids
    _check_cancel(cancel)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
        _prefer_saved_pipeline(out_dir, type(tokenizer).__name__)
    written = sorted(set(os.listdir(out_dir)) - before) + ["config.json", "model.safetensors"]
    return sorted(set(written))


# Tokenizer classes whose constructor rebuilds the whole pipeline from the vocabulary and merges
# (about 6 CPU-seconds for Gemma's 262k entries, on every open). The saved tokenizer.json already
# is that pipeline, so the cached folder names the plain fast class, which only deserialises it.
REBUILDING_TOKENIZERS = frozenset({"GemmaTokenizer"})


def _prefer_saved_pipeline(out_dir: Path, class_name: str) -> None:
    path = out_dir / "tokenizer_config.json"
    if class_name not in REBUILDING_TOKENIZERS or not (out_dir / "tokenizer.json").is_file() or not path.is_file():
        return
    doc = json.loads(path.read_text())
    doc["tokenizer_class"] = "PreTrainedTokenizerFast"
    doc["garage_converted_from"] = class_name
    path.write_text(json.dumps(doc, indent=2))


def _plan(reader: Any, config: Any) -> tuple[Any, list[tuple[Any, str, list[int]]], str]:
    """The tensor processor, (gguf tensor, HF name, HF shape) for every kept tensor of ``reader``,
    and the name of the model class those names belong to."""
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    architecture = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    shapes = {name: list(t.shape) for name, t in skeleton.state_dict().items()}
    name_map = get_gguf_hf_weights_map(skeleton, processor)
    entries = []
    for tensor in reader.tensors:
        hf_name = name_map.get(tensor.name)
        if hf_name is None or hf_name not in shapes:
            continue
        entries.append((tensor, hf_name, shapes[hf_name]))
    return processor, entries, type(skeleton).__name__


def _write_weights(
    reader: Any, config: Any, target: Path, dtype: str, progress: Progress | None, cancel: threading.Event | None
) -> str:
    """Stream every tensor, dequantised and converted to ``dtype``, into one safetensors file;
    returns the model class name the tensors were named for."""
    import numpy as np
    import torch

    from engine.tensors import dtype_from_name

    torch_dtype = dtype_from_name(dtype)
    processor, entries, model_class = _plan(reader, config)
    tag = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[torch_dtype]
    item = torch.tensor([], dtype=torch_dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for _, name, shape in entries:
        size = int(np.prod(shape)) * item
        header[name] = {"dtype": tag, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data section to 8 bytes
    with target.open("wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for index, (tensor, name, shape) in enumerate(entries):
            _check_cancel(cancel)
            for block in _dequantised_blocks(tensor, processor, shape):
                converted = block.to(torch_dtype).contiguous()
                out.write(converted.view(torch.uint8).numpy().tobytes() if torch_dtype != torch.float32
                          else converted.numpy().tobytes())
                del converted
            if progress:
                progress(f"dequantising {name}", 0.05 + 0.15 * (index + 1) / len(entries))
        out.flush()
        os.fsync(out.fileno())
    return model_class


def _dequantised_blocks(tensor: Any, processor: Any, shape: list[int]) -> Iterator[Any]:
    """One GGUF tensor as float32 torch blocks of whole rows, in file order, shaped like the HF tensor."""
    import numpy as np
    import torch
    from gguf import dequantize

    rows = int(shape[0]) if shape else 1
    row_bytes = 4 * (int(np.prod(shape[1:])) if len(shape) > 1 else 1)
    if tensor.name in _ROW_INDEPENDENT and rows * row_bytes > ROW_BLOCK_BYTES:
        step = max(1, ROW_BLOCK_BYTES // row_bytes)
        for start in range(0, rows, step):
            block = dequantize(tensor.data[start:start + step], tensor.tensor_type)
            yield torch.from_numpy(np.require(block, np.float32, ["C", "W"])).reshape(-1, *shape[1:])
        return
    weights = dequantize(tensor.data, tensor.tensor_type)
    weights = processor.process(weights=weights, name=tensor.name).weights
    flat = torch.from_numpy(np.require(weights, np.float32, ["C", "W"]))  # copies only read-only F32 maps
    if flat.numel() != int(np.prod(shape)):
        raise ModelLoadError(f"GGUF tensor {tensor.name} has {flat.numel()} values, the model expects shape {shape}")
    yield flat.reshape(shape)
