"""Streaming activation statistics: summaries computed inside the forward pass.

Statistics keep a fixed handful of numbers per address (moments, extrema, an exact histogram,
per-token L2 norm moments), never the activation itself, so statistics for every layer and
head of a model cost O(addresses × bins) memory whatever the prompt length. The work happens
in ``engine.stats_device``: every head of a layer's ``z`` in one batched op on the
``[rows, heads, d_head]`` view, accumulated on the model's device, read by the host once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from engine.interventions import Intervention
from engine.loading import LoadedModel
from engine.progress import Progress, scaled
from engine.stats_device import NEAR_ZERO, GroupStats, StatsSummary, Workspace, summaries_of

__all__ = ["NEAR_ZERO", "StatsSummary", "StreamingStats", "every_layer_and_head", "residual_norms",
           "stream_stats"]


class StreamingStats:
    """Accumulates statistics of tensors fed through ``update``; keeps O(bins) numbers.

    One group of ``engine.stats_device.GroupStats``, on the tensor's own device.
    """

    def __init__(self, bins: int = 64, address: str = "", near_zero: float = NEAR_ZERO) -> None:
        self.address = address
        self.group = GroupStats(1, bins, near_zero=near_zero)

    def update(self, tensor: Tensor) -> None:
        """Fold one activation ``[..., width]`` into the running statistics."""
        self.group.update(tensor.reshape(-1, 1, tensor.shape[-1]))

    def summary(self) -> StatsSummary:
        return self.group.summaries({0: self.address})[self.address]


def _id_batches(loaded: LoadedModel, prompt_or_ids: Any) -> list[Tensor]:
    """Accept a prompt, a list of prompts, or token ids ``[T]``/``[B, T]``; one batch per entry."""
    from engine.runner import encode

    if isinstance(prompt_or_ids, str):
        return [encode(loaded, prompt_or_ids)]
    if isinstance(prompt_or_ids, Tensor):
        ids = prompt_or_ids if prompt_or_ids.dim() == 2 else prompt_or_ids.unsqueeze(0)
        return [ids.to(loaded.input_device)]
    return [batch for item in prompt_or_ids for batch in _id_batches(loaded, item)]


def stream_stats(
    loaded: LoadedModel,
    prompt_or_ids: Any,
    addresses: Sequence[str],
    *,
    bins: int = 64,
    interventions: Sequence[Intervention] = (),
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> dict[str, StatsSummary]:
    """Statistics at each capture point, computed in the hooks while the model runs.

    ``prompt_or_ids`` is a prompt, a list of prompts, or token ids (``[B, T]`` runs as one
    batch). A head address (``L3.attn.h2.z``) gives that head's statistics. Keys are canonical.
    ``cancel`` stops the sweep at the next layer of the pass in flight.
    """
    from engine.run import run

    plan = _plan(loaded, addresses, bins)
    batches = _id_batches(loaded, prompt_or_ids)
    for index, ids in enumerate(batches):
        # statistics read no output: the pass ends after the last observed point (before the head)
        run(loaded, ids, interventions=interventions, observers=plan.observers, last_logits_only=True,
            stop_after_capture=True, cancel=cancel,
            progress=scaled(progress, index / len(batches), (index + 1) / len(batches)))
    found = summaries_of(plan.groups)  # every site's queue folded together, read in one copy
    return {address: found[address] for address in plan.order}


class _Plan:
    """Which accumulator each requested address reads, and one observer per site address.

    Head addresses of a layer's ``z`` share one accumulator over all its heads (one batched
    op per layer instead of one per head); every other address gets its own.
    """

    def __init__(self) -> None:
        self.order: dict[str, None] = {}  # canonical addresses, as asked (a dict keeps their order)
        self.groups: list[tuple[GroupStats, dict[int, str]]] = []
        self.by_site: dict[str, list[Callable[[Tensor], None]]] = {}

    def watch(self, address: str, group: GroupStats, groups: int) -> None:
        def observe(value: Tensor) -> None:
            group.update(value.reshape(-1, groups, value.shape[-1] // groups))

        self.by_site.setdefault(address, []).append(observe)

    @property
    def observers(self) -> dict[str, Callable[[Tensor], None]]:
        def chained(fns: list[Callable[[Tensor], None]]) -> Callable[[Tensor], None]:
            def observe(value: Tensor) -> None:
                for fn in fns:
                    fn(value)

            return fns[0] if len(fns) == 1 else observe

        return {address: chained(fns) for address, fns in self.by_site.items()}


def _plan(loaded: LoadedModel, addresses: Sequence[str], bins: int) -> _Plan:
    from engine.addresses import resolve_point

    plan = _Plan()
    # one set of scratch buffers for every site: the hooks of a forward run one after another
    workspace = Workspace()
    heads_of: dict[str, dict[int, str]] = {}
    geometry = loaded.anatomy.geometry
    for given in addresses:
        target = resolve_point(loaded.anatomy, given)
        address = target.address
        if address in plan.order:
            continue
        plan.order[address] = None
        head = target.head
        if head is not None and target.point == "z" and geometry is not None:
            attention = target.part.address.rpartition(".")[0]  # L3.attn.h2 -> L3.attn
            heads_of.setdefault(f"{attention}.z", {})[head] = address
            continue
        group = GroupStats(1, bins, workspace=workspace)
        plan.groups.append((group, {0: address}))
        plan.watch(address, group, 1)
    for site_address, names in heads_of.items():
        n_heads = geometry.n_heads if geometry is not None else 1
        group = GroupStats(n_heads, bins, workspace=workspace)
        plan.groups.append((group, names))
        plan.watch(site_address, group, n_heads)
    return plan


def residual_norms(loaded: LoadedModel, prompt: str, interventions: Sequence[Intervention] = (), *,
                   cancel: threading.Event | None = None, progress: Progress | None = None) -> list[float]:
    """Mean per-token L2 norm of each layer's output residual, L0 … L{n-1} (for sparklines)."""
    addresses = [f"L{i}.out" for i in range(loaded.anatomy.n_layers)]
    summaries = stream_stats(loaded, prompt, addresses, bins=2, interventions=interventions, cancel=cancel,
                             progress=progress)
    return [summaries[address].token_l2["mean"] for address in addresses]


def every_layer_and_head(loaded: LoadedModel) -> list[str]:
    """Addresses for a full sweep: each layer's output and each head's ``z``."""
    n_heads = loaded.anatomy.geometry.n_heads if loaded.anatomy.geometry else 0
    addresses = []
    for layer in range(loaded.anatomy.n_layers):
        addresses.append(f"L{layer}.out")
        addresses.extend(f"L{layer}.attn.h{head}.z" for head in range(n_heads))
    return addresses
