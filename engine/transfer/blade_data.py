"""What a blade trains on: a template task's prompts and answers, tokenised for B, with A's paired rows.

A task is a JSONL file of ``{"prompt": …, "answer": …}`` records (``clean`` is accepted for the
prompt, so the attribution tasks in ``engine/data/tasks`` serve; the transfer prompt sets in
``engine/data/transfer`` give their held-out prompts and first target words). B reads
``prompt + answer`` and is scored on the answer's tokens; A reads the same text once, and its
residual at the positions that pair with B's (same token positions when the tokenizers agree,
shared token-end character offsets when they do not, position 0 left out as in the stitches) is
kept as the blade's input. A is frozen, so its rows are computed once per address and reused by
every training step and depth.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.progress import check_cancel
from engine.transfer.pairs import ALIGN_CHAR_OFFSETS, ALIGN_SAME_TOKENS, TransferError, align_positions

__all__ = ["BladeData", "BladeTask", "DonorRows", "TaskExample", "TaskScore", "blade_task_names", "encode_task",
           "encode_texts", "load_blade_task", "residual_rms", "score_logits"]

TASK_FOLDERS = ("data/tasks", "data/transfer")
MAX_TASK_EXAMPLES = 100_000


@dataclass(frozen=True)
class TaskExample:
    """One prompt and the answer B should continue it with (usually with a leading space)."""

    prompt: str
    answer: str


@dataclass
class BladeTask:
    """A named list of examples and the digest of their text (for a part's provenance)."""

    name: str
    examples: list[TaskExample]
    digest: str

    def split(self, held_out_every: int = 4) -> tuple[list[TaskExample], list[TaskExample]]:
        """Every ``held_out_every``-th example held out, the rest for training."""
        if held_out_every < 2 or len(self.examples) < held_out_every:
            raise TransferError(f"task '{self.name}' has {len(self.examples)} examples: too few to hold out one in "
                                f"{held_out_every}; pass a larger task")
        held = [item for index, item in enumerate(self.examples) if index % held_out_every == held_out_every - 1]
        train = [item for index, item in enumerate(self.examples) if index % held_out_every != held_out_every - 1]
        return train, held


def blade_task_names() -> list[str]:
    """The bundled tasks a blade can train on (transfer prompt sets first, then attribution tasks)."""
    names: list[str] = []
    for folder in TASK_FOLDERS:
        entry = resources.files("engine").joinpath(folder)
        if entry.is_dir():
            names.extend(item.name.removesuffix(".jsonl") for item in entry.iterdir() if item.name.endswith(".jsonl"))
    return sorted(set(names))


def _task_text(name: str) -> tuple[str, str]:
    path = Path(name)
    if name.endswith(".jsonl") or path.is_file():
        try:
            return path.stem, path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TransferError(f"cannot read task file '{name}' ({exc}); pass a readable UTF-8 JSONL file") from exc
    for folder in TASK_FOLDERS:
        entry = resources.files("engine").joinpath(f"{folder}/{name}.jsonl")
        if entry.is_file():
            return name, entry.read_text(encoding="utf-8")
    raise TransferError(f"no task named '{name}'; bundled tasks: {', '.join(blade_task_names())} "
                        "(or pass a .jsonl file of prompt/answer records)")


def load_blade_task(name: str, limit: int | None = None) -> BladeTask:
    """A bundled task by name, or a JSONL file of ``prompt``/``answer`` records (the first ``limit``).

    Attribution's template tasks (``engine/data/tasks``) are looked up first; a transfer prompt set
    (``engine/data/transfer``) gives its held-out prompts, each answered by its first positive word.
    """
    title, text = _task_text(name)
    examples: list[TaskExample] = []
    default_positive: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            kind = row.get("kind")
            prompt = row.get("prompt", row.get("clean"))
            answer = row.get("answer", row.get("target"))
        except (ValueError, AttributeError) as exc:
            raise TransferError(f"task '{title}' line {number} is not a JSON object: {exc}") from exc
        if kind is not None:  # a transfer prompt set: its held-out prompts with their first positive word
            if kind == "targets" and isinstance(row.get("positive"), list):
                default_positive = row["positive"]
            positive = row.get("positive") or default_positive
            if kind != "held_out" or not isinstance(positive, list) or not positive:
                continue
            answer = positive[0]
        if not isinstance(prompt, str) or not isinstance(answer, str) or not prompt or not answer:
            raise TransferError(f"task '{title}' line {number} needs a non-empty 'prompt' (or 'clean') and 'answer'")
        examples.append(TaskExample(prompt, answer))
        if len(examples) > MAX_TASK_EXAMPLES:
            raise TransferError(f"task '{title}' has over {MAX_TASK_EXAMPLES:,} examples; pass a smaller task")
    if limit is not None:
        examples = examples[:max(limit, 0)]
    if not examples:
        raise TransferError(f"task '{title}' has no examples")
    digest = hashlib.sha256(json.dumps([[e.prompt, e.answer] for e in examples]).encode()).hexdigest()[:16]
    return BladeTask(title, examples, digest)


@dataclass
class DonorRows:
    """A's residual rows and the (example, B position) each one is added at."""

    rows: Tensor  # [R, d_A] float32
    batch_index: Tensor  # [R] long
    position_index: Tensor  # [R] long, a position of B's tokens


@dataclass
class TaskScore:
    """B's task loss (mean over examples of the answer tokens' mean NLL) and exact-match accuracy."""

    loss: float
    accuracy: float  # share of examples whose every answer token is B's top guess (teacher-forced)
    examples: int


@dataclass
class BladeData:
    """Examples tokenised for B (right-padded), the answer tokens scored, and A's paired rows."""

    examples: list[TaskExample]
    ids: Tensor  # [N, T] B's tokens of prompt + answer
    mask: Tensor  # [N, T]
    target_batch: Tensor  # [K] which example each scored token belongs to
    target_position: Tensor  # [K] the position whose logits predict it
    target_ids: Tensor  # [K]
    donor: DonorRows
    alignment: str

    def __len__(self) -> int:
        return len(self.examples)

    def select(self, indices: list[int]) -> BladeData:
        """The data of the examples ``indices`` (in that order), trimmed to their longest text."""
        order = torch.tensor(indices, dtype=torch.long)
        remap = torch.full((len(self.examples),), -1, dtype=torch.long)
        remap[order] = torch.arange(len(indices))
        mask = self.mask[order]
        length = int(mask.sum(1).max()) if len(indices) else 0
        keep_t = remap[self.target_batch] >= 0
        keep_r = remap[self.donor.batch_index] >= 0
        donor = DonorRows(self.donor.rows[keep_r], remap[self.donor.batch_index[keep_r]],
                          self.donor.position_index[keep_r])
        return BladeData([self.examples[i] for i in indices], self.ids[order, :length], mask[:, :length],
                         remap[self.target_batch[keep_t]], self.target_position[keep_t], self.target_ids[keep_t],
                         donor, self.alignment)


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=special)
    return [int(i) for i in encoded.input_ids[0].tolist()]


def _offsets(tokenizer: Any, text: str, special: bool, shift: int) -> list[tuple[int, int]]:
    try:
        encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=special)
    except (NotImplementedError, TypeError, ValueError) as exc:
        raise TransferError("the two models tokenize differently and one tokenizer gives no character offsets; "
                            "pair models whose tokenizers are 'fast' (offsets) or identical") from exc
    return [(start + shift, end + shift) if end > start else (start, end) for start, end in encoded.offset_mapping]


def _same_tokenizers(tokenizer_a: Any, tokenizer_b: Any, probe: str) -> bool:
    if tokenizer_a is None or tokenizer_b is None:
        raise TransferError("both models need a tokenizer to read the task; open models with one")
    if tokenizer_a is tokenizer_b:
        return True
    return _ids(tokenizer_a, probe, True) == _ids(tokenizer_b, probe, True) and \
        tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


def _pad(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    length = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = torch.tensor(row)
        mask[index, :len(row)] = 1
    return ids, mask


def _paired(loaded_a: Any, loaded_b: Any, same: bool, prompt: str,
            answer: str) -> tuple[list[int], list[int], int, list[int], list[int]]:
    """A's and B's tokens of ``prompt + answer``, B's prompt length, and the paired positions (A's, B's)."""
    prompt_b = _ids(loaded_b.tokenizer, prompt, True)
    answer_b = _ids(loaded_b.tokenizer, answer, False) if answer else []
    full_b = prompt_b + answer_b
    if same:
        positions = list(range(1, len(full_b)))
        return full_b, full_b, len(prompt_b), positions, positions
    full_a = _ids(loaded_a.tokenizer, prompt, True) + (_ids(loaded_a.tokenizer, answer, False) if answer else [])
    offsets = []
    for tokenizer in (loaded_a.tokenizer, loaded_b.tokenizer):
        offsets.append(_offsets(tokenizer, prompt, True, 0) +
                       (_offsets(tokenizer, answer, False, len(prompt)) if answer else []))
    kept = [(a, b) for a, b in zip(*align_positions(offsets[0], offsets[1]), strict=True) if a > 0 and b > 0]
    return full_a, full_b, len(prompt_b), [a for a, _ in kept], [b for _, b in kept]


def _donor_rows(loaded_a: Any, address_a: str, rows_a: list[list[int]], pairs: list[tuple[list[int], list[int]]],
                chunk: int, cancel: threading.Event | None) -> DonorRows:
    """Run A over its token rows (right-padded, ``chunk`` at a time) and keep its residual at the paired positions."""
    from engine.run import run

    donor_rows: list[Tensor] = []
    batch_index: list[int] = []
    position_index: list[int] = []
    for start in range(0, len(rows_a), chunk):
        check_cancel(cancel, "reading the text through model A")
        ids_a, mask_a = _pad(rows_a[start:start + chunk])
        captured = run(loaded_a, ids_a.to(loaded_a.input_device), capture=[address_a], attention_mask=mask_a,
                       stop_after_capture=True, last_logits_only=True).tap[address_a]
        for offset, (positions_a, positions_b) in enumerate(pairs[start:start + chunk]):
            if positions_a:
                donor_rows.append(captured[offset, torch.tensor(positions_a)].float().cpu())
                batch_index.extend([start + offset] * len(positions_b))
                position_index.extend(positions_b)
    if not donor_rows:
        raise TransferError("no positions of A and B pair up on this text; the tokenizers share no token ends")
    return DonorRows(torch.cat(donor_rows), torch.tensor(batch_index), torch.tensor(position_index))


def encode_task(loaded_a: Any, loaded_b: Any, address_a: str, examples: list[TaskExample], *,
                chunk: int = 16, cancel: threading.Event | None = None) -> BladeData:
    """Tokenise ``examples`` for both models, pair positions, and run A once to keep its rows at ``address_a``."""
    if not examples:
        raise TransferError("a blade needs at least one example to read")
    same = _same_tokenizers(loaded_a.tokenizer, loaded_b.tokenizer, examples[0].prompt + examples[0].answer)
    rows_a: list[list[int]] = []
    rows_b: list[list[int]] = []
    pairs: list[tuple[list[int], list[int]]] = []
    targets: list[tuple[int, int, int]] = []
    for number, example in enumerate(examples):
        full_a, full_b, prompt_length, positions_a, positions_b = _paired(loaded_a, loaded_b, same, example.prompt,
                                                                          example.answer)
        if prompt_length == 0 or len(full_b) == prompt_length:
            raise TransferError(f"example {number + 1} ({example.prompt!r} → {example.answer!r}) has an empty "
                                "prompt or answer for B's tokenizer")
        targets.extend((number, prompt_length - 1 + k, token) for k, token in enumerate(full_b[prompt_length:]))
        rows_a.append(full_a)
        rows_b.append(full_b)
        pairs.append((positions_a, positions_b))
    donor = _donor_rows(loaded_a, address_a, rows_a, pairs, chunk, cancel)
    ids_b, mask_b = _pad(rows_b)
    target = torch.tensor(targets, dtype=torch.long)
    return BladeData(list(examples), ids_b, mask_b, target[:, 0], target[:, 1], target[:, 2], donor,
                     ALIGN_SAME_TOKENS if same else ALIGN_CHAR_OFFSETS)


def encode_texts(loaded_a: Any, loaded_b: Any, address_a: str, texts: list[str], *,
                 cancel: threading.Event | None = None) -> tuple[Tensor, Tensor, DonorRows, str]:
    """B's tokens of ``texts`` (right-padded ids and mask), A's paired rows, and the alignment rule: what a
    blade needs to run on new text."""
    if not texts or not all(texts):
        raise TransferError("give at least one non-empty text to run the blade on")
    same = _same_tokenizers(loaded_a.tokenizer, loaded_b.tokenizer, texts[0])
    paired = [_paired(loaded_a, loaded_b, same, text, "") for text in texts]
    donor = _donor_rows(loaded_a, address_a, [p[0] for p in paired], [(p[3], p[4]) for p in paired], 16, cancel)
    ids_b, mask_b = _pad([p[1] for p in paired])
    return ids_b, mask_b, donor, ALIGN_SAME_TOKENS if same else ALIGN_CHAR_OFFSETS


def residual_rms(loaded_b: Any, data: BladeData, addresses: list[str], *, chunk: int = 16) -> dict[str, float]:
    """B's residual RMS at each address over the task's real positions (position 0 left out)."""
    from engine.run import run

    sums = dict.fromkeys(addresses, 0.0)
    count = 0
    for start in range(0, len(data), chunk):
        part = data.select(list(range(start, min(start + chunk, len(data)))))
        tap = run(loaded_b, part.ids.to(loaded_b.input_device), capture=addresses, attention_mask=part.mask,
                  stop_after_capture=True, last_logits_only=True).tap
        real = part.mask.bool().clone()
        real[:, 0] = False
        for address in addresses:
            value = tap[address].float().cpu()[real]
            sums[address] += float((value ** 2).mean(-1).sum())
        count += int(real.sum())
    return {address: (total / max(count, 1)) ** 0.5 for address, total in sums.items()}


def score_logits(logits: Tensor, data: BladeData) -> tuple[Tensor, TaskScore]:
    """The task loss as a tensor (differentiable) and its score, from B's logits ``[N, T, V]`` on ``data``."""
    device = logits.device
    chosen = logits[data.target_batch.to(device), data.target_position.to(device)].float().log_softmax(-1)
    targets = data.target_ids.to(device)
    nll = -chosen.gather(-1, targets[:, None])[:, 0]
    batch = data.target_batch.to(device)
    count = len(data)
    per_example = torch.zeros(count, device=device).index_add(0, batch, nll)
    tokens = torch.zeros(count, device=device).index_add(0, batch, torch.ones_like(nll))
    loss = (per_example / tokens.clamp_min(1)).mean()
    wrong = torch.zeros(count, device=device).index_add(0, batch, (chosen.argmax(-1) != targets).float())
    accuracy = float((wrong == 0).float().mean())
    return loss, TaskScore(float(loss.detach()), accuracy, count)
