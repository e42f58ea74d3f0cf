"""The catalog: filters, show, tags, notes, rename, remove, verify, fits, and safe loading."""

from __future__ import annotations

import pickle

import pytest
import torch


@pytest.fixture(scope="module")
def stocked(tmp_path_factory, smollm2, minilm):
    """A bin with parts from both real models, extracted from their checkpoints."""
    from engine.parts import PartsBin

    bin_ = PartsBin(tmp_path_factory.mktemp("catalog-home"))
    bin_.add_from_checkpoint("smollm2-135m", "L10.attn.h3", tags=["heads"], notes="induction-ish")
    bin_.add_from_checkpoint("smollm2-135m", "L4.mlp")
    bin_.add_from_checkpoint("smollm2-135m", "L4.norm1")
    bin_.add_from_checkpoint("minilm-l6", "L2")
    bin_.add_from_checkpoint("minilm-l6", "L2.attn.h1", tags=["heads"])
    return bin_


def test_list_filters_by_source_kind_family_tag_shape_and_text(stocked):
    names = lambda records: sorted(r.name for r in records)  # noqa: E731
    assert len(stocked.list()) == 5
    assert names(stocked.list(source="minilm")) == ["minilm-l6-L2", "minilm-l6-L2.attn.h1"]
    assert names(stocked.list(kind="head")) == ["minilm-l6-L2.attn.h1", "smollm2-135m-L10.attn.h3"]
    assert names(stocked.list(family="llama")) == ["smollm2-135m-L10.attn.h3", "smollm2-135m-L4.mlp",
                                                   "smollm2-135m-L4.norm1"]
    assert names(stocked.list(tag="heads", family="bert")) == ["minilm-l6-L2.attn.h1"]
    assert names(stocked.list(shape="1536x576")) == ["smollm2-135m-L4.mlp"]  # gate/up of SmolLM2's MLP
    assert names(stocked.list(text="induction")) == ["smollm2-135m-L10.attn.h3"]


def test_record_has_provenance(stocked, smollm2):
    record = stocked.get("smollm2-135m-L4.mlp")
    doc = record.to_dict()
    assert doc["source"]["config_hash"] == smollm2.config_hash
    assert doc["source"]["name"] == "smollm2-135m"
    assert record.params == 3 * 576 * 1536 and record.dtype == "float32"
    assert [e["name"] for e in doc["tensors"]] == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    assert doc["tensors"][0]["source"] == "model.layers.4.mlp.down_proj.weight"
    assert len(record.sha256) == 64 and record.created_at.startswith("20")
    assert record.path.is_file() and record.path.parent == stocked.parts_dir


def test_tag_note_rename_and_remove(stocked):
    from engine.parts import PartNameError, PartNotFoundError

    stocked.tag("smollm2-135m-L4.norm1", "small")
    stocked.note("smollm2-135m-L4.norm1", "pre-attention RMSNorm")
    renamed = stocked.rename("smollm2-135m-L4.norm1", "norm-four")
    assert renamed.tags == ["small"] and renamed.notes == "pre-attention RMSNorm"
    assert renamed.path.is_file() and not (stocked.parts_dir / "smollm2-135m-L4.norm1.safetensors").exists()
    assert stocked.verify("norm-four")[0].ok
    assert torch.equal(stocked.load_tensors("norm-four")["weight"], stocked.load_tensors("norm-four")["weight"])
    with pytest.raises(PartNameError):
        stocked.rename("norm-four", "minilm-l6-L2")
    assert stocked.untag("norm-four", "small").tags == []
    removed = stocked.remove("norm-four")
    assert not removed.path.exists()
    with pytest.raises(PartNotFoundError):
        stocked.get("norm-four")
    assert len(stocked.list()) == 4


def test_verify_flags_one_changed_byte_and_loading_refuses_it(tmp_path):
    from engine.parts import PartIntegrityError, PartsBin

    bin_ = PartsBin(tmp_path)
    record = bin_.add_from_checkpoint("minilm-l6", "L1.norm2")
    assert [r.status for r in bin_.verify()] == ["ok"]
    data = bytearray(record.path.read_bytes())
    data[-3] ^= 0x01  # one bit of one float, far from the header
    record.path.write_bytes(bytes(data))
    results = bin_.verify()
    assert [r.status for r in results] == ["altered"] and results[0].actual_sha256 != record.sha256
    with pytest.raises(PartIntegrityError):
        bin_.load_tensors(record.name)
    record.path.unlink()
    assert [r.status for r in bin_.verify()] == ["missing"]


def test_fits_matches_kind_shapes_geometry_and_norm(stocked, smollm2, minilm):
    fit_names = lambda loaded, address: sorted(r.name for r in stocked.fits(loaded, address))  # noqa: E731
    assert fit_names(smollm2, "L0.attn.h8") == ["smollm2-135m-L10.attn.h3"]
    assert fit_names(smollm2, "L29.mlp") == ["smollm2-135m-L4.mlp"]
    assert fit_names(minilm, "L5") == ["minilm-l6-L2"]
    assert fit_names(minilm, "L0.attn.h0") == ["minilm-l6-L2.attn.h1"]
    assert fit_names(smollm2, "L3") == []  # no SmolLM2 layer in the bin; MiniLM's layer differs
    # A head with the same kind but another geometry does not fit.
    assert "minilm-l6-L2.attn.h1" not in fit_names(smollm2, "L0.attn.h0")


@pytest.mark.slow
def test_fits_norm_type_decides_between_same_shaped_norms(tmp_path):
    from engine.parts import PartsBin
    from engine.parts.fits import signature_mismatch

    bin_ = PartsBin(tmp_path)
    record = bin_.add_from_checkpoint("smollm2-135m", "final_norm")
    slot = dict(record.signature)
    assert signature_mismatch(slot, record.signature) is None
    assert "norm" in signature_mismatch({**slot, "norm": "layernorm"}, record.signature)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    from engine.parts import PartError, PartsBin
    from engine.parts.catalog import TABLE
    from engine.parts.extract import sha256_file
    from engine.parts.store import open_db

    bin_ = PartsBin(tmp_path)
    record = bin_.add_from_checkpoint("minilm-l6", "L0.norm1")

    def refuse(*args, **kwargs):
        raise AssertionError("the parts bin must never unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    module = bin_.load_module(record.name)
    assert isinstance(module, torch.nn.LayerNorm)
    # A pickle posing as a part (with a catalog entry that matches its hash) is refused.
    monkeypatch.undo()
    torch.save({"weight": torch.ones(384)}, record.path)
    with open_db(bin_.parts_dir) as db:
        db.table(TABLE).update({"sha256": sha256_file(record.path)})
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(PartError, match="not a readable safetensors"):
        bin_.load_tensors(record.name)


def test_checkpoint_given_as_a_single_safetensors_file(tmp_path, minilm):
    from engine.parts import PartsBin

    folder = tmp_path / "model-copy"
    folder.mkdir()
    (folder / "weights.safetensors").symlink_to(minilm.weights_path / "model.safetensors")
    (folder / "config.json").symlink_to(minilm.weights_path / "config.json")
    bin_ = PartsBin(tmp_path / "home")
    from_file = bin_.add_from_checkpoint(folder / "weights.safetensors", "L4.attn.h7", name="from-file")
    from_model = bin_.add_from_model(minilm, "L4.attn.h7", name="from-model")
    assert from_file.sha256 == from_model.sha256
    assert from_file.source["weights_path"].endswith("weights.safetensors")
