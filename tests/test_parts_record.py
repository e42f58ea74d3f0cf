"""The catalog record inside each part file: reindex after a lost catalog brings back tags, notes and source.

The part's sha256 is a *content* digest: tensors and what the part is (address, kind,
fragment), not the record, so the same tensors keep one digest whatever their tags, notes
or source; tag and note edits rewrite the record in the file atomically and verify stays ok.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from engine.parts.file_record import RECORD_KEY, content_digest, digest_matches


def _header(path):
    payload = path.read_bytes()
    size = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8:8 + size])


def test_reindex_after_a_lost_catalog_keeps_tags_notes_and_source(tmp_path):
    from engine.parts import PartsBin

    bin_ = PartsBin(tmp_path)
    first = bin_.add_from_checkpoint("minilm-l6", "L1.norm2", name="norm", tags=["small", "ln"], notes="first")
    second = bin_.add_from_checkpoint("minilm-l6", "L0.attn.h2", name="head")
    bin_.tag("head", "keep")
    bin_.note("head", "a head, noted later")
    bin_.untag("norm", "ln")
    before = {r.name: r.to_dict() for r in bin_.list()}
    assert before["head"]["tags"] == ["keep"] and before["norm"]["tags"] == ["small"]
    # the edits live in the file's own header, and the file still verifies and loads
    record = json.loads(_header(second.path)["__metadata__"][RECORD_KEY])
    assert record["notes"] == "a head, noted later" and record["source"]["kind"] == "checkpoint"
    assert all(r.ok for r in bin_.verify())
    assert bin_.load_tensors("head")
    os.replace(bin_.catalog_path, tmp_path / "lost.json")
    recovered = {r.name: r.to_dict() for r in PartsBin(tmp_path).reindex()}
    assert sorted(recovered) == ["head", "norm"]
    for name, doc in before.items():
        for key in ("tags", "notes", "source", "created_at", "sha256", "size_bytes", "address", "kind", "params"):
            assert recovered[name][key] == doc[key], (name, key)
    assert "reindexed" not in recovered["norm"]["tags"] and recovered["norm"]["notes"] == "first"
    assert first.source["name"] == recovered["norm"]["source"]["name"] == "minilm-l6"
    assert all(r.ok for r in PartsBin(tmp_path).verify())


def test_the_digest_covers_the_tensors_not_the_record(tmp_path):
    from engine.parts import PartIntegrityError, PartsBin

    bin_ = PartsBin(tmp_path)
    plain = bin_.add_from_checkpoint("minilm-l6", "L2.norm1", name="plain")
    tagged = bin_.add_from_checkpoint("minilm-l6", "L2.norm1", name="tagged", tags=["x"], notes="y")
    # one digest for the same tensors, though the files differ (their records do)
    assert plain.sha256 == tagged.sha256
    assert plain.path.read_bytes() != tagged.path.read_bytes()
    assert bin_.note("plain", "changed").sha256 == plain.sha256
    # a changed tensor byte is caught, before and after a tag edit is refused
    data = bytearray(tagged.path.read_bytes())
    data[-3] ^= 0x01
    tagged.path.write_bytes(bytes(data))
    assert [r.status for r in bin_.verify("tagged")] == ["altered"]
    with pytest.raises(PartIntegrityError, match="altered"):
        bin_.tag("tagged", "z")
    assert bin_.get("tagged").tags == ["x"]  # nothing changed by the refused edit
    assert tagged.path.read_bytes() == bytes(data)


def test_a_file_from_before_records_keeps_its_whole_file_digest(tmp_path):
    from engine.parts import PartsBin
    from engine.parts.catalog import TABLE
    from engine.parts.extract import read_part_file
    from engine.parts.store import open_db

    bin_ = PartsBin(tmp_path)
    record = bin_.add_from_checkpoint("minilm-l6", "L3.norm2", name="old")
    # rewrite it as the bin did before: no record in the header, whole-file sha256 in the catalog
    tensors, meta = read_part_file(record.path.read_bytes())
    from safetensors.torch import save

    legacy = save(tensors, metadata={"garage_part": json.dumps(meta, sort_keys=True, separators=(",", ":"))})
    record.path.write_bytes(legacy)
    whole = hashlib.sha256(legacy).hexdigest()
    with open_db(bin_.parts_dir) as db:
        db.table(TABLE).update({"sha256": whole})
    assert digest_matches(whole, legacy) and content_digest(legacy) != whole
    assert all(r.ok for r in bin_.verify()) and bin_.load_tensors("old")
    # a tag edit writes the record in and moves the catalog to the content digest
    tagged = bin_.tag("old", "legacy")
    assert tagged.sha256 == content_digest(tagged.path.read_bytes()) == record.sha256
    assert all(r.ok for r in bin_.verify())
    os.replace(bin_.catalog_path, tmp_path / "lost.json")
    back = PartsBin(tmp_path).reindex()
    assert [r.tags for r in back] == [["legacy"]]
