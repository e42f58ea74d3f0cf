"""Per-head arithmetic at the output projection, where heads are separable."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.anatomy import Anatomy
from engine.errors import AddressError
from engine.tensors import split_heads


def output_projection(model: nn.Module, anatomy: Anatomy, layer: int) -> tuple[Tensor, Tensor | None]:
    """The attention output projection of ``layer`` as ``(W [hidden, heads*d_head], bias)``.

    GPT-2's Conv1D stores the transpose; this always returns the Linear orientation.
    """
    if anatomy.family is None:
        raise AddressError("this model has no family table, so its heads cannot be addressed")
    table = anatomy.family.attention
    module = model.get_submodule(anatomy.module_path_of(layer, table.o))
    weight: Tensor = module.get_parameter("weight")
    return (weight.t() if table.conv1d else weight), getattr(module, "bias", None)


def head_contributions(model: nn.Module, anatomy: Anatomy, layer: int, z: Tensor) -> Tensor:
    """What each head writes through the output projection: ``[..., heads, hidden]``.

    ``z`` is the projection's input (the ``L{layer}.attn.z`` capture). Summed over heads and
    plus the bias, this is exactly the attention block's output.
    """
    weight, _ = output_projection(model, anatomy, layer)
    if anatomy.geometry is None:
        raise AddressError("this model has no head geometry, so its heads cannot be addressed")
    n_heads = anatomy.geometry.n_heads
    per_head_weight = split_heads(weight, n_heads)  # [hidden, heads, d_head]
    return torch.einsum("...hd,ohd->...ho", split_heads(z, n_heads), per_head_weight)
