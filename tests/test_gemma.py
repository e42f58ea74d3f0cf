"""Gemma-3-270M on real weights: the bay, capture parity, per-head writes, a head ablation against a
hand-written hook, the logit lens through the final norm (and soft-capping), the next token.

Gemma differs from SmolLM2 in every way that breaks naive tools: head_dim 256 is wider than
width / heads (640 / 4), one KV head serves four query heads, q/k norms, sliding-window layers,
a post-norm after attention and after the MLP, scaled and tied embeddings, 262k vocabulary.
"""

from __future__ import annotations

import pytest
import torch

from engine.heads import head_contributions, output_projection
from engine.hooks import hooked

pytestmark = pytest.mark.slow
PROMPT = "The quick brown fox jumps over the lazy dog because it wants to"


def _ids(loaded, prompt=PROMPT):
    return loaded.tokenizer(prompt, return_tensors="pt").input_ids


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_bay_shows_gemma3_geometry_kv_groups_and_sliding_layers(gemma):
    anatomy = gemma.anatomy
    geometry = anatomy.geometry
    assert (anatomy.family.name, anatomy.n_layers, geometry.n_heads, geometry.n_kv_heads, geometry.head_dim) == (
        "gemma3", 18, 4, 1, 256)
    assert anatomy.root.info["hidden_size"] == 640 and anatomy.root.info["layout"] == "sandwich"
    assert anatomy.part("L0.attn.q").shapes["weight"] == [1024, 640]  # 4 × 256 wider than the 640 width
    assert [anatomy.part(f"L3.attn.h{h}").info["kv_group"] for h in range(4)] == [0, 0, 0, 0]
    kinds = [anatomy.part(f"L{i}").info["attention"] for i in range(18)]
    assert [i for i, kind in enumerate(kinds) if kind == "global"] == [5, 11, 17]
    assert anatomy.part("L0.attn").info["window"] == gemma.config.sliding_window == 512
    assert anatomy.part("L0.attn.q_norm").shapes["weight"] == [256]
    for name in ("norm1", "attn_post_norm", "norm2", "mlp_post_norm"):
        assert anatomy.part(f"L4.{name}").shapes["weight"] == [640]
    assert anatomy.part("lm_head").info["tied"]
    assert anatomy.root.params == sum(p.numel() for p in gemma.model.parameters())
    assert anatomy.part("embed").params == 262_144 * 640


def test_sliding_window_label_in_the_bay_tree(gemma):
    from garage_tui.widgets.part_tree import part_label

    assert "sliding 512" in part_label(gemma.anatomy.part("L0"), []).plain
    assert "sliding" not in part_label(gemma.anatomy.part("L5"), []).plain
    assert part_label(gemma.anatomy.part("L0.attn.h2"), []).plain.startswith("h2 kv0")


def test_layer_outputs_equal_output_hidden_states(gemma):
    ids = _ids(gemma)
    n = gemma.anatomy.n_layers
    with torch.no_grad():
        reference = gemma.model(input_ids=ids, output_hidden_states=True).hidden_states
        with hooked(gemma.model, gemma.anatomy, capture=[f"L{i}.out" for i in range(n)] + ["embed.out"]) as tap:
            gemma.model(input_ids=ids)
    assert len(reference) == n + 1
    # embed.out is after Gemma's sqrt(width) embedding scale, as hidden_states[0] is
    assert _relative(tap["embed.out"], reference[0]) <= 1e-5
    for i in range(n - 1):
        assert _relative(tap[f"L{i}.out"], reference[i + 1]) <= 1e-5, f"L{i}.out"
    # transformers puts the final norm on the last hidden state; L17.out is the raw layer output
    final_norm = gemma.model.get_submodule(gemma.anatomy.part("final_norm").module_path)
    with torch.no_grad():
        assert _relative(final_norm(tap[f"L{n - 1}.out"]), reference[n]) <= 1e-5
    assert _relative(tap[f"L{n - 1}.out"], reference[n]) > 1e-2  # not the same tensor: the norm matters


@pytest.mark.parametrize("layer", [3, 5])  # a sliding-window layer and a global one
def test_head_writes_through_o_proj_sum_to_attention_output(gemma, layer):
    ids = _ids(gemma)
    points = [f"L{layer}.attn.z", f"L{layer}.attn.out", f"L{layer}.out", f"L{layer}.in"]
    with torch.no_grad(), hooked(gemma.model, gemma.anatomy, capture=points) as tap:
        gemma.model(input_ids=ids)
        per_head = head_contributions(gemma.model, gemma.anatomy, layer, tap[f"L{layer}.attn.z"])
        weight, bias = output_projection(gemma.model, gemma.anatomy, layer)
    assert bias is None and weight.shape == (640, 1024) and tap[f"L{layer}.attn.z"].shape[-1] == 1024
    total = per_head.sum(dim=-2)
    assert per_head.shape[-2:] == (4, 640)
    assert _relative(total, tap[f"L{layer}.attn.out"]) <= 1e-5
    assert _relative(per_head[..., 1:, :].sum(-2), total) > 1e-3  # each head matters
    # attn.out is before the post-attention norm: the residual gets the normed write
    block = gemma.model.model.layers[layer]
    with torch.no_grad():
        after_attention = tap[f"L{layer}.in"] + block.post_attention_layernorm(total)
        mlp_write = block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(after_attention)))
    assert _relative(after_attention + mlp_write, tap[f"L{layer}.out"]) <= 1e-5


def test_head_ablation_equals_a_hand_written_o_proj_hook(gemma):
    from engine.interventions import ablate
    from engine.run import run

    ids = _ids(gemma)
    layer, head, d = 3, 2, 256
    o_proj = gemma.model.model.layers[layer].self_attn.o_proj

    def zero_head(_module, args):
        z = args[0].clone()
        z[..., head * d:(head + 1) * d] = 0
        return (z,)

    handle = o_proj.register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            reference = gemma.model(input_ids=ids).logits
    finally:
        handle.remove()
    with torch.no_grad():
        clean = gemma.model(input_ids=ids).logits
    ablated = run(gemma, ids, interventions=[ablate(f"L{layer}.attn.h{head}")]).logits
    assert torch.equal(ablated, reference)
    assert (ablated - clean).abs().max() > 1e-2


def test_logit_lens_reads_through_the_final_norm_and_is_exact_at_the_last_layer(gemma):
    from engine.analyzers.lens import logit_lens, read_residual
    from engine.run import run

    assert gemma.config.final_logit_softcapping is None  # Gemma 3 has none; the tiny Gemma 2 below has
    report = logit_lens(gemma, "The opposite of hot is", top_k=3)
    assert report.final_token == " cold"
    assert report.layers[-1].address == "L17.out" and report.layers[-1].final_token_rank == 0
    ids = _ids(gemma, "The opposite of hot is")
    output = run(gemma, ids, capture=["L17.out"])
    lens_logits = read_residual(gemma, output.tap["L17.out"])
    assert _relative(lens_logits, output.logits) <= 1e-5


def test_logit_lens_applies_final_soft_capping_when_the_config_has_it():
    import transformers as T

    from engine.analyzers.lens import read_residual
    from engine.anatomy import build_anatomy
    from engine.loading import LoadedModel

    config = T.Gemma2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                            head_dim=32, intermediate_size=96, vocab_size=128, final_logit_softcapping=0.5)
    torch.manual_seed(0)
    model = T.Gemma2ForCausalLM(config).eval()
    anatomy = build_anatomy(model, config)
    assert anatomy.family.name == "gemma2" and anatomy.part("L1.attn").info["attention"] == "global"
    assert anatomy.part("L0.attn").info == {**anatomy.part("L0.attn").info, "attention": "sliding"}
    loaded = LoadedModel("tiny-gemma2", "memory", "folder", model, config, None, anatomy, "cpu", "float32", False)
    ids = torch.tensor([[1, 7, 9, 3]])
    with torch.no_grad(), hooked(model, anatomy, capture=["L1.out"]) as tap:
        logits = model(input_ids=ids).logits
    assert logits.abs().max() <= 0.5  # the cap is tight enough to matter
    assert _relative(read_residual(loaded, tap["L1.out"]), logits) <= 1e-5


def test_the_opposite_of_hot_is_cold(gemma):
    from engine.runner import predict

    result = predict(gemma, "The opposite of hot is", top_k=3)
    assert result.top[0].text == " cold"
    assert result.top[0].prob > 0.3


def test_cached_tokenizer_encodes_like_the_gemma_tokenizer_class(gemma):
    import transformers

    assert type(gemma.tokenizer).__name__ != "GemmaTokenizer"  # the fast path: the saved pipeline as is
    original = transformers.GemmaTokenizer.from_pretrained(gemma.weights_path)
    for text in ("The opposite of hot is", "  tabs\tand\nnewlines 1234 émigré", "日本語のテキスト <b>bold</b>"):
        assert gemma.tokenizer(text).input_ids == original(text).input_ids
        ids = original(text).input_ids
        assert gemma.tokenizer.decode(ids) == original.decode(ids)


def test_a_second_open_from_the_cache_gives_the_same_logits_and_tokenizer(gemma):
    import transformers

    from engine.loading import open_model

    again = open_model("gemma3-270m")  # the fixture's open filled the cache: this one reads it
    assert again.weights_path == gemma.weights_path
    ids = _ids(gemma, "The opposite of hot is")
    assert again.tokenizer("The opposite of hot is", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(again.model(input_ids=ids).logits, gemma.model(input_ids=ids).logits)
    # The cached entry's tokenizer skips transformers' Python parse of tokenizer.json; the plain
    # load of the same folder must give the same added tokens and special tokens.
    plain = transformers.AutoTokenizer.from_pretrained(gemma.weights_path)
    assert len(again.tokenizer.added_tokens_decoder) == 6384
    assert {i: repr(t) for i, t in again.tokenizer.added_tokens_decoder.items()} == {
        i: repr(t) for i, t in plain.added_tokens_decoder.items()}
    assert again.tokenizer.special_tokens_map == plain.special_tokens_map
    assert again.tokenizer.all_special_ids == plain.all_special_ids
    text = "<start_of_turn>user\n  tabs\tand émigré 日本語<end_of_turn>"
    assert again.tokenizer(text).input_ids == plain(text).input_ids
