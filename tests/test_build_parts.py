"""Heads transplanted from parts in the parts bin equal heads transplanted from their model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from engine.build import build, load_recipe, validate_recipe
from engine.loading import _model_class
from tests.tiny_models import tiny_configs


def save(folder, family: str, seed: int, **changes):
    config = tiny_configs()[family]
    doc = config.to_dict()
    doc.update(changes)
    config = type(config).from_dict(doc)
    torch.manual_seed(seed)
    _model_class(config).from_config(config).save_pretrained(folder)
    return folder


def recipe(a, b, heads) -> str:
    return json.dumps({"recipe_version": 1, "name": "part-heads", "sources": {"a": str(a), "b": str(b)},
                       "embed": "a", "final_norm": "a", "lm_head": "a",
                       "layers": [{"take": "a.L0"}, {"take": "a.L1", "heads": heads}]})


def tensors(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


@pytest.mark.parametrize("family,changes", [("llama", {"num_key_value_heads": 4}), ("gpt2", {}), ("gpt_neox", {})])
def test_head_from_part_equals_head_from_model(garage_home, tmp_path, family, changes):
    from engine.parts import PartsBin

    a = save(tmp_path / "a", family, 0, **changes)
    b = save(tmp_path / "b", family, 1, **changes)
    PartsBin().add_from_checkpoint(b, "L1.attn.h2", name="b-head")
    from_part = build(load_recipe(recipe(a, b, [{"head": 1, "part": "b-head"}])), tmp_path / "from-part")
    from_model = build(load_recipe(recipe(a, b, [{"head": 1, "from": "b.L1.h2"}])), tmp_path / "from-model")
    built_part, built_model = tensors(from_part.out_dir), tensors(from_model.out_dir)
    assert built_part.keys() == built_model.keys()
    assert all(torch.equal(built_part[k], built_model[k]) for k in built_part)
    plain_a = tensors_of_source(a)
    assert any(not torch.equal(built_part[k], plain_a[k]) for k in built_part)  # something really moved
    provenance = json.loads((from_part.out_dir / "provenance.json").read_text())
    moved = [t for row in provenance["tensors"] for t in row.get("transplants", [])]
    assert moved and all(t["part"] == "b-head" and t["source"] == "part:b-head" for t in moved)
    assert provenance["parts"]["b-head"]["address"] == "L1.attn.h2"


def tensors_of_source(folder):
    with safe_open(str(next(folder.glob("*.safetensors"))), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def test_part_rules_for_gqa_and_kinds(garage_home, tmp_path):
    from engine.parts import PartsBin

    a = save(tmp_path / "a", "llama", 0)  # 4 heads, 2 KV heads
    b = save(tmp_path / "b", "llama", 1)
    bin_ = PartsBin()
    bin_.add_from_checkpoint(b, "L1.attn.h3", name="gqa-head")
    bin_.add_from_checkpoint(b, "L1.mlp", name="an-mlp")
    report = validate_recipe(load_recipe(recipe(a, b, [{"head": 3, "part": "gqa-head"}, {"head": 0, "part": "an-mlp"},
                                                       {"head": 1, "part": "no-such-part"}])))
    text = "\n".join(str(p) for p in report.problems)
    assert "carries the keys and values its GQA group shared" in text and "kv: keep" in text
    assert "part 'an-mlp' is a mlp (L1.mlp), not a head" in text
    assert "no-such-part" in text and len(report.problems) == 3
    result = build(load_recipe(recipe(a, b, [{"head": 3, "part": "gqa-head", "kv": "keep"}])), tmp_path / "out")
    built, source_a, source_b = tensors(result.out_dir), tensors_of_source(a), tensors_of_source(b)
    q, o, k = (f"model.layers.1.self_attn.{p}_proj.weight" for p in "qok")
    assert torch.equal(built[q][48:64], source_b[q][48:64]) and torch.equal(built[q][:48], source_a[q][:48])
    assert torch.equal(built[o][:, 48:64], source_b[o][:, 48:64]) and torch.equal(built[k], source_a[k])
