"""Family tables give every family the same parts; one grammar addresses them all."""

from __future__ import annotations

import pytest

from engine.addresses import all_addresses, resolve, resolve_point
from engine.errors import AddressError
from tests.tiny_models import tiny_configs, tiny_model


@pytest.mark.parametrize("family", sorted(tiny_configs()))
def test_every_family_has_the_standard_parts(family):
    loaded = tiny_model(family)
    anatomy = loaded.anatomy
    geometry = anatomy.geometry
    for address in ("embed", "L0", "L1", "L1.attn", "L1.mlp", "L1.norm1", "L1.attn.o"):
        assert address in anatomy.by_address, address
    heads = [p for p in anatomy.part("L1.attn").children if p.kind == "head"]
    assert len(heads) == geometry.n_heads
    assert [h.info["kv_group"] for h in heads] == [i // geometry.group_size for i in range(geometry.n_heads)]
    if family != "bert":
        assert {"final_norm", "lm_head"} <= set(anatomy.by_address)
    # Parameters of the parts add up to the model (BERT's pooler is outside the bay).
    counted = sum(p.params for p in anatomy.root.children if p.address != "lm_head" or not p.info.get("tied"))
    total = sum(p.numel() for p in loaded.model.parameters())
    pooler = sum(p.numel() for n, p in loaded.model.named_parameters() if n.startswith("pooler"))
    assert counted == total - pooler


def test_gqa_kv_groups_on_smollm2(smollm2):
    attn = smollm2.anatomy.part("L10.attn")
    groups = [child.info["kv_group"] for child in attn.children if child.kind == "head"]
    assert groups == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert attn.info["gqa"] and attn.info["kv_heads"] == 3


def test_addresses_and_aliases(smollm2):
    anatomy = smollm2.anatomy
    assert resolve(anatomy, "L10.attn.h3").part.kind == "head"
    assert resolve(anatomy, "model.layers.10.self_attn").address == "L10.attn"
    assert resolve(anatomy, "model.layers.10.self_attn.o_proj").address == "L10.attn.o"
    assert resolve(anatomy, "model.norm").address == "final_norm"
    assert resolve(anatomy, "blocks.10.hook_resid_post").address == "L10.out"
    assert resolve(anatomy, "blocks.4.attn.hook_z").address == "L4.attn.z"
    assert resolve_point(anatomy, "L10").address == "L10.out"
    assert resolve_point(anatomy, "L10.attn.h3").address == "L10.attn.h3.z"
    assert "L29.mlp.hidden" in all_addresses(anatomy)


def test_unknown_addresses_suggest_the_nearest(smollm2):
    with pytest.raises(AddressError, match="nearest valid: .*L10.attn"):
        resolve(smollm2.anatomy, "L10.atn")
    with pytest.raises(AddressError, match="head 12 is out of range.*h0–h8"):
        resolve(smollm2.anatomy, "L10.attn.h12")
    with pytest.raises(AddressError, match="layer 40 is out of range.*L0–L29"):
        resolve(smollm2.anatomy, "L40.mlp")
