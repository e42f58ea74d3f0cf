"""Evaluate a model (a built hybrid, a preview, or any causal LM) next to its sources.

Every model is scored on the bundled text with the same window and stride. Perplexity is
per token of that model's own tokenizer, so it only compares across models sharing a
tokenizer; bits per byte compares across any. Top-1 agreement counts the scored positions
where the model and a source predict the same next token (same tokenizer only).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.decode import greedy_decode
from engine.errors import GarageError
from engine.loading import LoadedModel, open_model
from engine.progress import Progress, check_cancel, notify
from engine.run import run
from engine.runner import encode
from engine.sample_text import SAMPLE_TEXT_PATH, sample_text

WINDOW = 256
STRIDE = 224  # each window after the first re-reads 32 tokens of context; ~10% extra compute
NEW_TOKENS = 16
PROMPTS = ("The capital of France is", "Once upon a time, there was a", "The three primary colors are")


@dataclass
class ModelScore:
    """One model's column of the report."""

    name: str
    role: str  # model | source
    perplexity: float
    bits_per_byte: float
    tokens_scored: int
    continuations: list[dict[str, str]]
    agreement: dict[str, float | None] = field(default_factory=dict)
    tokenizer_id: str = ""
    predictions: Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte, "tokens_scored": self.tokens_scored,
                "continuations": self.continuations, "top1_agreement": self.agreement}


@dataclass
class EvalReport:
    rows: list[ModelScore]
    window: int
    stride: int
    text_bytes: int

    @property
    def model(self) -> ModelScore:
        return self.rows[0]

    def to_dict(self) -> dict[str, Any]:
        return {"text": SAMPLE_TEXT_PATH, "text_bytes": self.text_bytes, "window": self.window,
                "stride": self.stride, "models": [row.to_dict() for row in self.rows]}


def _tokenizer_id(loaded: LoadedModel) -> str:
    """Same id ⇔ same token ids mean the same strings (so predictions can be compared)."""
    import hashlib

    vocab = sorted(loaded.tokenizer.get_vocab().items())
    return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]


def _encode(loaded: LoadedModel, text: str) -> Tensor:
    tokenizer = loaded.tokenizer
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    # Starting from BOS lets every content token be scored, so bits per byte covers all bytes.
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is not None:
        ids = torch.cat([torch.tensor([start]), ids])
    return ids


def score_text(loaded: LoadedModel, ids: Tensor, window: int = WINDOW, stride: int = STRIDE,
               cancel: threading.Event | None = None) -> tuple[float, int, Tensor]:
    """Total negative log-likelihood (nats), tokens scored and the argmax prediction at every
    scored position, with a sliding window: each token is scored once, with up to
    ``window - stride`` tokens of context carried over."""
    device = loaded.input_device
    total_nll = 0.0
    scored = 0
    predictions = []
    previous_end = 1  # token 0 (BOS) is context, never a target
    n = ids.shape[0]
    for begin in range(0, n, stride):
        check_cancel(cancel, "evaluation")
        end = min(begin + window, n)
        target_count = end - previous_end
        if target_count <= 0:
            break
        chunk = ids[begin:end].unsqueeze(0).to(device)
        logits = run(loaded, chunk, cancel=cancel).logits[0].float()
        log_probs = torch.log_softmax(logits[-target_count - 1:-1], dim=-1)
        targets = chunk[0, -target_count:]
        total_nll -= float(log_probs.gather(1, targets.unsqueeze(1)).sum())
        predictions.append(logits[-target_count - 1:-1].argmax(-1).cpu())
        scored += target_count
        previous_end = end
        if end == n:
            break
    return total_nll, scored, torch.cat(predictions)


def greedy(loaded: LoadedModel, prompt: str, new_tokens: int = NEW_TOKENS,
           cancel: threading.Event | None = None) -> tuple[list[int], str]:
    """Exactly ``new_tokens`` greedy tokens (no stop at end-of-sequence); the new ids and their text."""
    ids = encode(loaded, prompt)
    new_ids = greedy_decode(loaded, ids, new_tokens, stop_at_eos=False, cancel=cancel).new_tokens
    return new_ids, loaded.tokenizer.decode(new_ids)


def _open(model_or_dir: LoadedModel | str | Path) -> LoadedModel:
    loaded = model_or_dir if isinstance(model_or_dir, LoadedModel) else open_model(str(model_or_dir))
    if not loaded.is_causal_lm:
        raise GarageError(f"'{loaded.name}' has no language-model head, so it has no perplexity; "
                          "evaluate a causal LM (e.g. smollm2-135m or a hybrid built from it)")
    if loaded.tokenizer is None:
        raise GarageError(f"'{loaded.name}' has no tokenizer files; put tokenizer.json beside its config.json")
    return loaded


def recorded_sources(folder: str | Path) -> list[str]:
    """The source specs a built folder's ``recipe.yaml`` names (empty for other folders)."""
    from engine.safe_parse import load_yaml

    path = Path(folder) / "recipe.yaml"
    if not path.is_file():
        return []
    document = load_yaml(path, "built recipe") or {}  # size, depth and alias limits: it is a file from disk
    if not isinstance(document, dict):
        raise GarageError(f"built recipe {path} is not a mapping; it was not written by `garage build`")
    resolved = (document.get("resolved") or {}).get("sources") or {}
    specs = []
    for alias, spec in (document.get("sources") or {}).items():
        from engine.bundled import BUNDLED

        folder_path = (resolved.get(alias) or {}).get("folder")
        if spec in BUNDLED or Path(str(spec)).expanduser().exists() or not folder_path:
            specs.append(str(spec))
        else:
            specs.append(folder_path)  # a relative path that was resolved at build time
    return list(dict.fromkeys(specs))


def _score(loaded: LoadedModel, role: str, text: str, window: int, stride: int,
           prompts: Sequence[str], new_tokens: int, cancel: threading.Event | None) -> ModelScore:
    ids = _encode(loaded, text)
    nll, scored, predictions = score_text(loaded, ids, window, stride, cancel)
    continuations = []
    for prompt in prompts:
        _, continuation = greedy(loaded, prompt, new_tokens, cancel)
        continuations.append({"prompt": prompt, "continuation": continuation})
    return ModelScore(
        name=loaded.name, role=role, perplexity=math.exp(nll / scored),
        bits_per_byte=nll / math.log(2) / len(text.encode("utf-8")), tokens_scored=scored,
        continuations=continuations, tokenizer_id=_tokenizer_id(loaded), predictions=predictions,
    )


def evaluate(
    model_or_dir: LoadedModel | str | Path,
    sources: Sequence[LoadedModel | str | Path] = (),
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    *,
    window: int = WINDOW,
    stride: int = STRIDE,
    prompts: Sequence[str] = PROMPTS,
    new_tokens: int = NEW_TOKENS,
) -> EvalReport:
    """Perplexity, bits per byte, greedy continuations and top-1 agreement, for the model and
    each source side by side (same text, window and stride for all)."""
    if not 0 < stride <= window:
        raise GarageError(f"stride must be between 1 and the window ({window}), got {stride}")
    text = sample_text()
    models = [(_open(model_or_dir), "model")]
    for source in sources:
        models.append((_open(source), "source"))
    rows = []
    for index, (loaded, role) in enumerate(models):
        notify(progress, f"evaluating {loaded.name}", index / len(models))
        rows.append(_score(loaded, role, text, window, stride, prompts, new_tokens, cancel))
    main = rows[0]
    for row in rows[1:]:
        ours, theirs = main.predictions, row.predictions
        agreement = None
        if row.tokenizer_id == main.tokenizer_id and ours is not None and theirs is not None \
                and ours.shape == theirs.shape:
            agreement = float(torch.eq(ours, theirs).float().mean())
        main.agreement[row.name] = agreement
        row.agreement[main.name] = agreement
    notify(progress, "done", 1.0)
    return EvalReport(rows, window, stride, len(text.encode("utf-8")))
