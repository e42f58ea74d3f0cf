"""Extracting one layer from a multi-GB safetensors checkpoint reads about that layer's bytes.

Builds a ~1.5 GB Llama-shaped checkpoint from a made-up config in a temp folder (streamed to
disk, never held in memory), drops it from the page cache, extracts ``L2`` and one head
straight from the checkpoint through the parts bin, and measures the bytes read from storage
two ways: the process's ``read_bytes`` in /proc/self/io, and how much of the file is resident
in the page cache afterwards (mincore). Prints both as ratios to the part's size and the file
size. Cleans up after itself. Run: ``.venv/bin/python bench/bench_extract.py``.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PAGE = os.sysconf("SC_PAGE_SIZE")


def build_checkpoint(folder: Path) -> tuple[Path, object]:
    """A Llama config of ~1.5 GB in float32, written tensor by tensor as one safetensors file."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=5, num_attention_heads=16,
        num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=2048,
    )
    config.save_pretrained(folder)
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(config)
    shapes = {name: tuple(p.shape) for name, p in meta.named_parameters()}
    header, offset = {}, 0
    for name in sorted(shapes):
        size = 4 * int(torch.Size(shapes[name]).numel())
        header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = folder / "model.safetensors"
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        for name in sorted(shapes):
            numel = int(torch.Size(shapes[name]).numel())
            # Cheap, non-constant contents; the values do not matter, only the bytes on disk.
            chunk = (torch.arange(numel, dtype=torch.float32) % 251) * 1e-3
            handle.write(chunk.numpy().tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    return path, config


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache: mincore over a fresh mapping, which touches nothing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    size = path.stat().st_size
    pages = (size + PAGE - 1) // PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(address, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(v & 1 for v in bytes(vec)) * PAGE
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def measure(bin_, folder: Path, path: Path, address: str) -> dict[str, float]:
    drop_from_page_cache(path)
    cached_before = resident_bytes(path)
    before = read_bytes()
    started = time.perf_counter()
    record = bin_.add_from_checkpoint(folder, address)
    elapsed = time.perf_counter() - started
    part_bytes = sum(4 * math.prod(entry.shape) for entry in record.tensors)  # float32
    return {
        "address": address, "part_bytes": part_bytes, "read_bytes": read_bytes() - before,
        "resident_after": resident_bytes(path) - cached_before, "seconds": elapsed,
    }


def main() -> int:
    from engine.parts import PartsBin

    root = Path(tempfile.mkdtemp(prefix="garage-bench-extract-", dir=os.environ.get("BENCH_TMP")))
    try:
        started = time.perf_counter()
        folder = root / "big-llama"
        folder.mkdir()
        path, _ = build_checkpoint(folder)
        file_size = path.stat().st_size
        print(f"built {path.name}: {file_size / 1e9:.2f} GB in {time.perf_counter() - started:.1f}s")
        bin_ = PartsBin(root / "home")
        # Warm the structure-only open (config + header) so the measurement is the tensors alone.
        bin_.add_from_checkpoint(folder, "L0.norm1")
        rows = [measure(bin_, folder, path, "L2"), measure(bin_, folder, path, "L2.attn.h3")]
        for row in rows:
            part, read, resident = row["part_bytes"], row["read_bytes"], row["resident_after"]
            print(
                f"{row['address']:>11}: part {part / 1e6:8.1f} MB · read_bytes {read / 1e6:8.1f} MB "
                f"(×{read / part:.2f} of the part, {read / file_size:.1%} of the file) · "
                f"page cache +{resident / 1e6:.1f} MB (×{resident / part:.2f}) · {row['seconds']:.2f}s"
            )
        layer = rows[0]
        if layer["read_bytes"] == 0 and layer["resident_after"] == 0:
            print("warning: no storage reads were visible (page cache not dropped?); the ratios mean nothing")
            return 1
        measured = max(layer["read_bytes"], layer["resident_after"])
        print(f"ratio read/layer = {measured / layer['part_bytes']:.2f} "
              f"(target ≈1; a full load would read {file_size / layer['part_bytes']:.1f}× the layer)")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
