"""One search trial: build the recipe in memory (``preview``), score it on the bundled text.

``evaluate_trial`` is a pure, module-level function of its ``TrialTask`` so every job backend
can run it; source models are opened once per worker process (``worker_cache``) and torch is
pinned to one thread while scoring, so a trial's numbers are the same bits on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs for one trial: the recipe document and how to score it."""

    number: int
    point: tuple[float, ...]
    recipe: dict[str, Any]
    objectives: tuple[str, ...]
    max_tokens: int


@dataclass
class TrialResult:
    """One evaluated trial; ``values`` follow the spec's objectives (all minimised)."""

    number: int
    point: list[float]
    values: list[float]
    perplexity: float
    bits_per_byte: float
    tokens_scored: int
    layers: int
    recipe: dict[str, Any] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "point": self.point, "values": self.values, "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte, "tokens_scored": self.tokens_scored, "layers": self.layers,
                "recipe": self.recipe}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrialResult:
        return cls(number=int(doc["number"]), point=[float(x) for x in doc["point"]],
                   values=[float(v) for v in doc["values"]], perplexity=float(doc["perplexity"]),
                   bits_per_byte=float(doc["bits_per_byte"]), tokens_scored=int(doc["tokens_scored"]),
                   layers=int(doc["layers"]), recipe=dict(doc.get("recipe") or {}))


def _source(spec: str) -> Any:
    """The source model ``spec`` opened once per process."""
    from engine.jobs import worker_cache
    from engine.loading import open_model

    cache = worker_cache()
    key = f"search-source:{spec}"
    if key not in cache:
        cache[key] = open_model(spec, attach=False)  # a source lends its weights to the preview, nothing it carries
    return cache[key]


def _token_ids(loaded: Any, max_tokens: int) -> tuple[Any, int]:
    """The first ``max_tokens`` scored ids of the bundled text (BOS first) and the bytes they cover.

    A model without tokenizer files (a tiny random test model) reads the text's UTF-8 bytes
    modulo its vocabulary, one id per byte.
    """
    import torch

    from engine.sample_text import sample_text

    text = sample_text()
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raw = text.encode("utf-8")[:max_tokens]
        vocab = int(loaded.config.vocab_size)
        return torch.tensor([b % vocab for b in raw], dtype=torch.long), len(raw) - 1
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0][:max_tokens]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is not None:
        ids = torch.cat([torch.tensor([start]), ids])
    covered = len(tokenizer.decode(ids[1:].tolist()).encode("utf-8"))
    return ids, covered


@contextmanager
def in_memory(recipe_doc: dict[str, Any], max_tokens: int) -> Iterator[tuple[Any, Any, int]]:
    """``recipe_doc`` built in memory, with the objective's token ids and the bytes they cover,
    torch pinned to one thread meanwhile (workers share the cores)."""
    import torch

    from engine.build import load_recipe
    from engine.build.preview import preview

    recipe = load_recipe(recipe_doc)
    models = {alias: _source(spec) for alias, spec in recipe.sources.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hybrid = preview(recipe, models=models)
        ids, covered = _token_ids(hybrid, max_tokens)
        yield hybrid, ids, covered
    finally:
        torch.set_num_threads(threads)


def evaluate_trial(task: TrialTask) -> TrialResult:
    """Build ``task.recipe`` in memory and score it: perplexity and bits per byte on the bundled text."""
    from engine.build.evaluate import score_text

    with in_memory(task.recipe, task.max_tokens) as (hybrid, ids, covered):
        nll, scored, _ = score_text(hybrid, ids)
    metrics = {"perplexity": math.exp(nll / scored), "bits_per_byte": nll / math.log(2) / max(covered, 1)}
    return TrialResult(number=task.number, point=list(task.point), values=[metrics[o] for o in task.objectives],
                       perplexity=metrics["perplexity"], bits_per_byte=metrics["bits_per_byte"],
                       tokens_scored=scored, layers=len(task.recipe["layers"]), recipe=task.recipe)
