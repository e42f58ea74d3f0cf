"""A GGUF file's tensor table read straight from its header, without parsing the metadata.

``gguf.GGUFReader`` builds a numpy view for every metadata item: on SmolLM2 (49k tokenizer
strings) that is 5 s of CPU holding the GIL, on Gemma's 262k strings far more, and the fit
plan needs only the tensor names, types and sizes. Here the metadata is skipped with one
``struct`` read per item; the result is cached per file (path, size, mtime).
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelLoadError

# GGUF value types: fixed sizes, and the two variable ones
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class GgufHeaderError(ModelLoadError):
    """The file is not a little-endian GGUF v2/v3 this reader understands, or is cut short."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # GGMLQuantizationType name: F32, Q4_K, ...
    n_elements: int
    n_bytes: int


def tensor_infos(path: str | Path) -> tuple[TensorInfo, ...]:
    """Every tensor's name, type, element and byte count, in file order."""
    stat = Path(path).stat()
    return _cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _cached(path: str, size: int, mtime_ns: int) -> tuple[TensorInfo, ...]:
    if size < 24:
        raise GgufHeaderError(f"{path} is {size} bytes, too short for a GGUF header; re-download it")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return _parse(data)
        except (struct.error, UnicodeDecodeError) as exc:  # a count or length runs past the end
            raise GgufHeaderError(f"{path} has a damaged or cut-short GGUF header ({exc}); re-download it") from exc


def _parse(data: mmap.mmap) -> tuple[TensorInfo, ...]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if data[:4] != b"GGUF":
        raise GgufHeaderError("not a GGUF file (no GGUF magic)")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    if version not in (2, 3):
        raise GgufHeaderError(f"GGUF version {version} (this reader knows 2 and 3)")
    at = 24
    unpack_q = struct.Struct("<Q").unpack_from
    unpack_i = struct.Struct("<I").unpack_from

    def skip_value(kind: int, at: int) -> int:
        if kind in _FIXED:
            return at + _FIXED[kind]
        if kind == _STRING:
            return at + 8 + unpack_q(data, at)[0]
        if kind == _ARRAY:
            item, count = struct.unpack_from("<IQ", data, at)
            at += 12
            if item in _FIXED:
                return at + _FIXED[item] * count
            for _ in range(count):
                at = skip_value(item, at)
            return at
        raise GgufHeaderError(f"unknown GGUF value type {kind} at byte {at}")

    for _ in range(n_kv):
        at += 8 + unpack_q(data, at)[0]  # the key
        kind = unpack_i(data, at)[0]
        at = skip_value(kind, at + 4)
    infos = []
    for _ in range(n_tensors):
        length = unpack_q(data, at)[0]
        name = bytes(data[at + 8:at + 8 + length]).decode("utf-8")
        at += 8 + length
        n_dims = unpack_i(data, at)[0]
        dims = struct.unpack_from(f"<{n_dims}Q", data, at + 4)
        kind = unpack_i(data, at + 4 + 8 * n_dims)[0]
        at += 4 + 8 * n_dims + 4 + 8  # dims, type, data offset
        try:
            quant = GGMLQuantizationType(kind)
        except ValueError as exc:
            raise GgufHeaderError(f"tensor {name!r} has unknown GGML type {kind}") from exc
        elements = 1
        for dim in dims:
            elements *= int(dim)
        block, type_size = GGML_QUANT_SIZES[quant]
        infos.append(TensorInfo(name, quant.name, elements, elements // block * type_size))
    return tuple(infos)
