"""Small tensor utilities shared by hooks, analyzers and the parts bin."""

from __future__ import annotations

import torch
from torch import Tensor


def split_heads(flat: Tensor, n_heads: int) -> Tensor:
    """``[..., n_heads * d_head]`` → ``[..., n_heads, d_head]`` (a view, no copy)."""
    return flat.unflatten(-1, (n_heads, flat.shape[-1] // n_heads))


def first_tensor(value: object) -> Tensor:
    """A module's main output: the tensor itself, or the first item of a tuple output."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise TypeError(f"expected a tensor or a tuple starting with one, got {type(value).__name__}")


def replace_first(value: object, tensor: Tensor) -> object:
    """``value`` with its main tensor swapped for ``tensor``, keeping any other outputs."""
    if isinstance(value, Tensor):
        return tensor
    if isinstance(value, tuple):
        return type(value)((tensor, *value[1:]))
    if isinstance(value, list):
        return [tensor, *value[1:]]
    raise TypeError(f"expected a tensor or a tuple starting with one, got {type(value).__name__}")


def position_mean(activation: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over batch and positions, broadcastable back onto ``activation``.

    With a ``[batch, positions]`` attention ``mask``, padded positions are left out: a
    left-padded batch's pad tokens would otherwise drag the mean toward their activations.
    """
    dims = tuple(range(activation.dim() - 1))
    if mask is None or tuple(mask.shape) != tuple(activation.shape[:2]) or bool(mask.all()):
        return activation.mean(dim=dims, keepdim=True)
    shape = (*mask.shape, *(1,) * (activation.dim() - 2))
    weight = mask.to(device=activation.device, dtype=activation.dtype).reshape(shape)
    weight = weight.expand(*activation.shape[:-1], 1)
    return (activation * weight).sum(dim=dims, keepdim=True) / weight.sum(dim=dims, keepdim=True)


def dtype_from_name(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
    return table[name]


# a row over this many times the median row norm is a massive-activation sink, not text: SmolLM2's
# first token (~160x from L11 up), Gemma 3's '’' (~9x); text rows stay under ~2x
SINK_RATIO = 4.0


def sink_rows(rows: Tensor, ratio: float = SINK_RATIO) -> Tensor:
    """True for the rows ``[n, d]`` whose norm is over ``ratio`` x the median row norm.

    A handful of such rows in held-out text decide R² (one Gemma row at 9x the median took
    SmolLM2 L14 -> Gemma L8 from 0.72 to 0.55) and pull a ridge map towards themselves.
    """
    norms = rows.float().norm(dim=-1)
    # the interpolated median: with two rows torch.median is the lower one, flagging any row 4x the other
    return norms > ratio * norms.quantile(0.5) if norms.numel() else norms > 0


def text_rows(rows: Tensor) -> Tensor:
    """The rows ``[pos, d]`` of one prompt that carry its text: position 0 (the attention sink of
    most decoders, identical across prompts that start alike) and any sink row left out. A mean
    over all positions lets the sink's huge norm leak into a difference of two prompt sets
    whenever their lengths differ (at SmolLM2 L14 such a DiffMean had cos 0.36 with this one)."""
    rows = rows[1:] if rows.shape[0] > 1 else rows
    keep = ~sink_rows(rows)
    return rows[keep] if bool(keep.any()) else rows


def placed_tensors(model: torch.nn.Module, key: str) -> tuple[Tensor, ...]:
    """The tensors a device map's ``key`` places: a module's, or one tensor (accelerate splits a module
    that holds tensors of its own into ``module.weight``-style keys)."""
    try:
        module = model.get_submodule(key) if key else model
    except AttributeError:
        owner, _, leaf = key.rpartition(".")
        return (getattr(model.get_submodule(owner) if owner else model, leaf),)
    return (*module.parameters(), *module.buffers())
