"""The build bench on Gemma-3-270M: one identity build (bit-exact, plain transformers loads it) and a
Gemma + SmolLM2 recipe refused before any weight is read, naming the first mismatch.

One build only: Gemma's 262k-entry embedding is about 670 MB in float32.
"""

from __future__ import annotations

import gc
import json
import mmap
import shutil

import pytest
import torch

pytestmark = pytest.mark.slow

IDENTITY = """\
recipe_version: 1
name: gemma3-identity
sources:
  g: gemma3-270m
embed: g
final_norm: g
lm_head: g
layers:
  - take: g.L0-17
"""

MIXED = """\
recipe_version: 1
name: gemma-smollm2-mix
sources:
  g: gemma3-270m
  smol: smollm2-135m
embed: g
final_norm: g
lm_head: g
layers:
  - take: g.L0-8
  - take: smol.L0-8
  - take: g.L9-17
"""


def test_identity_recipe_is_bit_exact_and_loads_in_plain_transformers(gemma, tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.build import build, load_recipe

    folder = build(load_recipe(IDENTITY), tmp_path / "gemma-identity").out_dir
    try:
        hybrid, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        assert type(hybrid).__name__ == "Gemma3ForCausalLM"
        assert hybrid.config.layer_types == gemma.config.layer_types
        assert hybrid.config.sliding_window == 512
        assert hybrid.model.embed_tokens.weight is hybrid.lm_head.weight  # tied, like the source
        ids = gemma.tokenizer("The opposite of hot is", return_tensors="pt").input_ids
        with torch.no_grad():
            assert torch.equal(hybrid(ids).logits, gemma.model(ids).logits)
        provenance = json.loads((folder / "provenance.json").read_text())
        assert provenance["tied_embeddings"] is True
        assert (folder / "tokenizer.json").is_file()
    finally:
        del hybrid
        gc.collect()
        shutil.rmtree(folder, ignore_errors=True)


def test_gemma_and_smollm2_layers_refused_before_any_weight_is_read(gemma, monkeypatch):
    import safetensors
    import safetensors.torch

    import engine.build.sources as sources_module
    from engine.build import load_recipe, validate_recipe
    from engine.bundled import bundled_path
    from engine.gguf_cache import converted_folder

    converted_folder(bundled_path("smollm2-135m"))  # the one-time conversions are not validation

    def refuse(*_args, **_kwargs):
        raise AssertionError("validation tried to read weights")

    for owner, name in ((mmap, "mmap"), (safetensors, "safe_open"), (safetensors.torch, "safe_open"),
                        (safetensors.torch, "load_file"), (sources_module, "read_tensor")):
        monkeypatch.setattr(owner, name, refuse)
    report = validate_recipe(load_recipe(MIXED))
    assert not report.ok and report.plan is None
    first = str(report.problems[0])
    assert "layers[1]" in first and "'smol' is a llama model but the base 'g' is gemma3_text" in first, first
