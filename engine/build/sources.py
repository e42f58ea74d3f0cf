"""Recipe sources: where each alias's files are, read from config files and safetensors
headers only. Tensor bytes are read later, one tensor at a time, by ``read_tensor``.

Tensors are read with plain positioned reads rather than a memory map, so a build's
resident memory holds the tensors in hand and not every page of every source it touched.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.attached import weight_files
from engine.errors import GarageError
from engine.folder_check import file_key

if TYPE_CHECKING:
    import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def __getattr__(name: str) -> Any:
    """``ST_DTYPES`` (code → torch dtype) and ``DTYPE_CODES`` (its inverse), made on first use:
    resolving sources for ``recipe check`` must not import torch."""
    if name not in ("ST_DTYPES", "DTYPE_CODES"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch

    st_dtypes = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool,
    }
    globals().update(ST_DTYPES=st_dtypes, DTYPE_CODES={dtype: code for code, dtype in st_dtypes.items()})
    return globals()[name]


class SourceError(GarageError):
    """A recipe source that cannot be found or read."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie in a safetensors file, from its header."""

    file: Path
    dtype: str  # safetensors code: F32, BF16, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    stop: int

    @property
    def nbytes(self) -> int:
        return self.stop - self.start


@dataclass
class Source:
    """One recipe source, resolved without reading a single weight."""

    alias: str
    spec: str
    kind: str  # bundled | folder | hub
    folder: Path
    config: Any
    config_doc: dict[str, Any]
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    tokenizer_digest: str | None = None

    @property
    def config_hash(self) -> str:
        from engine.build.headers import ConfigView
        from engine.loading import config_hash

        config = self.config
        if isinstance(config, ConfigView):  # the hash covers transformers' defaults: read them (heavy)
            config = _transformers_config(self.folder)
        return config_hash(config)

    def weight_files(self) -> list[Path]:
        return sorted({entry.file for entry in self.tensors.values()})

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "folder": str(self.folder),
                "model_type": self.config_doc.get("model_type"), "config_hash": self.config_hash}


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Tensor entries of one safetensors file, from its JSON header only."""
    from engine.checks import check_safetensors

    header = check_safetensors(path)
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
    base = 8 + header_len
    return {
        name: TensorEntry(path, entry["dtype"], tuple(entry["shape"]), base + entry["data_offsets"][0],
                          base + entry["data_offsets"][1])
        for name, entry in header.items() if name != "__metadata__"
    }


def read_tensor(entry: TensorEntry) -> torch.Tensor:
    """One tensor's bytes, read with a positioned read (no memory map, no pickle)."""
    import torch

    from engine.build.sources import ST_DTYPES

    if entry.dtype not in ST_DTYPES:
        raise SourceError(f"{entry.file} holds a {entry.dtype} tensor, which the build bench cannot read")
    with entry.file.open("rb", buffering=0) as handle:
        payload = bytearray(entry.nbytes)
        view = memoryview(payload)
        handle.seek(entry.start)
        got = 0
        while got < entry.nbytes:
            chunk = handle.readinto(view[got:])
            if not chunk:
                raise SourceError(f"{entry.file} ended early while reading a tensor; re-download or re-export it")
            got += chunk
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=ST_DTYPES[entry.dtype])
    return torch.frombuffer(payload, dtype=ST_DTYPES[entry.dtype]).reshape(entry.shape)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process."""
    key = file_key(path)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model")
_TOKENIZER_DIGESTS: dict[tuple[tuple[str, int, int], ...], str | None] = {}


def _tokenizer_digest(folder: Path) -> str | None:
    """A digest of the tokenizer's vocabulary files, so two sources can be told apart cheaply;
    remembered per files' (path, size, mtime), as the bench validates its recipe at every edit."""
    key = tuple(file_key(folder / name) for name in _TOKENIZER_FILES if (folder / name).is_file())
    if key in _TOKENIZER_DIGESTS:
        return _TOKENIZER_DIGESTS[key]
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name == "tokenizer.json":
            doc = json.loads(path.read_text(encoding="utf-8"))
            # The vocabulary and merges decide token identity; padding/truncation settings do not.
            digest.update(json.dumps(doc.get("model"), sort_keys=True).encode())
            digest.update(json.dumps(doc.get("added_tokens"), sort_keys=True).encode())
        else:
            digest.update(path.read_bytes())
    _TOKENIZER_DIGESTS[key] = digest.hexdigest()[:16] if key else None
    return _TOKENIZER_DIGESTS[key]


def locate_folder(spec: str) -> tuple[str, Path]:
    """The HF folder a source spec names, resolved by the loader's own ``locate``.

    A GGUF (bundled or a path) is dequantised once into the conversion cache; later builds
    only read its header. A hub id is found in, or downloaded into, the hub cache.
    """
    from engine.errors import ModelLoadError, ModelNotFoundError
    from engine.locate import locate

    try:
        source = locate(spec)
    except (ModelLoadError, ModelNotFoundError) as exc:
        raise SourceError(str(exc)) from exc
    if source.kind in ("bundled-gguf", "gguf") and source.file is not None:
        from engine.gguf_cache import converted_folder

        return ("bundled" if source.kind == "bundled-gguf" else "gguf"), converted_folder(source.file).resolve()
    if source.kind in ("bundled-folder", "folder") and source.folder is not None:
        return ("bundled" if source.kind == "bundled-folder" else "folder"), source.folder.resolve()
    if source.kind == "hub":
        return "hub", _hub_folder(spec)
    raise SourceError(f"{source.path} is not a model folder; name a folder holding config.json and *.safetensors")


def _hub_folder(spec: str) -> Path:
    """The local snapshot of a hub model: from the hub cache, else downloaded once into it."""
    from huggingface_hub import snapshot_download

    from engine.loading import hub_reachable as _hub_reachable

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
    try:
        return Path(snapshot_download(spec, local_files_only=True, allow_patterns=patterns))
    except (OSError, ValueError):  # not in the cache yet (or an id the hub would refuse: asked below)
        pass
    if not _hub_reachable():
        raise SourceError(
            f"hub model '{spec}' is not in the local cache and the model hub cannot be reached (offline); "
            "download it where there is internet or name a local folder"
        )
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns))
    except (OSError, ValueError) as exc:  # the hub's HTTP, not-found and bad-id errors are all of these
        raise SourceError(
            f"cannot download hub model '{spec}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
            "check the id (and a token for gated models) or name a local folder"
        ) from exc


def _transformers_config(folder: Path) -> Any:
    import transformers
    from huggingface_hub.errors import StrictDataclassError

    try:
        return transformers.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError, AssertionError, ArithmeticError, StrictDataclassError) as exc:
        raise SourceError(f"cannot read {folder / 'config.json'}: {str(exc).splitlines()[0]}") from exc


def resolve_source(alias: str, spec: str, light: bool = False) -> Source:
    """Config, tensor headers and tokenizer digest of one source; no weight is read.

    ``light``: read the config as plain JSON where ``engine.build.headers`` knows its family
    (no transformers import); any other config is read by transformers as always."""
    from engine.build.headers import light_config
    from engine.errors import ModelLoadError
    from engine.folder_check import check_config_file, check_tokenizer_file, check_weights_present, index_files

    kind, folder = locate_folder(spec)
    config_path = folder / "config.json"
    try:
        config_doc = check_config_file(config_path)  # limits first: transformers never sees an absurd config
        # a source gives its weights alone, so a damaged parts manifest does not stop it (the check notes it)
        check_weights_present(folder, lenient=True)  # names a pickle-only folder
        unlisted = weight_files(folder, lenient=True)
        check_tokenizer_file(folder)
        listed = index_files(folder)
    except ModelLoadError as exc:
        raise SourceError(f"source '{alias}': {exc}") from exc
    config = (light_config(config_doc) if light else None) or _transformers_config(folder)
    from engine.quantised import refuse_quantised

    refuse_quantised(config, "build from", name=f"{alias} ({folder})")
    tensors: dict[str, TensorEntry] = {}
    files = listed if listed is not None else unlisted
    if not files:
        raise SourceError(f"{folder} has no *.safetensors weights; convert the checkpoint to safetensors first")
    for file in files:
        tensors.update(read_header(file))
    return Source(alias, spec, kind, folder, config, config_doc, tensors, _tokenizer_digest(folder))


def checkpoint_renames(model: Any) -> list[tuple[re.Pattern[str], str]]:
    """transformers' own checkpoint-key renames for ``model`` (e.g. GPT-NeoX's ``embed_out``
    is ``lm_head`` in the model); weight-fusing conversions are not renames and are skipped."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:
        return []
    renames = []
    for transform in get_model_conversion_mapping(model):
        if type(transform) is WeightRenaming:
            for pattern in transform.source_patterns:
                renames.append((re.compile(pattern), transform.target_patterns[0]))
    return renames


def source_state_names(source: Source, model_keys: list[str], base_path: str,
                       renames: Sequence[tuple[re.Pattern[str], str]] = ()) -> dict[str, str]:
    """Model state-dict name → checkpoint tensor name, through transformers' key renames and
    tolerating a base prefix that one side lacks (a ``BertModel`` checkpoint has no ``bert.``
    prefix, a ``BertForMaskedLM`` one has)."""
    renamed: dict[str, str] = {}
    for name in source.tensors:
        new_name = name
        for pattern, target in renames:
            new_name = pattern.sub(target, new_name)
        renamed.setdefault(new_name, name)
    mapping: dict[str, str] = {}
    prefix = f"{base_path}." if base_path else ""
    for key in model_keys:
        candidates = [key]
        if prefix and key.startswith(prefix):
            candidates.append(key[len(prefix):])
        elif prefix:
            candidates.append(prefix + key)
        for candidate in candidates:
            if candidate in renamed:
                mapping[key] = renamed[candidate]
                break
    return mapping


def digest_sources(sources: dict[str, Source]) -> dict[str, dict[str, str]]:
    """sha256 of every weight file of every source (recorded at build time)."""
    return {alias: {file.name: file_digest(file) for file in source.weight_files()}
            for alias, source in sources.items()}
