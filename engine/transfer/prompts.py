"""Prompt sets for judging a transferred direction: pairs to build a DiffMean vector, held-out
prompts, target words, and neutral text for the damage check.

Each ``engine/data/transfer/<task>.jsonl`` line has a ``kind``: ``about`` (one line saying what
the direction means), ``targets`` (the words whose log-probability a + steer should raise,
``positive``, and lower, ``negative``), ``pair`` (a ``positive`` and a ``negative`` prompt for
DiffMean) or ``held_out`` (a ``prompt``, optionally with its own ``positive``/``negative`` words).
Target words are written with their leading space and are single tokens in SmolLM2's and
Gemma 3's tokenizers where a word allows (``token_lengths`` checks any tokenizer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from engine.transfer.pairs import TransferError

__all__ = ["TASKS", "HeldOutPrompt", "TransferTask", "load_task", "neutral_text", "target_ids", "token_lengths"]

TASKS = ("sentiment", "formality", "language", "antonyms", "capitals")


@dataclass(frozen=True)
class HeldOutPrompt:
    """A prompt the direction was not built from, with the words a + steer should raise and lower."""

    prompt: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True)
class TransferTask:
    """One prompt set: DiffMean pairs, held-out prompts with targets, and what the direction means."""

    name: str
    about: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    held_out: tuple[HeldOutPrompt, ...]

    def words(self) -> set[str]:
        """Every target word of the held-out prompts."""
        return {word for item in self.held_out for word in (*item.positive, *item.negative)}


def _task_text(name: str) -> str:
    if name not in TASKS:
        raise TransferError(f"unknown transfer task '{name}'; use one of: {', '.join(TASKS)}")
    return resources.files("engine").joinpath(f"data/transfer/{name}.jsonl").read_text(encoding="utf-8")


def load_task(name: str) -> TransferTask:
    """The bundled prompt set ``name`` (one of ``TASKS``)."""
    about = ""
    default: dict[str, tuple[str, ...]] = {"positive": (), "negative": ()}
    pairs: list[tuple[str, str]] = []
    held: list[dict[str, Any]] = []
    for number, line in enumerate(_task_text(name).splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        kind = row.get("kind")
        if kind == "about":
            about = str(row["text"])
        elif kind == "targets":
            default = {"positive": tuple(row["positive"]), "negative": tuple(row["negative"])}
        elif kind == "pair":
            pairs.append((str(row["positive"]), str(row["negative"])))
        elif kind == "held_out":
            held.append(row)
        else:
            raise TransferError(f"line {number} of transfer task '{name}' has unknown kind {kind!r}")
    prompts = tuple(HeldOutPrompt(str(row["prompt"]), tuple(row.get("positive", default["positive"])),
                                  tuple(row.get("negative", default["negative"]))) for row in held)
    if not pairs or not prompts or any(not (p.positive or p.negative) for p in prompts):
        raise TransferError(f"transfer task '{name}' needs pairs, held-out prompts and target words")
    return TransferTask(name, about, tuple(p for p, _ in pairs), tuple(n for _, n in pairs), prompts)


def token_lengths(tokenizer: Any, words: set[str] | list[str]) -> dict[str, int]:
    """How many tokens each word is (without special tokens): 1 is what a target word should be."""
    return {word: len(tokenizer(word, add_special_tokens=False).input_ids) for word in sorted(words)}


def target_ids(tokenizer: Any, words: tuple[str, ...]) -> list[int]:
    """Each word's first token id (a word of several tokens is judged by its first one)."""
    ids = []
    for word in words:
        tokens = tokenizer(word, add_special_tokens=False).input_ids
        if tokens:
            ids.append(int(tokens[0]))
    return ids


def neutral_text(chunks: int = 4, chunk_chars: int = 500) -> list[str]:
    """Neutral text for the damage check: pydoc topics far from any task (and from the stitch's held-out cut)."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    # every 7th topic from the end: the stitch trains on the text from the start, so these are rarely seen
    picked = [topics[key].strip()[:chunk_chars] for key in reversed(keys[::7])]
    return [text for text in picked if len(text) >= chunk_chars // 2][:chunks]
