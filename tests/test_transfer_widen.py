"""The oracle widening op: a wider Llama with the narrow one's logits, and its exact residual map."""

from __future__ import annotations

import pytest
import torch
import transformers

from engine.transfer.widen import WidenError, load_widened, random_orthogonal, save_widened, widen_llama


def _tiny_llama(tied: bool = True) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                                      max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights, so folding them is actually exercised
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1 + 0.5 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_widens_without_changing_logits(tied):
    narrow = _tiny_llama(tied)
    widened = widen_llama(narrow, 80, seed=3)
    wide = load_widened(widened)
    assert wide.config.hidden_size == 80 and wide.model.embed_tokens.weight.shape == (97, 80)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_a = narrow(ids, output_hidden_states=True)
        out_b = wide(ids, output_hidden_states=True)
    assert (out_a.logits - out_b.logits).abs().max() <= 1e-4
    for h_a, h_b in zip(out_a.hidden_states[:-1], out_b.hidden_states[:-1], strict=True):  # the last one is post-norm
        assert torch.allclose(widened.known_map.apply(h_a), h_b, atol=1e-5)
        assert torch.allclose(widened.known_map.inverse(h_b), h_a, atol=1e-5)
    assert torch.all(out_b.hidden_states[1][..., 48:] == 0)


def test_rotation_is_orthogonal_seeded_and_not_trivial():
    q = random_orthogonal(16, 5)
    assert torch.allclose(q @ q.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert torch.equal(q, random_orthogonal(16, 5)) and not torch.equal(q, random_orthogonal(16, 6))
    assert (q - torch.eye(16, dtype=torch.float64)).abs().max() > 0.1


def test_widen_refuses_narrower_target_and_non_llama():
    with pytest.raises(WidenError, match="narrower"):
        widen_llama(_tiny_llama(), 32)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(WidenError, match="Llama"):
        widen_llama(gpt2, 64)


def test_saved_folder_loads_with_plain_transformers(tmp_path):
    narrow = _tiny_llama()
    widened = widen_llama(narrow, 64, seed=0)
    folder = save_widened(widened, tmp_path / "wide")
    wide = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    ids = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        assert (narrow(ids).logits - wide(ids).logits).abs().max() <= 1e-4


@pytest.mark.slow
def test_smollm2_widened_to_960_gives_the_same_logits(smollm2):
    widened = widen_llama(smollm2.model, 960, seed=0)
    wide = load_widened(widened)
    ids = smollm2.tokenizer("The garage widens a model without changing what it computes.",
                            return_tensors="pt").input_ids
    with torch.no_grad():
        logits_a = smollm2.model(ids).logits.float()
        logits_b = wide(ids).logits.float()
    assert wide.config.hidden_size == 960 and wide.config.num_hidden_layers == 30
    assert (logits_a - logits_b).abs().max() <= 1e-4
