"""Composition laws of the build bench on tiny random models of every supported family.

Each family's source is saved with ``save_pretrained`` into a temp folder and used as a
recipe source; built folders are loaded back with plain ``transformers``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from engine.build import build, load_recipe, validate_recipe
from engine.build.preview import preview, set_layer_index
from engine.families import head_geometry
from engine.interventions import ablate
from engine.loading import _model_class, open_model
from engine.runner import forward
from tests.tiny_models import tiny_configs

FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "gpt_neox", "phi", "phi3", "gemma", "gemma3", "bert"]
CAUSAL = [f for f in FAMILIES if f != "bert"]
# The quick lane keeps one GQA decoder, one fused-qkv decoder and the encoder for every law;
# the other families run in the full suite (the quick lane has a 2-minute budget on 2 cores).
QUICK_FAMILIES = ("llama", "gpt2", "bert")


def lane(families: list[str]) -> list:
    return [family if family in QUICK_FAMILIES else pytest.param(family, marks=pytest.mark.slow)
            for family in families]
IDS = torch.tensor([[3, 17, 42, 9, 88, 5, 61, 23, 7, 100]])


def tiny_config(family: str, layers: int = 4, **changes):
    """A tiny config of ``family`` with ``layers`` blocks (per-layer arrays rebuilt)."""
    base = tiny_configs()[family]
    doc = base.to_dict()
    doc.pop("layer_types", None)
    doc.update(changes)
    doc["num_hidden_layers"] = layers
    if family == "gpt2":
        doc["n_layer"] = layers
    return type(base).from_dict(doc)


def save_tiny(folder: Path, family: str, seed: int, layers: int = 4, **changes) -> Path:
    config = tiny_config(family, layers, **changes)
    torch.manual_seed(seed)
    model = _model_class(config).from_config(config).eval()
    model.save_pretrained(folder)
    return folder


def load_plain(folder: Path):
    """The folder loaded with plain transformers; fails on missing or unexpected keys."""
    config = transformers.AutoConfig.from_pretrained(folder)
    model, info = _model_class(config).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def outputs(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def recipe_text(sources: dict[str, Path], layers: list, base: str = "a", **extra) -> str:
    doc = {"recipe_version": 1, "name": extra.pop("name", "tiny"), "sources": {k: str(v) for k, v in sources.items()},
           "embed": base, "final_norm": base, "lm_head": base, "layers": layers, **extra}
    return json.dumps(doc)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Per family: two differently seeded 4-layer sources A and B."""
    root = tmp_path_factory.mktemp("tiny-sources")
    return {family: (save_tiny(root / f"{family}-a", family, 0), save_tiny(root / f"{family}-b", family, 1))
            for family in FAMILIES}


@pytest.mark.parametrize("family", lane(FAMILIES))
def test_identity_law_every_family(pairs, tmp_path, family):
    a, _ = pairs[family]
    result = build(load_recipe(recipe_text({"a": a}, [{"take": "a.L0-3"}])), tmp_path / "out")
    built, source = load_plain(result.out_dir), load_plain(a)
    assert torch.equal(outputs(built), outputs(source))
    built_state, source_state = built.state_dict(), source.state_dict()
    assert built_state.keys() == source_state.keys()
    assert all(torch.equal(built_state[k], source_state[k]) for k in built_state)
    provenance = json.loads((result.out_dir / "provenance.json").read_text())
    assert len(provenance["tensors"]) == result.tensors and all(len(r["digest"]) == 32 for r in provenance["tensors"])


@pytest.mark.parametrize("family", lane(FAMILIES))
def test_endpoint_laws_every_family(pairs, tmp_path, family):
    a, b = pairs[family]
    sources = {"a": a, "b": b}
    cases = {
        "slerp0": ({"blend": ["a.L{k}", "b.L{k}"], "method": "slerp", "t": 0.0}, a),
        "slerp1": ({"blend": ["a.L{k}", "b.L{k}"], "method": "slerp", "t": 1.0}, b),
        "linear10": ({"blend": ["a.L{k}", "b.L{k}"], "method": "linear", "weights": [1, 0]}, a),
    }
    for name, (template, expected_source) in cases.items():
        layers = [{**template, "blend": [ref.format(k=k) for ref in template["blend"]]} for k in range(4)]
        base = "b" if expected_source is b else "a"
        result = build(load_recipe(recipe_text(sources, layers, base=base)), tmp_path / name)
        built, expected = load_plain(result.out_dir), load_plain(expected_source)
        assert torch.equal(outputs(built), outputs(expected)), name
    # away from the endpoints the blend really mixes: the middle equals neither source
    layers = [{"blend": [f"a.L{k}", f"b.L{k}"], "method": "slerp", "t": 0.5} for k in range(4)]
    middle = load_plain(build(load_recipe(recipe_text(sources, layers)), tmp_path / "mid").out_dir)
    assert not torch.allclose(outputs(middle), outputs(load_plain(a)))
    assert not torch.allclose(outputs(middle), outputs(load_plain(b)))


def test_slerp_matches_reference_formula():
    from engine.build.blend import linear, slerp

    torch.manual_seed(0)
    a, b = torch.randn(7, 5), torch.randn(7, 5)
    t = 0.3
    ua, ub = a.flatten() / a.norm(), b.flatten() / b.norm()
    theta = torch.arccos((ua @ ub).clamp(-1, 1))
    expected = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    assert torch.allclose(slerp(a, b, t), expected, atol=1e-6)
    assert torch.allclose(linear([a, b], [0.25, 0.75]), 0.25 * a + 0.75 * b)
    negative_zero = torch.tensor([-0.0, 1.0])
    assert torch.equal(linear([negative_zero, torch.ones(2)], [1.0, 0.0]).sign(), negative_zero.sign())
    assert str(linear([negative_zero, torch.ones(2)], [1.0, 0.0])[0].item()) == "-0.0"


@pytest.mark.parametrize("family", lane(FAMILIES))
def test_slice_law_every_family(pairs, tmp_path, family):
    a, _ = pairs[family]
    k = 1
    result = build(load_recipe(recipe_text({"a": a}, [{"take": "a.L0"}, {"take": "a.L2-3"}])), tmp_path / "out")
    source = open_model(str(a))
    hooked_out, _ = forward(source, IDS, interventions=[ablate(f"L{k}")])
    plain_out, _ = forward(source, IDS)
    sliced = outputs(load_plain(result.out_dir))
    assert torch.allclose(sliced, hooked_out, atol=1e-5, rtol=0)
    assert not torch.allclose(sliced, plain_out, atol=1e-3)  # the hook (and the slice) really changed something


def greedy_pair(model, ids: torch.Tensor, steps: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of cached greedy decoding and of an uncached forward over the same tokens."""
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache = out.cache
        cached = [out.logits[0, -1]]
        tokens = ids
        for _ in range(steps):
            next_id = cached[-1].argmax().view(1, 1)
            tokens = torch.cat([tokens, next_id], dim=1)
            out = model(input_ids=next_id, cache=cache, use_cache=True)
            cache = out.cache
            cached.append(out.logits[0, -1])
        full = model(input_ids=tokens, use_cache=False).logits[0, ids.shape[1] - 1:]
    return torch.stack(cached), full


@pytest.mark.parametrize("family", lane(CAUSAL))
def test_cache_law_with_repeated_layer(pairs, tmp_path, family):
    a, b = pairs[family]
    layers = [{"take": "a.L0-2"}, {"take": "a.L1"}, {"take": "b.L2"}, {"take": "a.L3"}]
    recipe = load_recipe(recipe_text({"a": a, "b": b}, layers))
    built = load_plain(build(recipe, tmp_path / "out").out_dir)
    cached, full = greedy_pair(built, IDS)
    assert (cached - full).abs().max() <= 1e-5
    live = preview(recipe)
    assert live.model.config.num_hidden_layers == 6
    assert torch.allclose(outputs(live.model), outputs(built), atol=1e-5)
    cached, full = greedy_pair(live.model, IDS)
    assert (cached - full).abs().max() <= 1e-5
    # the law can fail: with the copies' original layer_idx, the repeated layer shares a cache slot
    blocks = ".".join(p for p in (live.anatomy.base_path, live.anatomy.family.blocks) if p)
    for index, layer in enumerate(live.model.get_submodule(blocks)):
        set_layer_index(layer, [0, 1, 2, 1, 2, 3][index])
    if family == "gemma3":
        # a shared sliding-window slot returns its kept keys plus the new ones: the shapes break
        with pytest.raises(RuntimeError, match="must match the size"):
            greedy_pair(live.model, IDS)
        return
    cached, full = greedy_pair(live.model, IDS)
    assert (cached - full).abs().max() > 1e-3


def test_layer_types_are_recomputed_for_new_order(tmp_path):
    a = save_tiny(tmp_path / "qa", "qwen2", 0, use_sliding_window=True, sliding_window=4, max_window_layers=2)
    config = transformers.AutoConfig.from_pretrained(a)
    assert config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    recipe = load_recipe(recipe_text({"a": a}, [{"take": "a.L3"}, {"take": "a.L0"}, {"take": "a.L2"}]))
    report = validate_recipe(recipe)
    assert report.ok and "layer_types" in report.plan.recomputed
    result = build(recipe, tmp_path / "out")
    built_config = json.loads((result.out_dir / "config.json").read_text())
    assert built_config["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    load_plain(result.out_dir)


@pytest.mark.parametrize("family,kv_heads", [("llama", 4), ("gpt2", None), ("gpt_neox", None), ("llama", 2)])
def test_head_transplant_changes_exactly_that_head(tmp_path, family, kv_heads):
    changes = {"num_key_value_heads": kv_heads} if kv_heads else {}
    a = save_tiny(tmp_path / "a", family, 0, layers=12, **changes)
    b = save_tiny(tmp_path / "b", family, 1, layers=12, **changes)
    geometry = head_geometry(transformers.AutoConfig.from_pretrained(a))
    heads = [{"head": 3, "from": "b.L10.h3"}]
    if geometry.group_size > 1:
        heads = [{"head": h, "from": f"b.L10.h{h}"} for h in (2, 3)]  # the whole GQA group {2, 3}
    layers = [{"take": "a.L0-9"}, {"take": "a.L10", "heads": heads}, {"take": "a.L11"}]
    result = build(load_recipe(recipe_text({"a": a, "b": b}, layers)), tmp_path / "out")
    built, model_a, model_b = load_plain(result.out_dir), load_plain(a), load_plain(b)
    sa, sb, sh = model_a.state_dict(), model_b.state_dict(), built.state_dict()
    d = geometry.head_dim
    moved = [2, 3] if geometry.group_size > 1 else [3]
    changed_tensors = set()
    for name, tensor in sh.items():
        expected = sa[name].clone()
        if ".10." in name and any(p in name for p in ("q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "attn.c_proj",
                                                      "query_key_value", "attention.dense")) and not (
                name.endswith("bias") and ("o_proj" in name or "c_proj" in name or "attention.dense" in name)):
            for h in moved:
                q = slice(h * d, (h + 1) * d)
                kv = slice(geometry.kv_group(h) * d, (geometry.kv_group(h) + 1) * d)
                if "q_proj" in name:
                    expected[q] = sb[name][q]
                elif "k_proj" in name or "v_proj" in name:
                    expected[kv] = sb[name][kv]
                elif "o_proj" in name:
                    expected[:, q] = sb[name][:, q]
                elif "c_attn" in name:  # Conv1D [in, 3*hidden]: q | k | v column blocks
                    hidden = geometry.n_heads * d
                    for offset in (0, hidden, 2 * hidden):
                        cols = slice(offset + h * d, offset + (h + 1) * d)
                        expected[..., cols] = sb[name][..., cols]
                elif "c_proj" in name:  # Conv1D [in, out]: the head's input features are rows
                    expected[q] = sb[name][q]
                elif "query_key_value" in name:  # per head [q | k | v]
                    rows = slice(h * 3 * d, (h + 1) * 3 * d)
                    expected[rows] = sb[name][rows]
                elif "attention.dense" in name:
                    expected[:, q] = sb[name][:, q]
        assert torch.equal(tensor, expected), name
        if not torch.equal(tensor, sa[name]):
            changed_tensors.add(name)
    assert changed_tensors, "the transplant changed nothing"
    assert all(".10." in name for name in changed_tensors)
    rows = json.loads((result.out_dir / "provenance.json").read_text())["tensors"]
    transplanted = {r["tensor"] for r in rows if r["op"].endswith("+transplant")}
    # zero-initialised biases may come out unchanged, so every changed tensor is a transplant
    assert changed_tensors <= transplanted and all(".10." in name for name in transplanted)
    moves = [t for r in rows for t in r.get("transplants", [])]
    assert moves and all(t["source"] == "b" and t["head"] in moved for t in moves)
    assert torch.isfinite(outputs(built)).all()


def test_gqa_partial_group_is_refused_unless_kv_keep(tmp_path):
    a = save_tiny(tmp_path / "a", "llama", 0)
    b = save_tiny(tmp_path / "b", "llama", 1)
    layers = [{"take": "a.L0-1"}, {"take": "a.L2", "heads": [{"head": 3, "from": "b.L2.h3"}]}, {"take": "a.L3"}]
    report = validate_recipe(load_recipe(recipe_text({"a": a, "b": b}, layers)))
    assert not report.ok
    assert any("shares keys and values with heads 2" in p.message and "kv: keep" in p.message for p in report.problems)
    layers[1]["heads"][0]["kv"] = "keep"
    recipe = load_recipe(recipe_text({"a": a, "b": b}, layers))
    result = build(recipe, tmp_path / "out")
    built, sa, sb = load_plain(result.out_dir).state_dict(), load_plain(a).state_dict(), load_plain(b).state_dict()
    prefix = "model.layers.2.self_attn."
    assert torch.equal(built[prefix + "q_proj.weight"][48:64], sb[prefix + "q_proj.weight"][48:64])
    assert torch.equal(built[prefix + "q_proj.weight"][:48], sa[prefix + "q_proj.weight"][:48])
    assert torch.equal(built[prefix + "k_proj.weight"], sa[prefix + "k_proj.weight"])  # keys kept
    assert torch.equal(built[prefix + "o_proj.weight"][:, 48:64], sb[prefix + "o_proj.weight"][:, 48:64])


def test_overrides_take_components_from_named_sources(pairs, tmp_path):
    a, b = pairs["llama"]
    layers = [{"take": "a.L0"}, {"take": "a.L1", "mlp": "b.L3", "norms": "b.L1"}, {"take": "a.L2-3"}]
    result = build(load_recipe(recipe_text({"a": a, "b": b}, layers)), tmp_path / "out")
    built, sa, sb = load_plain(result.out_dir).state_dict(), load_plain(a).state_dict(), load_plain(b).state_dict()
    for name, tensor in built.items():
        if name.startswith("model.layers.1.mlp."):
            assert torch.equal(tensor, sb[name.replace("layers.1", "layers.3")])
        elif name.startswith("model.layers.1.") and "layernorm" in name:
            assert torch.equal(tensor, sb[name])
        else:
            assert torch.equal(tensor, sa[name]), name


def test_sharded_output_loads(pairs, tmp_path):
    a, _ = pairs["llama"]
    result = build(load_recipe(recipe_text({"a": a}, [{"take": "a.L0-3"}])), tmp_path / "out", shard_bytes=20_000)
    assert len(result.shards) > 1 and (result.out_dir / "model.safetensors.index.json").is_file()
    assert torch.equal(outputs(load_plain(result.out_dir)), outputs(load_plain(a)))


def test_untied_when_lm_head_comes_from_another_source(pairs, tmp_path):
    a, b = pairs["gemma"]  # gemma ties lm_head to the embeddings
    recipe = load_recipe(recipe_text({"a": a, "b": b}, [{"take": "a.L0-3"}], lm_head="b"))
    report = validate_recipe(recipe)
    assert report.ok and not report.plan.tied
    assert any("unties" in w.message for w in report.warnings)
    built = load_plain(build(recipe, tmp_path / "out").out_dir)
    assert torch.equal(built.lm_head.weight, load_plain(b).model.embed_tokens.weight)
    assert torch.equal(built.model.embed_tokens.weight, load_plain(a).model.embed_tokens.weight)


def test_warnings_shapes_cannot_catch(tmp_path):
    a = save_tiny(tmp_path / "a", "llama", 0)
    b = save_tiny(tmp_path / "b", "llama", 1, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                  rms_norm_eps=1e-5)
    report = validate_recipe(load_recipe(recipe_text({"a": a, "b": b}, [{"take": "a.L0"}, {"take": "b.L1-3"}])))
    assert report.ok
    warned = "\n".join(str(w) for w in report.warnings)
    assert "rope_theta differs (500.0 vs 10000.0)" in warned and "norm epsilon differs" in warned
    assert "line 1 (layers[1].take)" in warned
    g = save_tiny(tmp_path / "g", "gpt2", 0, scale_attn_by_inverse_layer_idx=True)
    report = validate_recipe(load_recipe(recipe_text({"a": g}, [{"take": "a.L0"}, {"take": "a.L2-3"}])))
    assert report.ok and any("scales attention by 1/(layer index + 1)" in w.message for w in report.warnings)


def test_dtype_conversion_is_a_plain_cast(pairs, tmp_path):
    a, _ = pairs["llama"]
    recipe = load_recipe(recipe_text({"a": a}, [{"take": "a.L0-3"}], dtype="bfloat16"))
    result = build(recipe, tmp_path / "out")
    assert json.loads((result.out_dir / "config.json").read_text())["dtype"] == "bfloat16"
    built = transformers.AutoModelForCausalLM.from_pretrained(result.out_dir, dtype=torch.bfloat16)
    source = load_plain(a)
    for name, tensor in built.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, source.state_dict()[name].to(torch.bfloat16))


def test_relative_source_paths_resolve_beside_the_recipe(pairs, tmp_path, monkeypatch):
    a, _ = pairs["llama"]
    models = tmp_path / "models"
    models.mkdir()
    import shutil

    shutil.copytree(a, models / "src")
    recipe_file = tmp_path / "recipes" / "r.yaml"
    recipe_file.parent.mkdir()
    recipe_file.write_text(recipe_text({"a": Path("../models/src")}, [{"take": "a.L0-3"}]))
    monkeypatch.chdir(a)  # somewhere unrelated
    recipe = load_recipe(recipe_file)
    assert recipe.sources["a"] == str((models / "src").resolve())
    assert validate_recipe(recipe).ok


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3"])
def test_preview_equals_build_for_every_kind_of_step(pairs, tmp_path, family):
    a, b = pairs[family]
    layers = [
        {"blend": ["a.L0", "b.L0"], "method": "slerp", "t": 0.3},
        {"take": "a.L1", "mlp": "b.L2", "norms": "b.L1", "heads": [{"head": 1, "from": "b.L3.h2", "kv": "keep"}]},
        {"take": "b.L2", "attn": {"blend": ["a.L2", "b.L2"], "method": "linear", "weights": [0.5, 0.5]}},
        {"take": "a.L3"},
        {"take": "a.L3"},
    ]
    recipe = load_recipe(recipe_text({"a": a, "b": b}, layers, embed="b", final_norm="b"))
    built = load_plain(build(recipe, tmp_path / "out").out_dir)
    live = preview(recipe)
    built_state, live_state = built.state_dict(), live.model.state_dict()
    assert built_state.keys() == live_state.keys()
    assert all(torch.equal(built_state[k], live_state[k]) for k in built_state), [
        k for k in built_state if not torch.equal(built_state[k], live_state[k])]
    assert torch.equal(outputs(live.model), outputs(built))
