"""Edge cases of the engine core: cached generation, families' quirks, cleanup, bad input.

Each bug found in review has a test here; they pinned the bugs (xfail) until the fixes landed.
"""

from __future__ import annotations

import copy
import json
import struct

import pytest
import torch

from engine.addresses import resolve
from engine.errors import GarageError, InterventionError, ModelLoadError
from engine.families import QKV_PER_HEAD, head_row_ranges
from engine.hooks import count_garage_hooks, hook_inventory, hooked
from engine.interventions import ablate, patch, scale, steer
from tests.tiny_models import tiny_configs, tiny_model

IDS = torch.tensor([[3, 1, 4, 1, 5, 9]])


def _main(output):
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def _run(loaded, ids=IDS, interventions=(), capture=()):
    with torch.no_grad(), hooked(loaded.model, loaded.anatomy, capture, interventions) as tap:
        out = _main(loaded.model(input_ids=ids))
    return out, tap


# --- cached generation ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_generation_under_head_ablation_equals_uncached_forward(family):
    """Per-position edits hold under the KV cache: each cached step equals the full rerun."""
    loaded = tiny_model(family)
    intervention = [ablate("L1.attn.h1"), scale("L0.mlp", 0.5)]
    with torch.no_grad(), hooked(loaded.model, loaded.anatomy, ["L1.out"], intervention) as tap:
        out = loaded.model.generate(IDS, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert tap.calls["L1.out"] == 5  # prompt pass plus four cached steps
        assert tap["L1.out"].shape[1] == 1  # the last cached step saw one position
        full = loaded.model(input_ids=out).logits
    new = out[0, IDS.shape[1]:]
    assert torch.equal(full[0, IDS.shape[1] - 1:-1].argmax(-1), new)
    plain = loaded.model.generate(IDS, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert count_garage_hooks(loaded.model) == 0
    assert not torch.equal(plain, out) or family == "gpt2"  # tiny gpt2 repeats one token either way


def test_mean_ablation_acts_on_cached_generation_steps():
    loaded = tiny_model("llama")
    model = loaded.model
    with torch.no_grad():
        prompt = model(input_ids=IDS, use_cache=True)
        cache_copy = copy.deepcopy(prompt.cache)
        next_id = prompt.logits[:, -1:].argmax(-1)
        clean_step = model(input_ids=next_id, cache=cache_copy).logits
        try:
            with hooked(model, loaded.anatomy, (), [ablate("L1.mlp", "mean")]):
                model(input_ids=IDS, use_cache=True)  # the prompt pass the mean comes from
                ablated_step = model(input_ids=next_id, cache=prompt.cache).logits
        except InterventionError:
            return  # refusing mean-ablation on cached steps is an acceptable fix too
    assert not torch.allclose(ablated_step, clean_step, atol=1e-6)


@pytest.mark.parametrize("address", ["L1.mlp", "L1.attn.h1"])
def test_mean_ablation_leaves_padded_positions_out(address):
    """A left-padded batch: the mean is over real tokens only, as the attention mask says."""
    loaded = tiny_model("llama")
    ids = torch.tensor([[3, 1, 4, 1, 5, 9], [0, 0, 0, 2, 6, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
    point = "L1.mlp.out" if address == "L1.mlp" else "L1.attn.h1.z"
    with torch.no_grad():
        with hooked(loaded.model, loaded.anatomy, [point]) as clean:
            loaded.model(input_ids=ids, attention_mask=mask)
        with hooked(loaded.model, loaded.anatomy, [point], [ablate(address, "mean")]) as ablated:
            loaded.model(input_ids=ids, attention_mask=mask)
    real = clean[point][mask.bool()]
    assert torch.allclose(ablated[point][0, 0], real.mean(0), atol=1e-6)
    assert not torch.allclose(ablated[point][0, 0], clean[point].mean((0, 1)), atol=1e-4)  # pads would count
    assert count_garage_hooks(loaded.model) == 0


# --- positions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda tap: steer("L0", torch.ones(64), 1.0, positions=[10]),
    lambda tap: patch("L0.out", tap["L0.out"], positions=[10]),
])
def test_out_of_range_positions_are_a_clear_error(make):
    loaded = tiny_model("llama")
    _, tap = _run(loaded, capture=["L0.out"])
    with pytest.raises(GarageError, match="position"):
        _run(loaded, interventions=[make(tap)])
    assert count_garage_hooks(loaded.model) == 0


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "phi3"])
def test_patch_head_z_at_positions_replaces_only_those_columns(family):
    loaded = tiny_model(family)
    other = torch.tensor([[2, 7, 1, 8, 2, 8]])
    _, source = _run(loaded, capture=["L1.attn.h2.z", "L1.attn.z"])
    _, clean = _run(loaded, other, capture=["L1.attn.z"])
    _, patched = _run(loaded, other, [patch("L1.attn.h2.z", source["L1.attn.h2.z"], positions=[1, 4])],
                      ["L1.attn.z"])
    d = loaded.anatomy.geometry.head_dim
    expected = clean["L1.attn.z"].clone()
    expected[:, [1, 4], 2 * d:3 * d] = source["L1.attn.z"][:, [1, 4], 2 * d:3 * d]
    assert torch.equal(patched["L1.attn.z"], expected)
    assert not torch.equal(expected, clean["L1.attn.z"])


def test_steer_at_positions_touches_only_those_positions():
    loaded = tiny_model("llama")
    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    _, clean = _run(loaded, capture=["L0.out"])
    _, steered = _run(loaded, interventions=[steer("L0", vector, 2.0, positions=[0, -1])], capture=["L0.out"])
    delta = steered["L0.out"] - clean["L0.out"]
    assert torch.allclose(delta[0, [0, 5]], (2.0 * vector).expand(2, 64), atol=1e-6)
    assert delta[0, 1:5].abs().max().item() == 0


# --- layer-level edits on every layout -----------------------------------------------------------

@pytest.mark.parametrize("family", ["bert", "phi", "gpt_neox"])  # post-norm, parallel, parallel residual
def test_layer_scale_acts_on_the_layer_delta(family):
    loaded = tiny_model(family)
    points = ["L0.in", "L0.out"]
    clean_out, clean = _run(loaded, capture=points)
    one_out, _ = _run(loaded, interventions=[scale("L0", 1.0)])
    _, half = _run(loaded, interventions=[scale("L0", 0.5)], capture=points)
    _, skipped = _run(loaded, interventions=[ablate("L0")], capture=points)
    assert torch.allclose(one_out, clean_out, atol=1e-6)
    expected = clean["L0.in"] + 0.5 * (clean["L0.out"] - clean["L0.in"])
    assert torch.allclose(half["L0.out"], expected, atol=1e-6)
    assert torch.equal(skipped["L0.out"], skipped["L0.in"])


def test_layer_ablation_keeps_a_steer_of_its_input_in_any_order():
    loaded = tiny_model("llama")
    vector = torch.randn(64, generator=torch.Generator().manual_seed(2))
    _, clean = _run(loaded, capture=["L0.in"])
    expected = clean["L0.in"] + 2.0 * vector
    for order in ([steer("L0.in", vector, 2.0), ablate("L0")], [ablate("L0"), steer("L0.in", vector, 2.0)]):
        _, tap = _run(loaded, interventions=order, capture=["L0.out"])
        assert torch.allclose(tap["L0.out"], expected, atol=1e-6), [i.describe() for i in order]


# --- dtypes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_edits_keep_the_model_dtype(dtype):
    loaded = tiny_model("llama")
    loaded.model.to(dtype)
    _, clean = _run(loaded, capture=["L1.out"])
    edits = [ablate("L1.attn.h1", "mean"), ablate("L0", "mean"), steer("L1", torch.randn(64), positions=[2]),
             patch("L1.out", clean["L1.out"].float())]  # float32 inputs are cast to the run's dtype
    logits, tap = _run(loaded, interventions=edits, capture=["L1.out"])
    assert logits.dtype == dtype and tap["L1.out"].dtype == dtype
    assert torch.equal(tap["L1.out"], clean["L1.out"])  # the last patch wins


# --- patterns, heads and cleanup -----------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(tiny_configs()))
def test_pattern_capture_equals_output_attentions(family):
    loaded = tiny_model(family)
    _, tap = _run(loaded, capture=["L1.attn.pattern", "L1.attn.h3.pattern"])
    assert loaded.model.config._attn_implementation == "sdpa"  # switched back after the block
    model = copy.deepcopy(loaded.model)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model(input_ids=IDS, output_attentions=True).attentions[1]
    assert torch.allclose(tap["L1.attn.pattern"], reference, atol=1e-6)
    assert torch.equal(tap["L1.attn.h3.pattern"], reference[:, 3])


def test_patching_a_pattern_is_refused_or_takes_effect():
    loaded = tiny_model("llama")
    loaded.model.set_attn_implementation("eager")
    clean, _ = _run(loaded)
    try:
        patched, _ = _run(loaded, interventions=[patch("L0.attn.h1.pattern", torch.eye(6)[None])])
    except InterventionError as exc:
        assert "z" in str(exc)  # the message points at what to patch instead
        return
    assert not torch.allclose(patched, clean)


def test_exception_inside_a_hook_still_cleans_up():
    """A wrong-shape patch fails inside the forward pass, mid-way through eager pattern capture."""
    loaded = tiny_model("llama")
    before = hook_inventory(loaded.model)
    clean, _ = _run(loaded)
    with pytest.raises(InterventionError, match=r"shape \[1, 3, 64\].*same token length"):
        _run(loaded, interventions=[scale("L1.mlp", 3.0), patch("L0.out", torch.zeros(1, 3, 64))],
             capture=["L1.attn.pattern"])
    assert count_garage_hooks(loaded.model) == 0 and hook_inventory(loaded.model) == before
    assert loaded.model.config._attn_implementation == "sdpa"
    assert torch.equal(_run(loaded)[0], clean)


@pytest.mark.parametrize("family", sorted(tiny_configs()))
def test_head_row_ranges_select_exactly_one_heads_query(family):
    """Zeroing the rows ``head_row_ranges`` gives one head changes that head's z and no other."""
    loaded = tiny_model(family)
    anatomy = loaded.anatomy
    table, geometry, head = anatomy.family.attention, anatomy.geometry, 2
    ranges = head_row_ranges(table, geometry, head)
    name = "qkv" if table.qkv else "q"
    # Concat layouts share k/v rows across a GQA group; per-head layouts own all three.
    rows = ranges[name] if table.qkv_layout == QKV_PER_HEAD else ranges[name][:1]
    model = copy.deepcopy(loaded.model)
    weight = model.get_submodule(anatomy.module_path_of(1, getattr(table, name))).weight
    with torch.no_grad():
        for start, stop in rows:
            if table.conv1d:
                weight[:, start:stop] = 0
            else:
                weight[start:stop] = 0
    _, clean = _run(loaded, capture=["L1.attn.z"])
    with torch.no_grad(), hooked(model, anatomy, ["L1.attn.z"]) as edited:
        model(input_ids=IDS)
    changed = (edited["L1.attn.z"] - clean["L1.attn.z"]).abs().unflatten(-1, (geometry.n_heads, -1))
    per_head = changed.amax(dim=(0, 1, 3))
    assert per_head[head] > 1e-6
    assert per_head[torch.arange(geometry.n_heads) != head].max().item() == 0


# --- addresses and structure ---------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(tiny_configs()))
def test_every_parts_hf_module_path_and_lens_names_resolve(family):
    anatomy = tiny_model(family).anatomy
    for part in anatomy.root.walk():
        if part.kind not in ("head", "model") and part.module_path:
            assert resolve(anatomy, part.module_path).address == part.address, part.module_path
    lens = {"blocks.1.hook_resid_pre": "L1.in", "blocks.1.attn.hook_pattern": "L1.attn.pattern",
            "blocks.1.mlp.hook_post": "L1.mlp.hidden", "hook_embed": "embed.out",
            "blocks.0.hook_attn_out": "L0.attn.out"}
    assert {name: resolve(anatomy, name).address for name in lens} == lens


@pytest.mark.parametrize("family", sorted(tiny_configs()))
def test_structure_only_open_matches_the_real_model(family, tmp_path):
    from engine.loading import open_model

    real = tiny_model(family)
    real.model.config.save_pretrained(tmp_path)
    meta = open_model(str(tmp_path), structure_only=True)
    assert meta.device == "meta" and meta.is_causal_lm == real.is_causal_lm
    pairs = list(zip(meta.anatomy.root.walk(), real.anatomy.root.walk(), strict=True))
    assert [(m.address, m.params, m.shapes) for m, _ in pairs] == [(r.address, r.params, r.shapes) for _, r in pairs]
    with pytest.raises(GarageError, match="structure-only"):
        from engine.runner import forward

        forward(meta, IDS)


def test_inspect_structure_only_bundled_smollm2(capsys):
    from garage_tui.cli import main

    assert main(["inspect", "--structure-only", "smollm2-135m", "--json", "--depth", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["structure_only"] is True and doc["tree"]["params"] == 134_515_008
    lm_head = next(c for c in doc["tree"]["children"] if c["address"] == "lm_head")
    assert lm_head["info"]["tied"] is True


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [{"weight": 1}, [1, 2], {"weight": {"dtype": "F32"}}])
def test_malformed_safetensors_header_is_a_model_load_error(header, tmp_path):
    from engine.checks import check_safetensors

    path = tmp_path / "bad.safetensors"
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(ModelLoadError, match="bad.safetensors"):
        check_safetensors(path)


def test_top_k_larger_than_the_vocabulary(smollm2):
    from engine.runner import predict

    vocab = smollm2.model.config.vocab_size
    try:
        result = predict(smollm2, "Hi", top_k=vocab + 10)
    except GarageError as exc:
        assert "top-k" in str(exc)
        return
    assert len(result.top) == vocab


def test_toggle_tells_steering_vectors_apart():
    from engine.garage import Garage

    garage = Garage()
    assert garage.toggle(steer("L3", torch.ones(576))) is True
    assert garage.toggle(steer("L3", -torch.ones(576))) is True  # a different steer: now two active
    assert len(garage.interventions) == 2


def test_tap_answers_to_the_addresses_it_was_given():
    loaded = tiny_model("llama")
    _, tap = _run(loaded, capture=["L1", "blocks.0.hook_mlp_out"])
    assert "L1" in tap and torch.equal(tap["L1"], tap["L1.out"])
    assert torch.equal(tap["blocks.0.hook_mlp_out"], tap["L0.mlp.out"])


@pytest.mark.parametrize("doc, where, expected", [
    ("[1, 2]", "config.json", "config"),
    ('{"model_type": "llama", "num_attention_heads": 5, "hidden_size": 64}', "", "not a multiple"),
    ('{"model_type": "nonesuch"}', "config.json", "nonesuch"),
])
def test_bad_config_is_one_short_line(doc, where, expected, tmp_path):
    from engine.loading import open_model

    (tmp_path / "config.json").write_text(doc)
    with pytest.raises(ModelLoadError, match=expected) as caught:
        open_model(str(tmp_path / where), structure_only=True)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message[:120]


def test_predict_on_a_generic_causal_lm_does_not_deny_its_lm_head(tmp_path):
    import transformers as T

    from engine.loading import open_model
    from engine.runner import predict

    config = T.OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                         vocab_size=100, word_embed_proj_dim=32)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    loaded = open_model(str(tmp_path))
    assert loaded.anatomy.family is None and hasattr(loaded.model, "lm_head")
    with pytest.raises(GarageError) as caught:  # no tokenizer files, so it cannot run either way
        predict(loaded, "hello")
    assert "no language-model head" not in str(caught.value), str(caught.value)
