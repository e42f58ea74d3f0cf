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
import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from engine.attribution.nodes import Graph
from engine.attribution.tasks import PairGroup
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
    edits: Mapping[Key, Sequence[SiteEdit]] | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[None]:
    """Hook ``model`` for one pass: patch ``edits`` in, record values (and gradients with ``grads``).

    With ``grads`` parameters stop requiring grad for the block (only activation gradients are
    needed, which halves the backward pass) and every recorded value gets a gradient hook. The
    first site in run order that nothing upstream feeds with a gradient becomes a leaf there, so
    the backward pass stops at it: no site needs the embedding's gradient, and below layer 0's
    ``z`` (or its attention input, with edges) nothing is scored. An ``("embed", -1)`` edit may
    replace the embedding output (integrated gradients puts its interpolation path there).
    Everything is undone on exit, also when the pass raises.
    """
    edits = edits or {}
    sink = record if record is not None else PassRecord()  # gradients land here even when nobody keeps values
    handles: list = []
    # every name of a tied weight: an offloaded model may hand each name its own object during the pass
    frozen = [name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad] if grads else []

    def keep(key: Key, value: Tensor) -> Tensor:
        for edit in edits.get(key, ()):
            value = edit(value)
        if key[0] == "embed":
            return value
        if key[0] in EDGE_ROLES or key[0] == "logits_in":
            if grads:  # a fresh node: its gradient is the path through this component only
                value = value.clone() if value.requires_grad else value.detach().requires_grad_(True)
                value.register_hook(lambda g, k=key: sink.grads.__setitem__(k, g.detach()))
            return value
        if record is not None:
            record.values[key] = value.detach()
        if grads:
            if not value.requires_grad:  # nothing upstream is scored: the backward pass may stop here
                value = value.detach().requires_grad_(True)
            value.register_hook(lambda g, k=key: sink.grads.__setitem__(k, g.detach()))
        return value

    def post(key: Key):
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            value = first_tensor(output)
            if record is not None and not isinstance(output, Tensor):
                record.tuple_outputs.add(key)
            if key[0] == "embed" and record is not None:
                record.values[key] = value.detach()
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
        for name in frozen:
            model.get_parameter(name).requires_grad_(False)
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
        # Looked up again by name: an offloaded model swaps its parameter objects at every call, and
        # the ones an inference-mode pass made are inference tensors, settable only inside that mode.
        for name in frozen:
            param = model.get_parameter(name)
            with torch.inference_mode(param.is_inference()):
                param.requires_grad_(True)


class _Readout(nn.Module):
    """The unembedding cut to a few vocabulary rows: the metric reads two logits, not all of them."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, hidden: Tensor) -> Tensor:
        return nn.functional.linear(hidden, self.weight, self.bias)


@contextlib.contextmanager
def answer_readout(model: nn.Module, graph: Graph, group: PairGroup) -> Iterator[PairGroup]:
    """Unembed only ``group``'s answer and wrong tokens for the block; yields the group renumbered to them.

    The full unembedding reads a ``vocab × d_model`` matrix forward and again backward, a fifth
    of a small model's weights, for two logits per row. Each kept logit is the same dot product
    (what the model does after the head, such as soft-capping, is elementwise), so the metric is
    unchanged. A head that is not a plain ``nn.Linear`` (quantised, wrapped) is left whole.
    """
    path = graph.unembed or ""
    head = model.get_submodule(path) if path else None
    if type(head) is not nn.Linear:
        yield group
        return
    tokens, inverse = torch.unique(torch.cat([group.answer_ids, group.wrong_ids]), return_inverse=True)
    bias = None if head.bias is None else head.bias.detach()[tokens]
    readout = _Readout(head.weight.detach()[tokens], bias)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    setattr(parent, attr, readout)
    try:
        yield dataclasses.replace(group, answer_ids=inverse[:group.size], wrong_ids=inverse[group.size:])
    finally:
        setattr(parent, attr, head)


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
