"""Parts loaded back from the bin compute exactly what the source module computed.

Each part is extracted from a real model, loaded back from its file as a module, run on
inputs captured inside the source model, and compared with ``torch.equal`` to what the
source computed on the same run.
"""

from __future__ import annotations

import pytest
import torch

PROMPT = "The engine of a small garage hums while the mechanic sorts spare parts"


@pytest.fixture(scope="module")
def bin_(tmp_path_factory):
    from engine.parts import PartsBin

    return PartsBin(tmp_path_factory.mktemp("parts-home"))


@pytest.fixture(scope="module")
def smol_run(smollm2):
    from engine.hooks import hooked

    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    points = ["embed.out", "L3.in", "L3.out", "L10.attn.in", "L10.attn.out", "L10.attn.z", "L10.mlp.in", "L10.mlp.out"]
    with torch.no_grad(), hooked(smollm2.model, smollm2.anatomy, capture=points) as tap:
        smollm2.model(ids)
    return ids, {point: tap[point].clone() for point in points}


def _extract_and_load(bin_, loaded, address):
    record = bin_.add_from_model(loaded, address)
    return record, bin_.load_module(record.name)


def test_smollm2_attention_runs_standalone_on_hidden_states_and_positions(bin_, smollm2, smol_run):
    ids, tap = smol_run
    record, module = _extract_and_load(bin_, smollm2, "L10.attn")
    assert record.config["rotary"]["rope_parameters"]["rope_theta"] == smollm2.config.rope_parameters["rope_theta"]
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        out = module(tap["L10.attn.in"], position_ids=positions)
        shifted = module(tap["L10.attn.in"], position_ids=positions + 7)
    assert torch.equal(out, tap["L10.attn.out"])
    assert not torch.equal(shifted, out)  # the rotary embedding really is applied from the positions


def test_smollm2_bare_deepcopy_of_attention_cannot_run(smollm2, smol_run):
    import copy

    _, tap = smol_run
    bare = copy.deepcopy(smollm2.model.model.layers[10].self_attn)
    with pytest.raises(TypeError):
        bare(tap["L10.attn.in"])  # no rotary embedding: position_embeddings is None


def test_smollm2_mlp_layer_and_embed_are_bit_identical(bin_, smollm2, smol_run):
    ids, tap = smol_run
    with torch.no_grad():
        _, mlp = _extract_and_load(bin_, smollm2, "L10.mlp")
        assert torch.equal(mlp(tap["L10.mlp.in"]), tap["L10.mlp.out"])
        _, layer = _extract_and_load(bin_, smollm2, "L3")
        assert torch.equal(layer(tap["L3.in"]), tap["L3.out"])
        _, embed = _extract_and_load(bin_, smollm2, "embed")
        assert torch.equal(embed(ids), tap["embed.out"])


def test_smollm2_head_part_reproduces_its_contribution(bin_, smollm2, smol_run):
    from engine.heads import head_contributions

    _, tap = smol_run
    record, head = _extract_and_load(bin_, smollm2, "L10.attn.h3")
    slices = {entry.name: (entry.source, entry.slice) for entry in record.tensors}
    d = smollm2.anatomy.geometry.head_dim  # 64; head 3 reads KV group 1 (9 heads over 3 KV heads)
    assert slices["q.weight"] == ("model.layers.10.self_attn.q_proj.weight", (0, 3 * d, 4 * d))
    assert slices["k.weight"] == ("model.layers.10.self_attn.k_proj.weight", (0, 1 * d, 2 * d))
    assert slices["o.weight"] == ("model.layers.10.self_attn.o_proj.weight", (1, 3 * d, 4 * d))
    expected = head_contributions(smollm2.model, smollm2.anatomy, 10, tap["L10.attn.z"])[..., 3, :]
    with torch.no_grad():
        z = head.z(tap["L10.attn.in"])
        out = head(tap["L10.attn.in"])
    assert torch.equal(z, tap["L10.attn.z"][..., 3 * d:4 * d])
    assert torch.equal(out, expected)
    other = head_contributions(smollm2.model, smollm2.anatomy, 10, tap["L10.attn.z"])[..., 4, :]
    assert not torch.equal(out, other)


def test_minilm_layer_is_bit_identical(bin_, minilm):
    from engine.hooks import hooked

    ids = minilm.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad(), hooked(minilm.model, minilm.anatomy, capture=["L2.in", "L2.out"]) as tap:
        minilm.model(ids)
    record, layer = _extract_and_load(bin_, minilm, "L2")
    assert record.family == "bert" and "rotary" not in record.config
    with torch.no_grad():
        assert torch.equal(layer(tap["L2.in"]), tap["L2.out"])


@pytest.mark.parametrize("address", ["L10.attn", "L10.attn.h3", "L3", "embed", "lm_head"])
def test_smollm2_checkpoint_extraction_matches_loaded_model_bytes(bin_, smollm2, address):
    from_model = bin_.add_from_model(smollm2, address, name=f"model-{address}")
    from_checkpoint = bin_.add_from_checkpoint(smollm2.weights_path, address, name=f"ckpt-{address}")
    assert from_checkpoint.source["kind"] == "checkpoint"
    assert from_model.sha256 == from_checkpoint.sha256
    # the files differ only in the catalog record they carry (source, tags, notes): the digest leaves it out
    from engine.parts.file_record import content_digest

    model_bytes, ckpt_bytes = ((bin_.parts_dir / r.file).read_bytes() for r in (from_model, from_checkpoint))
    assert content_digest(model_bytes) == content_digest(ckpt_bytes) == from_model.sha256
    assert bin_.load_tensors(from_model.name).keys() == bin_.load_tensors(from_checkpoint.name).keys()


def test_minilm_checkpoint_extraction_matches_loaded_model_bytes(bin_, minilm):
    from_model = bin_.add_from_model(minilm, "L2", name="model-minilm-L2")
    from_checkpoint = bin_.add_from_checkpoint("minilm-l6", "L2", name="ckpt-minilm-L2")
    assert from_model.sha256 == from_checkpoint.sha256
