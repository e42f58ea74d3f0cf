"""``gguf.GGUFReader`` with the same fields, parsed about 25 times faster; one instance per conversion.

The stock reader reads every element of a metadata array through a recursive call that slices
a ``numpy.memmap`` (a Python-level ``__getitem__`` and ``__array_finalize__`` per slice) and
builds an enum: Gemma's tokenizer arrays (262k strings, scores and types) cost 20 s of CPU per
parse, and one conversion parsed the file four times (transformers reads it for the config, for
the tokenizer's config, for the tokenizer, and the weights' plan reads it once more). Here
slices come from a plain ndarray view of the same map, a numeric array is read with one view,
and a string array with one ``struct`` read per string; every field keeps the stock reader's
parts (each element its own array, byte order included), data indices and types, so
transformers reads the same values (tests/test_gguf_reader.py compares them field by field).
"""

from __future__ import annotations

import contextlib
import functools
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

_ARRAY, _STRING = int(GGUFValueType.ARRAY), int(GGUFValueType.STRING)


class FastGGUFReader(GGUFReader):
    """A ``GGUFReader`` whose metadata arrays are parsed a whole array at a time."""

    def __init__(self, path: str | Path, mode: Any = "r") -> None:
        self.path = Path(path)
        super().__init__(path, mode)

    # The stock constructor assigns ``self.data`` (the memmap) and parses at once: the setter
    # keeps a plain ndarray view beside it for ``_get`` to slice.
    @property  # type: ignore[override]
    def data(self) -> np.memmap:
        return self._memmap

    @data.setter
    def data(self, value: np.memmap) -> None:
        self._memmap = value
        self._plain = value.view(np.ndarray)

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        count = int(count)
        kind = np.dtype(dtype)
        array = self._plain[offset:offset + kind.itemsize * count].view(kind)[:count]
        return array.view(array.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[np.ndarray], list[int], list[Any]]:
        if int(raw_type) != _ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        item_type = self._get(orig_offs, np.uint32)
        length = self._get(orig_offs + 4, np.uint64)
        count, item = int(length[0]), int(item_type[0])
        offset = orig_offs + 12
        if count and item == _STRING:
            return self._string_array(orig_offs, offset, count, [item_type, length])
        scalar = self.gguf_scalar_to_np.get(GGUFValueType(item)) if count else None
        if scalar is None:  # empty, or an array of arrays: the stock path
            return super()._get_field_parts(orig_offs, raw_type)
        values = self._get(offset, scalar, count)
        parts = [item_type, length, *(values[i:i + 1] for i in range(count))]
        return 12 + int(values.nbytes), parts, list(range(2, 2 + count)), [GGUFValueType.ARRAY, GGUFValueType(item)]

    def _string_array(self, orig_offs: int, offset: int, count: int,
                      parts: list[np.ndarray]) -> tuple[int, list[np.ndarray], list[int], list[Any]]:
        """Each string as the stock reader gives it: its length (a uint64 in the file's byte order), then its bytes."""
        length_type = self._get(offset, np.uint64).dtype
        big = length_type.byteorder == ">" or (length_type.byteorder == "=" and sys.byteorder == "big")
        unpack = struct.Struct(">Q" if big else "<Q").unpack_from
        plain = self._plain
        buffer = memoryview(plain)  # type: ignore[arg-type]  # a uint8 ndarray is a buffer
        for _ in range(count):
            try:
                size = unpack(buffer, offset)[0]
            except struct.error:
                raise ValueError(f"the metadata runs past the end of the file at byte {offset}") from None
            parts.append(plain[offset:offset + 8].view(length_type))
            parts.append(plain[offset + 8:offset + 8 + size])
            offset += 8 + size
        if offset > len(plain):
            raise ValueError(f"the metadata runs past the end of the file at byte {len(plain)}")
        return offset - orig_offs, parts, list(range(3, 3 + 2 * count, 2)), [GGUFValueType.ARRAY, GGUFValueType.STRING]


_lock = threading.RLock()


@contextlib.contextmanager
def shared(reader: FastGGUFReader) -> Iterator[None]:
    """For the block, ``gguf.GGUFReader(path)`` gives ``reader`` for its file (a fast reader for
    any other), and ``gguf.get_tensor_name_map`` builds each architecture's map once.

    transformers imports both from ``gguf`` inside each call: so its config, tokenizer-config
    and tokenizer reads all take the one parse, and its weight-name mapping, which walks every
    submodule of the model and rebuilt the whole name table at each (6 s on Gemma), builds it
    once. Blocks run one at a time (a lock), so a second thread never restores the names under
    a first one's feet.
    """
    import gguf

    path = reader.path.resolve()
    with _lock:
        original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map

        def make(other: Any, mode: str = "r") -> GGUFReader:
            if mode == "r" and Path(other).resolve() == path:
                return reader
            return FastGGUFReader(other, mode)

        gguf.GGUFReader = make  # type: ignore[assignment,misc]
        gguf.get_tensor_name_map = functools.cache(original_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map  # type: ignore[misc]
