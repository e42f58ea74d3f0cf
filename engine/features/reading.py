"""Reading one feature: where it fires (top tokens with context), how strongly (histogram), and
what its decoder direction does to the next-token logits."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.features.coder import SparseCoder
from engine.features.corpus import token_windows
from engine.features.errors import FeatureError
from engine.features.streaming import activations_at
from engine.stats import StatsSummary, StreamingStats


@dataclass(frozen=True)
class FeatureHit:
    """One token where the feature fired, with the text around it."""

    activation: float
    token: str
    before: str
    after: str
    source: str  # "prompt" or "corpus"

    def to_dict(self) -> dict[str, Any]:
        return {"activation": self.activation, "token": self.token, "before": self.before, "after": self.after,
                "source": self.source}


@dataclass(frozen=True)
class TokenEffect:
    token: str
    token_id: int
    logit: float


@dataclass
class FeatureReport:
    feature: int
    address: str
    hits: list[FeatureHit]
    prompt_hits: list[FeatureHit]
    stats: StatsSummary  # over every token read, zeros included
    firing_rate: float
    tokens_read: int
    promoted: list[TokenEffect] = field(default_factory=list)
    suppressed: list[TokenEffect] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "address": self.address, "tokens_read": self.tokens_read,
                "firing_rate": self.firing_rate, "hits": [h.to_dict() for h in self.hits],
                "prompt_hits": [h.to_dict() for h in self.prompt_hits], "stats": self.stats.to_dict(),
                "promoted": [e.__dict__ for e in self.promoted], "suppressed": [e.__dict__ for e in self.suppressed]}


def _hits(loaded: Any, ids: Tensor, values: Tensor, k: int, context: int, source: str,
          heap: list[tuple[float, int, FeatureHit]], counter: list[int]) -> None:
    decode = loaded.tokenizer.decode
    row = ids[0].tolist()
    for position in torch.nonzero(values > 0).flatten().tolist():
        value = float(values[position])
        if len(heap) >= k and value <= heap[0][0]:
            continue
        hit = FeatureHit(value, decode(row[position:position + 1]), decode(row[max(0, position - context):position]),
                         decode(row[position + 1:position + 1 + context]), source)
        counter[0] += 1
        item = (value, counter[0], hit)
        if len(heap) < k:
            heapq.heappush(heap, item)
        else:
            heapq.heapreplace(heap, item)


def logit_effect(loaded: Any, direction: Tensor, k: int = 10) -> tuple[list[TokenEffect], list[TokenEffect]]:
    """Top promoted / suppressed tokens of a residual direction read through the unembedding.

    The final norm's weight is folded in first (as TransformerLens's ``fold_ln`` does), so this is
    the direct effect the direction has on the logits when it is added to the last residual.
    """
    head = loaded.model.get_output_embeddings()
    if head is None:
        raise FeatureError(f"'{loaded.name}' has no LM head, so a direction has no logit effect")
    vector = direction.to(head.weight.dtype).to(head.weight.device)
    final_norm = loaded.anatomy.by_address.get("final_norm")
    if final_norm is not None and final_norm.module_path:
        weight = getattr(loaded.model.get_submodule(final_norm.module_path), "weight", None)
        if weight is not None:
            vector = vector * weight.detach()
    with torch.inference_mode():
        logits = head.weight.detach() @ vector
    decode = loaded.tokenizer.decode
    top = logits.topk(k)
    bottom = (-logits).topk(k)
    promoted = [TokenEffect(decode([int(i)]), int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)]
    suppressed = [TokenEffect(decode([int(i)]), int(i), -float(v))
                  for v, i in zip(bottom.values, bottom.indices, strict=True)]
    return promoted, suppressed


def read_feature(loaded: Any, coder: SparseCoder, address: str, feature: int, texts: Sequence[str], *,
                 prompt: str | None = None, k: int = 10, context: int = 8, window: int = 64,
                 max_tokens: int = 4096, bins: int = 32) -> FeatureReport:
    """Top-activating tokens of ``feature`` over ``texts`` (and ``prompt``), its activation histogram
    over every token read, and the logit effect of its decoder row (SAEs writing to the residual)."""
    if not 0 <= feature < coder.d_sae:
        raise FeatureError(f"feature {feature} is out of range: this coder has features 0–{coder.d_sae - 1}")
    stats = StreamingStats(bins, f"{address}#f{feature}")
    heap: list[tuple[float, int, FeatureHit]] = []
    prompt_heap: list[tuple[float, int, FeatureHit]] = []
    counter = [0]
    fired = tokens = 0
    for ids in token_windows(loaded, texts, window, max_tokens=max_tokens):
        values = coder.encode(activations_at(loaded, ids, address))[0, :, feature]
        stats.update(values.unsqueeze(-1))
        fired += int((values > 0).sum())
        tokens += values.numel()
        _hits(loaded, ids, values, k, context, "corpus", heap, counter)
    if prompt:
        from engine.runner import encode

        ids = encode(loaded, prompt)
        values = coder.encode(activations_at(loaded, ids, address))[0, :, feature]
        _hits(loaded, ids, values, k, context, "prompt", prompt_heap, counter)
    promoted: list[TokenEffect] = []
    suppressed: list[TokenEffect] = []
    if coder.config.d_out == getattr(loaded.config, "hidden_size", None) and loaded.is_causal_lm:
        promoted, suppressed = logit_effect(loaded, coder.W_dec[feature])
    ordered = [item[2] for item in sorted(heap, key=lambda item: -item[0])]
    prompt_ordered = [item[2] for item in sorted(prompt_heap, key=lambda item: -item[0])]
    return FeatureReport(feature, address, ordered, prompt_ordered, stats.summary(),
                         fired / tokens if tokens else 0.0, tokens, promoted, suppressed)


@dataclass(frozen=True)
class ActiveFeature:
    feature: int
    activation: float  # the largest over the prompt's tokens
    token: str  # the token where it was largest


def top_features(loaded: Any, coder: SparseCoder, address: str, prompt: str, k: int = 10) -> list[ActiveFeature]:
    """The features most active anywhere in ``prompt`` (for the diagnostics features view)."""
    from engine.runner import encode

    ids = encode(loaded, prompt)
    acts = coder.encode(activations_at(loaded, ids, address))[0]
    best, where = acts.max(dim=0)
    order = best.topk(min(k, best.numel()))
    row = ids[0].tolist()
    return [ActiveFeature(int(f), float(v), loaded.tokenizer.decode([row[int(where[int(f)])]]))
            for v, f in zip(order.values, order.indices, strict=True) if float(v) > 0]


@dataclass
class FeatureSummary:
    """One of a prompt's top features with where else it fires most."""

    feature: int
    activation: float
    token: str
    top_tokens: list[FeatureHit]

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "activation": self.activation, "token": self.token,
                "top_tokens": [h.to_dict() for h in self.top_tokens]}


@dataclass
class FeaturesOverview:
    """What the diagnostics features view shows for one address and prompt."""

    address: str
    prompt: str
    coder: str
    features: list[FeatureSummary]
    tokens_read: int

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "prompt": self.prompt, "coder": self.coder, "tokens_read": self.tokens_read,
                "features": [f.to_dict() for f in self.features]}


def features_overview(loaded: Any, coder: SparseCoder, address: str, prompt: str, texts: Sequence[str], *,
                      k: int = 8, per_feature: int = 5, max_tokens: int = 1024, window: int = 64,
                      cancel: Any = None) -> FeaturesOverview:
    """The prompt's ``k`` most active features, each with its top ``per_feature`` tokens over ``texts``
    (one pass over the text for all of them)."""
    from engine.progress import check_cancel

    active = top_features(loaded, coder, address, prompt, k)
    chosen = [item.feature for item in active]
    heaps: dict[int, list[tuple[float, int, FeatureHit]]] = {f: [] for f in chosen}
    counter = [0]
    tokens = 0
    if chosen:
        index = torch.tensor(chosen)
        for ids in token_windows(loaded, texts, window, max_tokens=max_tokens):
            check_cancel(cancel, "reading features")
            values = coder.encode(activations_at(loaded, ids, address, cancel=cancel))[0].index_select(-1, index)
            tokens += values.shape[0]
            for column, feature in enumerate(chosen):
                _hits(loaded, ids, values[:, column], per_feature, 6, "corpus", heaps[feature], counter)
    summaries = [FeatureSummary(item.feature, item.activation, item.token,
                                [h[2] for h in sorted(heaps[item.feature], key=lambda h: -h[0])]) for item in active]
    return FeaturesOverview(address, prompt, coder.describe(), summaries, tokens)
