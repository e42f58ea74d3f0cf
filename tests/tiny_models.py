"""Tiny random-initialised models of every supported family, for architecture coverage."""

from __future__ import annotations

import torch
import transformers as T

COMMON = dict(vocab_size=128)


def tiny_configs() -> dict[str, object]:
    return {
        "gpt2": T.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0, **COMMON),
        "llama": T.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                               intermediate_size=96, **COMMON),
        "mistral": T.MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, **COMMON),
        "qwen2": T.Qwen2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                               intermediate_size=96, **COMMON),
        "gpt_neox": T.GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                                    bos_token_id=0, eos_token_id=0, **COMMON),
        "phi": T.PhiConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                           bos_token_id=0, eos_token_id=0, **COMMON),
        "phi3": T.Phi3Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=96, pad_token_id=0, bos_token_id=0, eos_token_id=0, **COMMON),
        "gemma": T.GemmaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                               head_dim=16, intermediate_size=96, **COMMON),
        # Gemma 3's shape: sliding-window and global layers alternating (the pattern survives a
        # change of layer count), q/k norms, sandwich norms, 2 KV heads for 4 query heads,
        # head_dim 32 wider than width / heads (64 / 4), scaled tied embeddings.
        "gemma3": T.Gemma3TextConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=32, intermediate_size=96, sliding_window=4,
                                     sliding_window_pattern=2, **COMMON),
        "bert": T.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                             **COMMON),
    }


def tiny_model(family: str, seed: int = 0):
    """A tiny model in eval mode, wrapped as a ``LoadedModel`` (no tokenizer)."""
    from engine.anatomy import build_anatomy
    from engine.loading import LoadedModel, _model_class

    config = tiny_configs()[family]
    torch.manual_seed(seed)
    model = _model_class(config).from_config(config).eval()
    return LoadedModel(
        name=f"tiny-{family}", source="memory", source_kind="memory", model=model, config=model.config,
        tokenizer=None, anatomy=build_anatomy(model, model.config), device="cpu", dtype="float32",
        structure_only=False,
    )


class CharTokenizer:
    """One token per character (code point mod the vocabulary): lets analyzers run on a tiny model."""

    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, text: str, return_tensors: str = "pt", add_special_tokens: bool = True):
        from types import SimpleNamespace

        ids = [3 + ord(char) % (COMMON["vocab_size"] - 3) for char in text]
        return SimpleNamespace(input_ids=torch.tensor([ids]))

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(32 + int(i) % 90) for i in ids)

    def get_vocab(self) -> dict[str, int]:
        return {f"t{i}": i for i in range(COMMON["vocab_size"])}
