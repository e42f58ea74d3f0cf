"""One attention head as a module: its q/k/v rows, its KV group, and its o-projection columns.

It computes the head's z (the head's slice of the output projection's input) and that z's
write into the residual stream through the head's o columns, the same quantity as
``engine.heads.head_contributions`` reports for the head.

The head runs in the source model's layout (all heads, the others zeroed): attention and
einsum kernels pick their blocking by head count, so a lone head differs from the source in
the last bit, while the source layout reproduces its arithmetic exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.parts.errors import PartError
from engine.parts.positions import build_mask, rotary_embeddings


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-second, first), dim=-1)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    rot = cos.shape[-1]  # partial rotary (NeoX, Phi) turns only the first dims
    return torch.cat(((x[..., :rot] * cos) + (_rotate_half(x[..., :rot]) * sin), x[..., rot:]), dim=-1)


class HeadModule(nn.Module):
    """Runs one head standalone on the attention block's input hidden states."""

    def __init__(self, fragment: dict[str, Any], tensors: dict[str, Tensor], rotary: nn.Module | None,
                 norms: dict[str, nn.Module] | None = None, layer_type: str | None = None, config: Any = None):
        super().__init__()
        # Gemma 3: q/k RMSNorms over each head's dims, and a layer type choosing the rotary base
        # and the sliding-window mask.
        self.q_norm = (norms or {}).get("q_norm")
        self.k_norm = (norms or {}).get("k_norm")
        self.layer_type = layer_type
        self.config = config
        geometry = fragment["geometry"]
        self.head_dim = int(geometry["head_dim"])
        self.n_heads = int(geometry["heads"])
        self.n_kv_heads = int(geometry["kv_heads"])
        self.head = int(fragment["head"])
        self.kv_group = int(fragment["kv_group"])
        self.scaling = float(fragment["scaling"])
        self.causal = bool(fragment.get("causal"))
        conv1d = bool(fragment.get("conv1d"))
        self.rotary = rotary
        if "qkv.weight" in tensors:  # GPT-NeoX keeps each head's q, k, v rows together
            split = {}
            for suffix in ("weight", "bias"):
                if f"qkv.{suffix}" in tensors:
                    dim = 1 if (conv1d and suffix == "weight") else 0
                    for role, piece in zip("qkv", tensors[f"qkv.{suffix}"].chunk(3, dim=dim), strict=True):
                        split[f"{role}.{suffix}"] = piece
            tensors = {**tensors, **split}
        missing = [name for name in ("q.weight", "k.weight", "v.weight", "o.weight") if name not in tensors]
        if missing:
            raise PartError(f"head part lacks {', '.join(missing)}; re-extract it")
        for name in ("q", "k", "v", "o"):
            weight = tensors[f"{name}.weight"]
            # Every weight in Linear orientation ([out, in]); Conv1D stores the transpose.
            self.register_buffer(f"{name}_weight", (weight.t() if conv1d else weight).contiguous())
            bias = tensors.get(f"{name}.bias")
            self.register_buffer(f"{name}_bias", bias.contiguous() if bias is not None else None)

    def _in_layout(self, rows: Tensor, slot: int, n_slots: int) -> Tensor:
        """``[b, pos, d]`` → ``[b, n_slots, pos, d]`` with only ``slot`` filled."""
        out = rows.new_zeros(rows.shape[0], n_slots, rows.shape[1], self.head_dim)
        out[:, slot] = rows
        return out

    def z(self, hidden_states: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """The head's attention output before the output projection: ``[batch, pos, head_dim]``."""
        length = hidden_states.shape[1]

        def project(name: str) -> Tensor:
            return F.linear(hidden_states, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"))

        query = self._in_layout(project("q"), self.head, self.n_heads)
        key = self._in_layout(project("k"), self.kv_group, self.n_kv_heads)
        value = self._in_layout(project("v"), self.kv_group, self.n_kv_heads)
        if self.q_norm is not None and self.k_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        if position_ids is None:
            position_ids = torch.arange(length, device=hidden_states.device).unsqueeze(0)
        if self.rotary is not None:
            cos, sin = rotary_embeddings(self.rotary, hidden_states, position_ids, self.layer_type)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            query, key = _rotate(query, cos, sin), _rotate(key, cos, sin)
        kwargs: dict[str, Any] = {}
        if self.n_kv_heads != self.n_heads:
            if self.head_dim <= 256:  # as transformers' sdpa path does on CPU and CUDA
                kwargs["enable_gqa"] = True
            else:
                repeats = self.n_heads // self.n_kv_heads
                key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
        mask = None
        if self.layer_type == "sliding_attention" and self.causal and self.config is not None:
            mask = build_mask(self.config, True, hidden_states, None, position_ids, self.layer_type)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, scale=self.scaling,
                                             is_causal=mask is None and self.causal and length > 1, **kwargs)
        return out[:, self.head]

    def contribution(self, z: Tensor) -> Tensor:
        """What ``z`` (``[..., head_dim]``) writes into the residual stream through the head's o columns."""
        o_weight = self.get_buffer("o_weight")
        weight = o_weight.new_zeros(o_weight.shape[0], self.n_heads, self.head_dim)
        weight[:, self.head] = o_weight
        z_all = z.new_zeros(*z.shape[:-1], self.n_heads, self.head_dim)
        z_all[..., self.head, :] = z
        return torch.einsum("...hd,ohd->...ho", z_all, weight)[..., self.head, :]

    def forward(self, hidden_states: Tensor, position_ids: Tensor | None = None) -> Tensor:
        return self.contribution(self.z(hidden_states, position_ids))
