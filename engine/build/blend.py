"""Tensor blends: linear (weighted sum) and slerp (spherical interpolation); ops in ``engine.build.ops``.

Both compute in float32 (float64 for float64 inputs) and keep their endpoints exact: a term
with weight 0 contributes nothing (not ``0 * x``, which would turn ``-0.0`` into ``+0.0``
and ``inf`` into ``nan``), and slerp at ``t = 0`` or ``1`` returns its endpoint unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DOT_THRESHOLD = 0.9995  # nearly parallel: slerp's sin(theta) vanishes, so interpolate linearly


def _work_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def linear(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``sum(w_i * t_i)``; exact when one weight is 1 and the others 0."""
    if len(tensors) != len(weights) or not tensors:
        raise ValueError("linear blend needs one weight per tensor")
    work = _work_dtype(tensors)
    terms = [(t, float(w)) for t, w in zip(tensors, weights, strict=True) if float(w) != 0.0]
    if not terms:
        return torch.zeros_like(tensors[0], dtype=work)
    total = terms[0][0].to(work) * terms[0][1] if terms[0][1] != 1.0 else terms[0][0].to(work).clone()
    for tensor, weight in terms[1:]:
        total.add_(tensor.to(work), alpha=weight)
    return total


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation between ``a`` and ``b`` treated as flat vectors.

    The angle comes from the normalised directions; the magnitudes are interpolated along
    with them, as in mergekit's slerp, so ``t=0`` gives ``a`` and ``t=1`` gives ``b``.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {list(a.shape)} and {list(b.shape)}")
    work = _work_dtype((a, b))
    if t == 0.0:
        return a.to(work).clone()
    if t == 1.0:
        return b.to(work).clone()
    a_flat, b_flat = a.to(work).flatten(), b.to(work).flatten()
    a_dir = a_flat / a_flat.norm().clamp_min(1e-12)
    b_dir = b_flat / b_flat.norm().clamp_min(1e-12)
    dot = float((a_dir * b_dir).sum().clamp(-1.0, 1.0))
    if abs(dot) > DOT_THRESHOLD:
        return ((1.0 - t) * a_flat + t * b_flat).reshape(a.shape)
    theta = torch.arccos(torch.tensor(dot, dtype=torch.float64))
    sin_theta = torch.sin(theta)
    scale_a = float(torch.sin((1.0 - t) * theta) / sin_theta)
    scale_b = float(torch.sin(t * theta) / sin_theta)
    return (scale_a * a_flat + scale_b * b_flat).reshape(a.shape)


def source_dtype(result: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """Back to the sources' dtype when they share one (bf16 in, bf16 out, as mergekit does)."""
    dtypes = {t.dtype for t in tensors}
    return result.to(tensors[0].dtype) if len(dtypes) == 1 and result.dtype not in dtypes else result
