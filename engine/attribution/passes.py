"""Instrumented forward passes: record values and gradients at the graph's sites, apply patches.

The engine's usual runner holds ``torch.inference_mode``; attribution needs autograd, so it
hooks the same modules itself. A *key* names one site: ``("z", layer)``, ``("attn", layer)``,
``("mlp", layer)``, ``("resid", layer)``, the edge inputs ``("attn_in", layer)``,
``("mlp_in", layer)``, ``("logits_in", -1)`` and ``("embed", -1)``. Gradients at the edge
inputs are taken on a fresh copy of the pre-norm input, so they hold only the path through
that component (not the residual skip around it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from engine.attribution.nodes import Graph
from engine.errors import Cancelled
from engine.tensors import first_tensor, replace_first

Key = tuple[str, int]
SiteEdit = Callable[[Tensor], Tensor]
VALUE_ROLES = ("z", "attn", "mlp", "resid")
EDGE_ROLES = ("attn_in", "mlp_in")


@dataclass
class PassRecord:
    """What one instrumented pass saw: detached values and, after backward, gradients."""

    values: dict[Key, Tensor] = field(default_factory=dict)
    grads: dict[Key, Tensor] = field(default_factory=dict)
    tuple_outputs: set[Key] = field(default_factory=set)  # sites whose module returned a tuple


def site_paths(graph: Graph, *, edges: bool) -> dict[Key, tuple[str, str]]:
    """Every key this pass hooks → (module path, phase)."""
    sites: dict[Key, tuple[str, str]] = {("embed", -1): (graph.embed, "post")}
    for layer, s in enumerate(graph.layers):
        sites[("z", layer)] = (s.z, "pre")
        sites[("attn", layer)] = (s.attn_out, "post")
        sites[("mlp", layer)] = (s.mlp_out, "post")
        sites[("resid", layer)] = (s.resid_out, "post")
        if edges and s.attn_in and s.mlp_in:
            sites[("attn_in", layer)] = (s.attn_in, "pre")
            sites[("mlp_in", layer)] = (s.mlp_in, "pre")
    if edges and graph.logits_in:
        sites[("logits_in", -1)] = (graph.logits_in, "pre")
    return sites


@contextlib.contextmanager
def instrumented(
    model: nn.Module,
    graph: Graph,
    record: PassRecord | None = None,
    *,
    grads: bool = False,
    edges: bool = False,
    embed_override: Tensor | None = None,
    edits: Mapping[Key, Sequence[SiteEdit]] | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[None]:
    """Hook ``model`` for one pass: patch ``edits`` in, record values (and gradients with ``grads``).

    With ``grads`` the embedding output becomes a leaf that requires grad (or ``embed_override``
    replaces it), parameters stop requiring grad for the block (only activation gradients are
    needed, which halves the backward pass), and every recorded value gets a gradient hook.
    Everything is undone on exit, also when the pass raises.
    """
    edits = edits or {}
    sink = record if record is not None else PassRecord()  # gradients land here even when nobody keeps values
    handles: list = []
    frozen = [p for p in model.parameters() if p.requires_grad] if grads else []

    def keep(key: Key, value: Tensor) -> Tensor:
        for edit in edits.get(key, ()):
            value = edit(value)
        if key[0] in EDGE_ROLES or key[0] == "logits_in":
            if grads:  # a fresh node: its gradient is the path through this component only
                value = value.clone()
                value.register_hook(lambda g, k=key: sink.grads.__setitem__(k, g.detach()))
            return value
        if record is not None and key[0] != "embed":
            record.values[key] = value.detach()
        if grads and value.requires_grad:
            value.register_hook(lambda g, k=key: sink.grads.__setitem__(k, g.detach()))
        return value

    def post(key: Key):
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            value = first_tensor(output)
            if record is not None and not isinstance(output, Tensor):
                record.tuple_outputs.add(key)
            if key[0] == "embed":
                if record is not None:
                    record.values[key] = value.detach()
                if embed_override is not None:
                    value = embed_override
                elif grads:
                    value = value.detach().requires_grad_(True)
            return replace_first(output, keep(key, value))
        return hook

    def pre(key: Key):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            if args:
                return (keep(key, args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": keep(key, kwargs["hidden_states"])}
        return hook

    def check(module: nn.Module, args: tuple) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("attribution was cancelled; no partial report was kept")

    try:
        for param in frozen:
            param.requires_grad_(False)
        for key, (path, phase) in site_paths(graph, edges=edges).items():
            module = model.get_submodule(path)
            if phase == "pre":
                handles.append(module.register_forward_pre_hook(pre(key), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(post(key)))
        if cancel is not None:
            for layer in graph.layers:
                handles.append(model.get_submodule(layer.resid_out).register_forward_pre_hook(check))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for param in frozen:
            param.requires_grad_(True)


def row_patch(rows: slice, position: int | None, columns: slice | None, source: Tensor) -> SiteEdit:
    """Write ``source`` (the clean value, one row per pair) into ``rows`` at a position and columns."""
    where_pos = slice(None) if position is None else position
    where_cols = slice(None) if columns is None else columns
    patch = source[:, where_pos, where_cols]

    def edit(value: Tensor) -> Tensor:
        value = value.clone()
        value[rows, where_pos, where_cols] = patch.to(value.dtype)
        return value

    return edit


class _ReplayBlock(nn.Module):
    """Stands in for a block whose output is known: the corrupted run's, repeated for every row."""

    def __init__(self, output: Tensor, rows: int, as_tuple: bool, original: nn.Module) -> None:
        super().__init__()
        self.output, self.rows, self.as_tuple = output, rows, as_tuple
        if hasattr(original, "attention_type"):  # some models pick each block's mask by this attribute
            self.attention_type = original.attention_type

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> object:
        value = self.output.repeat(self.rows // self.output.shape[0], 1, 1)
        return (value,) if self.as_tuple else value


@contextlib.contextmanager
def replayed(model: nn.Module, graph: Graph, corrupt: PassRecord, start: int, rows: int) -> Iterator[None]:
    """Skip blocks ``0 … start-1`` by replaying the corrupted run's outputs (patches sit at ``start`` or later).

    Rows patched only at block ``start`` or later compute exactly what a full pass would, so an
    exact sweep pays only for the blocks it changes.
    """
    swaps = []
    try:
        for layer in range(start):
            path = graph.layers[layer].resid_out
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            original = getattr(parent, attr)
            swaps.append((parent, attr, original))
            key = ("resid", layer)
            setattr(parent, attr, _ReplayBlock(corrupt.values[key], rows, key in corrupt.tuple_outputs, original))
        yield
    finally:
        for parent, attr, original in reversed(swaps):
            setattr(parent, attr, original)


def no_grad_pass(model: nn.Module, graph: Graph, forward: Callable[[nn.Module, Tensor], Tensor], ids: Tensor,
                 **kwargs) -> tuple[Tensor, PassRecord]:
    """One pass without autograd: last-position logits and the recorded values."""
    record = PassRecord()
    with torch.no_grad(), instrumented(model, graph, record, **kwargs):
        logits = forward(model, ids)
    return logits, record
