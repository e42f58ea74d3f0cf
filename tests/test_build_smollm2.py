"""The build bench on real SmolLM2-135M weights: identity, a frankenmerge evaluated next to
its source, a head transplant and a blend (the example recipes under ``recipes/``).

Each full build is made once per module and removed at the end.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.build import build, load_recipe
from engine.build.evaluate import evaluate
from engine.build.preview import preview
from engine.build.sources import file_digest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
PROMPT = "The quick brown fox jumps over the lazy dog because"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """recipe stem → built folder, each built on first use."""
    root = tmp_path_factory.mktemp("smollm2-builds")
    folders: dict[str, Path] = {}

    def get(stem: str) -> Path:
        if stem not in folders:
            folders[stem] = build(load_recipe(RECIPES / f"{stem}.yaml"), root / stem).out_dir
        return folders[stem]

    yield get
    shutil.rmtree(root, ignore_errors=True)


def source_folder() -> Path:
    from engine.bundled import bundled_path
    from engine.gguf_cache import converted_folder

    return converted_folder(bundled_path("smollm2-135m"))


def built_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def test_identity_law_on_smollm2(built, smollm2):
    from transformers import AutoModelForCausalLM

    folder = built("smollm2-identity")
    source, source_info = AutoModelForCausalLM.from_pretrained(source_folder(), output_loading_info=True)
    hybrid, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(hybrid(ids).logits, source(ids).logits)
    assert hybrid.model.embed_tokens.weight is hybrid.lm_head.weight  # still tied, like the source
    provenance = json.loads((folder / "provenance.json").read_text())
    assert len(provenance["tensors"]) == 272 and provenance["tied_embeddings"] is True
    assert provenance["sources"]["smol"]["weight_files"]["model.safetensors"] == file_digest(
        source_folder() / "model.safetensors")
    assert provenance["sources"]["smol"]["config_hash"] == smollm2.config_hash
    assert (folder / "tokenizer.json").is_file() and (folder / "recipe.yaml").is_file()
    del source, hybrid
    gc.collect()


def greedy_pair(model, ids: torch.Tensor, steps: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache, cached, tokens = out.cache, [out.logits[0, -1]], ids
        for _ in range(steps):
            next_id = cached[-1].argmax().view(1, 1)
            tokens = torch.cat([tokens, next_id], dim=1)
            out = model(input_ids=next_id, cache=cache, use_cache=True)
            cache = out.cache
            cached.append(out.logits[0, -1])
        full = model(input_ids=tokens, use_cache=False).logits[0, ids.shape[1] - 1:]
    return torch.stack(cached), full


def test_frankenmerge_runs_and_is_evaluated_next_to_source(built, smollm2, capsys, monkeypatch):
    from engine.build.evaluate import WINDOW
    from engine.loading import open_model
    from engine.sample_text import sample_text

    folder = built("smollm2-frankenmerge")
    hybrid = open_model(str(folder))
    assert hybrid.anatomy.n_layers == 38
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    live = preview(load_recipe(RECIPES / "smollm2-frankenmerge.yaml"), models={"smol": smollm2})
    with torch.no_grad():
        assert torch.allclose(live.model(ids).logits, hybrid.model(ids).logits, atol=1e-5)
    del live
    gc.collect()
    # The first three paragraphs (304 tokens) span two windows at the default window and stride, so
    # the carried-over context is still exercised at less than half the CPU of all 698 tokens.
    text = "\n\n".join(sample_text().split("\n\n")[:3])
    monkeypatch.setattr(importlib.import_module("engine.build.evaluate"), "sample_text", lambda: text)
    report = evaluate(hybrid, sources=[smollm2], prompts=("The capital of France is",), new_tokens=6)
    mine, source = report.rows
    with capsys.disabled():
        print(f"\n  perplexity on 304 tokens: hybrid {mine.perplexity:.2f} vs smollm2-135m {source.perplexity:.2f}; "
              f"bits/byte {mine.bits_per_byte:.3f} vs {source.bits_per_byte:.3f}; "
              f"top-1 agreement {mine.agreement['smollm2-135m']:.1%}")
    assert 10 < source.perplexity < 60  # SmolLM2-Instruct on plain English prose
    assert math.isfinite(mine.perplexity) and abs(mine.perplexity - source.perplexity) > 0.01 * source.perplexity
    content_tokens = len(smollm2.tokenizer(text, add_special_tokens=False).input_ids)
    assert content_tokens > WINDOW and report.text_bytes == len(text.encode("utf-8"))
    assert mine.tokens_scored == source.tokens_scored == content_tokens == 304  # each token once, after BOS
    nats_per_token = mine.bits_per_byte * report.text_bytes * math.log(2) / mine.tokens_scored
    assert math.isclose(math.exp(nats_per_token), mine.perplexity, rel_tol=1e-9)
    agreement = mine.agreement["smollm2-135m"]
    assert 0.05 < agreement < 0.999 and source.agreement[mine.name] == agreement
    assert source.continuations[0]["continuation"].strip().startswith("Paris")
    assert report.to_dict()["models"][1]["role"] == "source"
    # Cache law with layers 8-15 repeated, in float64 so float32 rounding (about 5e-5 over 38
    # layers, the same as the source's own) cannot hide or fake a cache-slot bug.
    hybrid.model.double()
    cached, full = greedy_pair(hybrid.model, ids)
    assert (cached - full).abs().max() <= 1e-5


def test_head_transplant_on_smollm2(built, smollm2):
    from transformers import AutoModelForCausalLM

    folder = built("smollm2-head-transplant")
    tensors = built_tensors(folder)
    source = {name: t for name, t in smollm2.model.state_dict().items() if name != "lm_head.weight"}
    assert tensors.keys() == source.keys()
    group_rows, kv_rows = slice(3 * 64, 6 * 64), slice(64, 128)  # heads 3-5 = KV group 1
    prefix = "model.layers.{}.self_attn.{}"
    changed = {name for name in tensors if not torch.equal(tensors[name], source[name])}
    assert changed == {prefix.format(10, p) + ".weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    for proj, rows in (("q_proj", group_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
        name = prefix.format(10, proj) + ".weight"
        assert torch.equal(tensors[name][rows], source[prefix.format(11, proj) + ".weight"][rows])
        keep = torch.ones(tensors[name].shape[0], dtype=torch.bool)
        keep[rows] = False
        assert torch.equal(tensors[name][keep], source[name][keep])
    o_name = prefix.format(10, "o_proj") + ".weight"
    assert torch.equal(tensors[o_name][:, group_rows], source[prefix.format(11, "o_proj") + ".weight"][:, group_rows])
    assert torch.equal(tensors[o_name][:, :192], source[o_name][:, :192])
    rows = json.loads((folder / "provenance.json").read_text())["tensors"]
    moved = {r["tensor"]: r["transplants"] for r in rows if r.get("transplants")}
    assert set(moved) == changed
    assert [t["head"] for t in moved[o_name]] == [3, 4, 5]
    assert moved[o_name][0]["source_tensor"].startswith("model.layers.11.")
    hybrid = AutoModelForCausalLM.from_pretrained(folder)
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = hybrid(ids).logits
    assert torch.isfinite(logits).all() and not torch.allclose(logits, smollm2.model(ids).logits, atol=1e-3)
    del hybrid
    gc.collect()


def test_blend_recipe_on_smollm2(built, smollm2):
    folder = built("smollm2-blend")
    tensors = built_tensors(folder)
    state = smollm2.model.state_dict()
    a, b = state["model.layers.12.self_attn.q_proj.weight"], state["model.layers.13.self_attn.q_proj.weight"]
    ua, ub = a.flatten() / a.norm(), b.flatten() / b.norm()
    theta = torch.arccos((ua @ ub).clamp(-1, 1))
    reference = (torch.sin(0.5 * theta) * a + torch.sin(0.5 * theta) * b) / torch.sin(theta)
    assert torch.allclose(tensors["model.layers.12.self_attn.q_proj.weight"], reference, atol=1e-6)
    up = "model.layers.20.mlp.up_proj.weight"
    assert torch.allclose(tensors[up], 0.75 * state[up] + 0.25 * state[up.replace(".20.", ".21.")], atol=1e-7)
    q20 = "model.layers.20.self_attn.q_proj.weight"
    assert torch.equal(tensors[q20], state[q20])
    rows = {r["tensor"]: r for r in json.loads((folder / "provenance.json").read_text())["tensors"]}
    assert rows[up]["op"] == "linear" and rows[up]["params"] == {"weights": [0.75, 0.25]}
    assert rows["model.layers.12.self_attn.q_proj.weight"]["op"] == "slerp"
