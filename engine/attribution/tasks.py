"""Prompt pairs for attribution: bundled template sets (JSONL) and their tokenised groups.

Each line of ``engine/data/tasks/<name>.jsonl`` holds ``clean``, ``corrupt``, ``answer`` and
``wrong``: the answer is what the clean prompt should produce, the wrong token what the
corrupted prompt produces instead. Both must be single tokens; clean and corrupted prompts
must have the same token length. Pairs of equal length run together as one batch (a group).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from torch import Tensor

from engine.errors import GarageError


@dataclass(frozen=True)
class PromptPair:
    clean: str
    corrupt: str
    answer: str
    wrong: str


@dataclass
class PairGroup:
    """Pairs of one token length, as batched ids; ``indices`` say which pairs they are."""

    indices: list[int]
    clean_ids: Tensor  # [B, T]
    corrupt_ids: Tensor  # [B, T]
    answer_ids: Tensor  # [B]
    wrong_ids: Tensor  # [B]

    @property
    def length(self) -> int:
        return int(self.clean_ids.shape[1])

    @property
    def size(self) -> int:
        return int(self.clean_ids.shape[0])


def task_names() -> list[str]:
    """The bundled template sets, by name."""
    folder = resources.files("engine").joinpath("data/tasks")
    return sorted(entry.name.removesuffix(".jsonl") for entry in folder.iterdir() if entry.name.endswith(".jsonl"))


def load_task(name: str, limit: int | None = None) -> list[PromptPair]:
    """The pairs of a bundled template set (the first ``limit`` of them)."""
    names = task_names()
    if name not in names:
        raise GarageError(f"no task named '{name}'; bundled tasks: {', '.join(names)}")
    text = resources.files("engine").joinpath(f"data/tasks/{name}.jsonl").read_text(encoding="utf-8")
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append(PromptPair(row["clean"], row["corrupt"], row["answer"], row["wrong"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise GarageError(f"task '{name}' line {number} is not a clean/corrupt/answer/wrong record: {exc}") from exc
    if limit is not None:
        if limit < 1:
            raise GarageError(f"--pairs must be at least 1, got {limit}")
        pairs = pairs[:limit]
    return pairs


def single_token(tokenizer, text: str, what: str) -> int:
    """The one token id of ``text``; a clear error when it splits into several (or none)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise GarageError(f"the {what} {text!r} is {len(ids)} tokens for this tokenizer; "
                          "give a single token (usually with its leading space, e.g. ' Paris')")
    return int(ids[0])


def encode_pairs(loaded, pairs: list[PromptPair]) -> list[PairGroup]:
    """Tokenise and validate ``pairs``; group those of equal length into batches."""
    import torch

    from engine.runner import encode

    if not pairs:
        raise GarageError("no prompt pairs to attribute; give --task or --clean/--corrupt/--answer/--wrong")
    by_length: dict[int, list[tuple[int, Tensor, Tensor, int, int]]] = {}
    for index, pair in enumerate(pairs):
        clean_ids, corrupt_ids = encode(loaded, pair.clean), encode(loaded, pair.corrupt)
        if clean_ids.shape != corrupt_ids.shape:
            raise GarageError(
                f"the clean prompt {pair.clean!r} has {clean_ids.shape[1]} tokens and the corrupted one "
                f"{pair.corrupt!r} {corrupt_ids.shape[1]}; attribution needs pairs of equal token length")
        answer = single_token(loaded.tokenizer, pair.answer, "answer")
        wrong = single_token(loaded.tokenizer, pair.wrong, "wrong token")
        if answer == wrong:
            raise GarageError(f"the answer and the wrong token are both {pair.answer!r}; give two different tokens")
        by_length.setdefault(int(clean_ids.shape[1]), []).append((index, clean_ids, corrupt_ids, answer, wrong))
    groups = []
    for length in sorted(by_length):
        rows = by_length[length]
        device = rows[0][1].device
        groups.append(PairGroup(
            [r[0] for r in rows], torch.cat([r[1] for r in rows]), torch.cat([r[2] for r in rows]),
            torch.tensor([r[3] for r in rows], device=device), torch.tensor([r[4] for r in rows], device=device)))
    return groups
