"""Paired residuals of two models over local text, streamed one chunk at a time.

A stitch learns ``h_B ≈ map(h_A)`` from pairs of positions that mean the same place in the
text: the same token positions when A and B tokenize it identically, otherwise the positions
where both tokenizers end a token at the same character offset. Chunks are run one at a time
through ``engine.run.run`` and only the paired rows of one chunk are ever held.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.errors import GarageError
from engine.progress import Progress, check_cancel, notify
from engine.tensors import SINK_RATIO, sink_rows

__all__ = ["SINK_RATIO", "Pairing", "PairBatch", "TextSplit", "align_positions", "pair_batches", "pairing_for",
           "sink_rows", "stitch_text", "without_sinks"]

ALIGN_SAME_TOKENS = "same-token-positions"
ALIGN_CHAR_OFFSETS = "shared-token-end-offsets"


class TransferError(GarageError):
    """A stitch or transfer request that cannot be carried out as asked."""


@dataclass
class TextSplit:
    """Local text cut into chunks, split into a training part and a held-out part."""

    train: list[str]
    held_out: list[str]
    digest: str  # sha256 of the whole text, for provenance


@dataclass
class PairBatch:
    """One chunk's paired residuals: rows of A's and B's residual at matching positions."""

    x: Tensor  # [n, d_A] float32
    y: Tensor  # [n, d_B] float32
    ids_a: Tensor  # [1, T_A] A's tokens of the chunk
    ids_b: Tensor  # [1, T_B]
    positions_a: Tensor  # [n] A's positions of the rows
    positions_b: Tensor  # [n]
    sinks: int = 0  # paired rows of the chunk left out as sinks (``sink_rows`` on either side)


@dataclass
class Pairing:
    """How two models' positions are paired: the rule's name and whether token ids coincide."""

    rule: str
    same_tokens: bool


def stitch_text(sources: tuple[str, ...] = ("sample", "pydoc"), chunk_chars: int = 600, held_out_every: int = 5,
                max_chars: int | None = None, files: tuple[str, ...] = ()) -> TextSplit:
    """The bundled sample, Python's ``pydoc_data.topics`` and/or user files, as train/held-out chunks.

    Every ``held_out_every``-th chunk is held out, so both parts cover the same kinds of text.
    """
    from pathlib import Path

    from engine.sample_text import sample_text

    parts: list[str] = []
    for source in sources:
        if source == "sample":
            parts.append(sample_text())
        elif source == "pydoc":
            from pydoc_data.topics import topics

            parts.extend(topics[key] for key in sorted(topics))
        else:
            raise TransferError(f"unknown text source '{source}'; use 'sample', 'pydoc' or pass files")
    for file in files:
        try:
            parts.append(Path(file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise TransferError(f"cannot read text file '{file}' ({exc}); pass a readable UTF-8 file") from exc
    text = "\n\n".join(parts)
    if max_chars is not None:
        text = text[:max_chars]
    chunks = [text[start:start + chunk_chars] for start in range(0, len(text), chunk_chars)]
    chunks = [chunk for chunk in chunks if chunk.strip()]
    if len(chunks) < held_out_every:  # fewer, and no chunk is held out: nothing to measure the fit on
        raise TransferError(f"the text is {len(text)} characters, too short to split into training and held-out "
                            f"chunks (every {held_out_every}th of {chunk_chars} characters is held out); pass at "
                            f"least {(held_out_every - 1) * chunk_chars + 1} characters")
    held = [chunk for index, chunk in enumerate(chunks) if index % held_out_every == held_out_every - 1]
    train = [chunk for index, chunk in enumerate(chunks) if index % held_out_every != held_out_every - 1]
    return TextSplit(train, held, hashlib.sha256(text.encode()).hexdigest()[:16])


def without_sinks(batch: PairBatch) -> PairBatch:
    """``batch`` with the rows that are sinks on either side left out (counted in ``sinks``)."""
    keep = ~(sink_rows(batch.x) | sink_rows(batch.y))
    return PairBatch(batch.x[keep], batch.y[keep], batch.ids_a, batch.ids_b, batch.positions_a[keep],
                     batch.positions_b[keep], batch.sinks + int((~keep).sum()))


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[Tensor, list[tuple[int, int]]]:
    encoded = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    return encoded.input_ids, [tuple(pair) for pair in encoded.offset_mapping[0].tolist()]


def pairing_for(tokenizer_a: Any, tokenizer_b: Any, probe: str) -> Pairing:
    """Pair by token position when both tokenizers give the same ids for ``probe``, else by offsets."""
    if tokenizer_a is None or tokenizer_b is None:
        raise TransferError("both models need a tokenizer to pair positions over text; open models with one")
    same = tokenizer_a(probe).input_ids == tokenizer_b(probe).input_ids and \
        tokenizer_a.get_vocab() == tokenizer_b.get_vocab()
    return Pairing(ALIGN_SAME_TOKENS if same else ALIGN_CHAR_OFFSETS, same)


def align_positions(offsets_a: list[tuple[int, int]], offsets_b: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Positions where both tokenizers end a (non-empty) token at the same character offset."""
    ends_b: dict[int, int] = {}
    for position, (start, end) in enumerate(offsets_b):
        if end > start:
            ends_b[end] = position  # a later token ending at the same offset wins: it has read more
    ends_a: dict[int, int] = {}
    for position, (start, end) in enumerate(offsets_a):
        if end > start:
            ends_a[end] = position
    shared = sorted(set(ends_a) & set(ends_b))
    return [ends_a[end] for end in shared], [ends_b[end] for end in shared]


def paired_chunk(loaded_a: Any, loaded_b: Any, chunk: str,
                 pairing: Pairing) -> tuple[Tensor, Tensor, list[int], list[int]]:
    """Both models' token ids for ``chunk`` and the positions that pair up (position 0 left out)."""
    ids_a, offsets_a = encode_with_offsets(loaded_a.tokenizer, chunk)
    ids_b, offsets_b = encode_with_offsets(loaded_b.tokenizer, chunk)
    if pairing.same_tokens:
        count = min(ids_a.shape[1], ids_b.shape[1])
        return ids_a, ids_b, list(range(1, count)), list(range(1, count))
    kept = [(pa, pb) for pa, pb in zip(*align_positions(offsets_a, offsets_b), strict=True) if pa > 0 and pb > 0]
    return ids_a, ids_b, [pa for pa, _ in kept], [pb for _, pb in kept]


def pair_batches(loaded_a: Any, loaded_b: Any, address_a: str, address_b: str, chunks: list[str], *,
                 pairing: Pairing, cancel: threading.Event | None = None, progress: Progress | None = None,
                 stage: str = "pairing") -> Iterator[PairBatch]:
    """Yield each chunk's paired residuals; position 0 and sink rows (``sink_rows``) are left out."""
    from engine.run import run

    for index, chunk in enumerate(chunks):
        check_cancel(cancel, "the stitch")
        notify(progress, stage, index / max(len(chunks), 1))
        ids_a, ids_b, positions_a, positions_b = paired_chunk(loaded_a, loaded_b, chunk, pairing)
        if not positions_a:
            continue
        with torch.no_grad():
            h_a = run(loaded_a, ids_a.to(loaded_a.input_device), capture=[address_a], cancel=cancel,
                      stop_after_capture=True, last_logits_only=True).tap[address_a]
            h_b = run(loaded_b, ids_b.to(loaded_b.input_device), capture=[address_b], cancel=cancel,
                      stop_after_capture=True, last_logits_only=True).tap[address_b]
        index_a, index_b = torch.tensor(positions_a), torch.tensor(positions_b)
        yield without_sinks(PairBatch(h_a[0, index_a].float().cpu(), h_b[0, index_b].float().cpu(), ids_a, ids_b,
                                      index_a, index_b))
    notify(progress, stage, 1.0)
