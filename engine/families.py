"""Per-architecture knowledge as data: one table per family, no per-model branches elsewhere.

Module paths in a table are relative to the *base* model (``model``, ``transformer``, ...)
or, for block parts, relative to one block. ``bases`` lists where the base sits inside the
top-level module (first match wins), so ``LlamaForCausalLM`` and ``LlamaModel`` share a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# How a fused qkv weight stacks its rows (or Conv1D columns).
QKV_CONCAT = "concat"  # [q heads | k heads | v heads]
QKV_PER_HEAD = "per_head"  # GPT-NeoX: per head [q | k | v], heads one after another


@dataclass(frozen=True)
class AttentionTable:
    module: str  # the attention module, relative to a block
    o: str  # output projection; its *input* is the per-head z
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused projection, when q/k/v are one module
    qkv_layout: str = QKV_CONCAT
    conv1d: bool = False  # GPT-2 Conv1D stores weights transposed ([in, out])
    pattern_module: str | None = None  # module whose output[1] holds attention weights (eager)
    out_module: str | None = None  # module whose output is the attention's residual contribution
    q_norm: str | None = None  # per-head RMSNorm on queries (Gemma 3, Qwen 3), relative to a block
    k_norm: str | None = None


@dataclass(frozen=True)
class MLPTable:
    down: str  # relative to a block; its input is the hidden (neuron) activation
    module: str | None = None  # the MLP module when the family has one
    up: str | None = None
    gate: str | None = None
    gate_up: str | None = None  # fused gate+up (Phi-3)
    out_module: str | None = None  # defaults to ``module``
    conv1d: bool = False


@dataclass(frozen=True)
class FamilyTable:
    name: str
    model_types: tuple[str, ...]
    bases: tuple[str, ...]
    blocks: str
    embed: str
    attention: AttentionTable
    mlp: MLPTable
    norms: dict[str, str] = field(default_factory=dict)  # address name -> path in block
    final_norm: str | None = None
    lm_head: str | None = "lm_head"  # relative to the top-level module
    extra_embeds: dict[str, str] = field(default_factory=dict)  # e.g. pos_embed
    norm_kind: str = "layernorm"  # or "rmsnorm"
    layout: str = "pre_norm"  # pre_norm | post_norm | parallel | sandwich (pre- and post-norms)
    rotary: bool = False
    has_rotary_module: str | None = None  # base-relative path of the shared rotary module


LLAMA_LIKE_ATTENTION = AttentionTable(
    module="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    o="self_attn.o_proj", pattern_module="self_attn", out_module="self_attn",
)
GATED_MLP = MLPTable(
    module="mlp", gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj",
)
PRE_NORMS = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm"}


def _llama_like(name: str, model_types: tuple[str, ...]) -> FamilyTable:
    return FamilyTable(
        name=name, model_types=model_types, bases=("model", ""), blocks="layers",
        embed="embed_tokens", attention=LLAMA_LIKE_ATTENTION, mlp=GATED_MLP, norms=PRE_NORMS,
        final_norm="norm", norm_kind="rmsnorm", rotary=True, has_rotary_module="rotary_emb",
    )


# Gemma 2 and 3 wrap both attention and MLP in a norm before and after (the "sandwich"):
# the residual gets post_norm(block(pre_norm(x))). The heads are still cut at o_proj's input;
# what they write through o_proj sums to the attention output *before* its post-norm.
SANDWICH_NORMS = {
    "norm1": "input_layernorm", "attn_post_norm": "post_attention_layernorm",
    "norm2": "pre_feedforward_layernorm", "mlp_post_norm": "post_feedforward_layernorm",
}


def _gemma_sandwich(name: str, model_types: tuple[str, ...], qk_norm: bool) -> FamilyTable:
    attention = AttentionTable(
        module="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
        o="self_attn.o_proj", pattern_module="self_attn", out_module="self_attn",
        q_norm="self_attn.q_norm" if qk_norm else None, k_norm="self_attn.k_norm" if qk_norm else None,
    )
    return FamilyTable(
        name=name, model_types=model_types, bases=("model", ""), blocks="layers",
        embed="embed_tokens", attention=attention, mlp=GATED_MLP, norms=SANDWICH_NORMS,
        final_norm="norm", norm_kind="rmsnorm", layout="sandwich", rotary=True,
        has_rotary_module="rotary_emb",
    )


FAMILIES: tuple[FamilyTable, ...] = (
    _llama_like("llama", ("llama", "mistral", "qwen2", "qwen3", "smollm3")),
    _llama_like("gemma", ("gemma",)),
    _gemma_sandwich("gemma2", ("gemma2",), qk_norm=False),
    _gemma_sandwich("gemma3", ("gemma3_text",), qk_norm=True),
    FamilyTable(
        name="gpt2", model_types=("gpt2",), bases=("transformer", ""), blocks="h", embed="wte",
        extra_embeds={"pos_embed": "wpe"},
        attention=AttentionTable(
            module="attn", qkv="attn.c_attn", o="attn.c_proj", conv1d=True,
            pattern_module="attn", out_module="attn",
        ),
        mlp=MLPTable(module="mlp", up="mlp.c_fc", down="mlp.c_proj", conv1d=True),
        norms={"norm1": "ln_1", "norm2": "ln_2"}, final_norm="ln_f",
    ),
    FamilyTable(
        name="gpt_neox", model_types=("gpt_neox",), bases=("gpt_neox", ""), blocks="layers",
        embed="embed_in",
        attention=AttentionTable(
            module="attention", qkv="attention.query_key_value", qkv_layout=QKV_PER_HEAD,
            o="attention.dense", pattern_module="attention", out_module="attention",
        ),
        mlp=MLPTable(module="mlp", up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h"),
        norms={"norm1": "input_layernorm", "norm2": "post_attention_layernorm"},
        final_norm="final_layer_norm", rotary=True, has_rotary_module="rotary_emb",
    ),
    FamilyTable(
        name="phi", model_types=("phi",), bases=("model", ""), blocks="layers",
        embed="embed_tokens",
        attention=AttentionTable(
            module="self_attn", q="self_attn.q_proj", k="self_attn.k_proj",
            v="self_attn.v_proj", o="self_attn.dense", pattern_module="self_attn",
            out_module="self_attn",
        ),
        mlp=MLPTable(module="mlp", up="mlp.fc1", down="mlp.fc2"),
        norms={"norm1": "input_layernorm"}, final_norm="final_layernorm", layout="parallel",
        rotary=True, has_rotary_module="rotary_emb",
    ),
    FamilyTable(
        name="phi3", model_types=("phi3",), bases=("model", ""), blocks="layers",
        embed="embed_tokens",
        attention=AttentionTable(
            module="self_attn", qkv="self_attn.qkv_proj", o="self_attn.o_proj",
            pattern_module="self_attn", out_module="self_attn",
        ),
        mlp=MLPTable(module="mlp", gate_up="mlp.gate_up_proj", down="mlp.down_proj"),
        norms=PRE_NORMS, final_norm="norm", norm_kind="rmsnorm", rotary=True,
        has_rotary_module="rotary_emb",
    ),
    FamilyTable(
        name="bert", model_types=("bert",), bases=("bert", ""), blocks="encoder.layer",
        embed="embeddings.word_embeddings",
        extra_embeds={
            "pos_embed": "embeddings.position_embeddings",
            "type_embed": "embeddings.token_type_embeddings",
            "embed_norm": "embeddings.LayerNorm",
        },
        attention=AttentionTable(
            module="attention", q="attention.self.query", k="attention.self.key",
            v="attention.self.value", o="attention.output.dense",
            pattern_module="attention.self", out_module="attention.output.dense",
        ),
        mlp=MLPTable(up="intermediate.dense", down="output.dense", out_module="output.dense"),
        norms={"norm1": "attention.output.LayerNorm", "norm2": "output.LayerNorm"},
        final_norm=None, lm_head=None, layout="post_norm",
    ),
)

FAMILY_BY_MODEL_TYPE: dict[str, FamilyTable] = {
    model_type: table for table in FAMILIES for model_type in table.model_types
}


def family_for(model_type: str | None) -> FamilyTable | None:
    """The family table for a config's ``model_type``; None means the generic tree."""
    return FAMILY_BY_MODEL_TYPE.get(model_type or "")


@dataclass(frozen=True)
class HeadGeometry:
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_group(self, head: int) -> int:
        """Query head ``head`` reads keys and values of this KV head (GQA grouping)."""
        return head // self.group_size


def head_geometry(config: Any) -> HeadGeometry:
    """Head counts from any transformers config (attribute maps make the names uniform)."""
    n_heads = int(config.num_attention_heads)
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    hidden = int(config.hidden_size)
    head_dim = getattr(config, "head_dim", None) or hidden // n_heads
    return HeadGeometry(n_heads=n_heads, n_kv_heads=int(n_kv), head_dim=int(head_dim))


def head_row_ranges(table: AttentionTable, geometry: HeadGeometry, head: int) -> dict[str, list[tuple[int, int]]]:
    """Rows (output features) of each input projection that belong to query head ``head``.

    Keys are ``q``/``k``/``v`` for separate projections, ``qkv`` for a fused one (q rows,
    then the KV group's k and v rows). ``o`` is the input-feature (column) range of the
    output projection. Conv1D weights are transposed; callers slice the other dimension.
    """
    d = geometry.head_dim
    group = geometry.kv_group(head)
    q_rows = (head * d, (head + 1) * d)
    kv_rows = (group * d, (group + 1) * d)
    ranges: dict[str, list[tuple[int, int]]] = {"o": [q_rows]}
    if table.qkv is None:
        ranges.update(q=[q_rows], k=[kv_rows], v=[kv_rows])
    elif table.qkv_layout == QKV_PER_HEAD:
        start = head * 3 * d
        ranges["qkv"] = [(start, start + 3 * d)]
    else:
        q_total = geometry.n_heads * d
        kv_total = geometry.n_kv_heads * d
        ranges["qkv"] = [
            q_rows,
            (q_total + kv_rows[0], q_total + kv_rows[1]),
            (q_total + kv_total + kv_rows[0], q_total + kv_total + kv_rows[1]),
        ]
    return ranges
