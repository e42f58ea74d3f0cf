"""The parts bin under hostile catalogs, damaged catalogs, foreign files and kills.

Classes: (1) catalog paths are untrusted — a record naming ``../..``, an absolute path or a
symlink out of ``parts/`` is refused by rm, rename, verify and load, and nothing outside is
touched; (2) catalog damage of every kind — ``parts list`` still works with one note, the
damaged copy is kept byte for byte, ``parts reindex`` recovers the parts from their files;
(3) foreign or lying safetensors files in ``parts/`` are named and left alone; (4) killed
writes leave the catalog old or new and their staging is swept by the next write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.parts import PartsBin
from engine.parts.errors import PartIntegrityError
from tests.forked import forked
from tests.robust_harness import assert_one_error, cli, tiny_llama, tree_state, write_safetensors


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("src") / "a", layers=2)


@pytest.fixture()
def bin_(garage_home, source) -> PartsBin:
    parts = PartsBin()
    parts.add_from_checkpoint(source, "L0.mlp", name="mlp0", tags=["keep"], notes="first")
    parts.add_from_checkpoint(source, "L1.attn", name="attn1")
    return parts


def catalog_doc(bin_: PartsBin) -> dict:
    return json.loads(bin_.catalog_path.read_text())


def point_record(bin_: PartsBin, name: str, file: str) -> None:
    doc = catalog_doc(bin_)
    for record in doc["parts"].values():
        if record["name"] == name:
            record["file"] = file
    bin_.catalog_path.write_text(json.dumps(doc))


# --- (1) catalog paths are untrusted -------------------------------------------------------------
@pytest.mark.parametrize("verb", ["rm", "rename", "verify", "show-load"])
@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_a_record_pointing_outside_parts_is_refused_and_nothing_outside_changes(capsys, bin_, tmp_path, where, verb):
    victim = tmp_path / "victim" / "precious.safetensors"
    victim.parent.mkdir()
    victim.write_bytes((bin_.parts_dir / "mlp0.safetensors").read_bytes())
    if where == "dotdot":
        file = os.path.relpath(victim, bin_.parts_dir)
    elif where == "absolute":
        file = str(victim)
    else:
        (bin_.parts_dir / "link.safetensors").symlink_to(victim)
        file = "link.safetensors"
    point_record(bin_, "mlp0", file)
    before = tree_state(bin_.home, victim.parent)
    if verb == "rm":
        outcome = cli(capsys, "parts", "rm", "attn1", "mlp0")  # the sound one is not removed either
    elif verb == "rename":
        outcome = cli(capsys, "parts", "rename", "mlp0", "moved")
    elif verb == "verify":
        outcome = cli(capsys, "parts", "verify")
    else:
        with pytest.raises(PartIntegrityError, match="not inside"):
            bin_.load_tensors("mlp0")
        outcome = cli(capsys, "parts", "verify", "mlp0")
    assert_one_error(outcome, "mlp0", "not inside", "reindex")
    assert tree_state(bin_.home, victim.parent) == before


def test_a_record_naming_another_parts_file_cannot_delete_it(capsys, bin_):
    point_record(bin_, "mlp0", "attn1.safetensors")
    before = tree_state(bin_.home)
    assert_one_error(cli(capsys, "parts", "rm", "mlp0"), "another record")
    assert tree_state(bin_.home) == before


# --- (2) catalog damage of every kind ------------------------------------------------------------
def _valid_record(bin_: PartsBin) -> dict:
    return next(iter(catalog_doc(bin_)["parts"].values()))


DAMAGE = {
    "garbage-bytes": lambda b: os.urandom(64) + b"\x00\xff",
    "truncated": lambda b: b.catalog_path.read_bytes()[:-25],
    "not-utf8": lambda b: b.catalog_path.read_bytes().replace(b'"first"', b'"\xff\xfe"'),
    "top-level-list": lambda b: json.dumps([1, 2, 3]).encode(),
    "table-not-a-map": lambda b: json.dumps({"parts": [1]}).encode(),
    "record-missing-file": lambda b: json.dumps({"parts": {"1": {k: v for k, v in _valid_record(b).items()
                                                                 if k != "file"}}}).encode(),
    "record-wrong-types": lambda b: json.dumps({"parts": {"1": {**_valid_record(b), "params": "many",
                                                                "tags": "x"}}}).encode(),
    "record-id-not-a-number": lambda b: json.dumps({"parts": {"abc": _valid_record(b)}}).encode(),
    "nested-bomb": lambda b: b"[" * 100_000 + b"]" * 100_000,
    "nan-number": lambda b: b.catalog_path.read_bytes().replace(b'"params": ', b'"params": NaN, "x": '),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_any_catalog_damage_lists_with_a_note_keeps_the_copy_and_reindex_recovers(capsys, bin_, damage):
    broken = DAMAGE[damage](bin_)
    bin_.catalog_path.write_bytes(broken)
    parts_before = {p.name: p.read_bytes() for p in bin_.parts_dir.glob("*.safetensors")}
    listing = cli(capsys, "parts", "list", "--json")
    assert listing.code == 0 and "Traceback" not in listing.err and json.loads(listing.out) == []
    notes = listing.err.splitlines()
    assert len(notes) == 1 and notes[0].startswith("garage: note: ") and "corrupted" in notes[0], listing.err
    kept = list(bin_.parts_dir.glob("catalog.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == broken and kept[0].name in notes[0]
    recovered = cli(capsys, "parts", "reindex", "--json")
    assert recovered.code == 0, recovered.err
    assert sorted(doc["name"] for doc in json.loads(recovered.out)) == ["attn1", "mlp0"]
    assert {p.name: p.read_bytes() for p in bin_.parts_dir.glob("*.safetensors")} == parts_before
    assert all(result.ok for result in PartsBin().verify())
    assert PartsBin().load_tensors("mlp0")  # loads back through the checked path


def test_reindex_itself_recovers_from_a_still_corrupted_catalog(capsys, bin_):
    bin_.catalog_path.write_bytes(b"\x00not json at all")
    outcome = cli(capsys, "parts", "reindex", "--json")
    assert outcome.code == 0 and sorted(d["name"] for d in json.loads(outcome.out)) == ["attn1", "mlp0"]
    assert "kept as" in outcome.err and len(list(bin_.parts_dir.glob("catalog.json.corrupt-*"))) == 1


# --- (3) foreign and lying files in parts/ -------------------------------------------------------
def test_reindex_names_foreign_and_lying_files_and_leaves_them(capsys, bin_):
    bin_.catalog_path.unlink()
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(3)}, str(bin_.parts_dir / "foreign.safetensors"))  # a real file, not a part
    write_safetensors(bin_.parts_dir / "liar.safetensors",
                      {"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 16]}}, b"\0" * 16)
    (bin_.parts_dir / "junk.safetensors").write_bytes(b"\xff" * 7)
    outside = bin_.home.parent / "outside.safetensors"  # a real part file, but outside parts/
    outside.write_bytes((bin_.parts_dir / "mlp0.safetensors").read_bytes())
    (bin_.parts_dir / "evil.safetensors").symlink_to(outside)
    before = tree_state(bin_.parts_dir)
    outcome = cli(capsys, "parts", "reindex", "--json")
    assert outcome.code == 0 and sorted(d["name"] for d in json.loads(outcome.out)) == ["attn1", "mlp0"]
    notes = outcome.err.splitlines()
    assert len(notes) == 4 and all(n.startswith("garage: note: ") for n in notes)
    assert any("evil.safetensors" in n and "not a plain file" in n for n in notes)
    assert any("foreign.safetensors" in n and "not a part" in n for n in notes)
    assert any("liar.safetensors" in n for n in notes) and any("junk.safetensors" in n for n in notes)
    after = tree_state(bin_.parts_dir)
    assert {k: v for k, v in after.items() if not k.endswith("catalog.json")} == {
        k: v for k, v in before.items() if not k.endswith("catalog.json")}


def test_a_part_file_with_a_lying_header_is_refused_on_load(capsys, bin_):
    path = bin_.parts_dir / "mlp0.safetensors"
    payload = bytearray(path.read_bytes())
    header_len = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8:8 + header_len])
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = "F64"  # the byte span no longer matches the shape
    text = json.dumps(header, separators=(",", ":")).encode().ljust(header_len)
    assert len(text) == header_len
    path.write_bytes(bytes(payload[:8]) + text + bytes(payload[8 + header_len:]))
    from engine.parts.errors import PartError

    with pytest.raises(PartError, match="not a readable safetensors"):
        from engine.parts.extract import read_part_file

        read_part_file(path.read_bytes())
    outcome = cli(capsys, "parts", "verify", "mlp0", "--json")
    assert outcome.code == 1 and json.loads(outcome.out)["results"][0]["status"] == "altered"


# --- (4) kills and staging -----------------------------------------------------------------------
CHILD = """
import sys
from pathlib import Path
from engine.parts import PartsBin
bin_ = PartsBin(Path(sys.argv[2]))
marker = Path(sys.argv[3])
for i in range(1000):
    bin_.add_from_checkpoint(sys.argv[1], f"L{i % 2}.mlp", name=f"p{i}")
    bin_.tag(f"p{i}", "t")
    marker.write_text(str(i))
"""


def _parts_added(marker: Path) -> int:
    """The child's last finished add (-1 before the first); read once, since the child rewrites it in place."""
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return -1
    return int(text) if text.strip() else -1


@pytest.mark.slow
@pytest.mark.parametrize("after", [0, 2, 4])
def test_kill_9_while_adding_parts_leaves_a_sound_catalog(tmp_path, source, after):
    home = tmp_path / "home"
    marker = tmp_path / "marker"
    child = forked(CHILD, source, home, marker)
    try:
        deadline = time.monotonic() + 180
        while _parts_added(marker) < after:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(0.05 * after)  # somewhere inside the next add
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    bin_ = PartsBin(home)
    records = bin_.list()
    assert len(records) >= after + 1
    assert all(result.ok for result in bin_.verify())  # every catalogued file whole, with its sha256
    bin_.reindex()  # a file written just before the kill (catalog not yet) is recovered, not lost
    names = {r.name for r in bin_.list()}
    files = {p.name[: -len(".safetensors")] for p in bin_.parts_dir.glob("*.safetensors")}
    assert names == files
    assert not [p for p in bin_.parts_dir.iterdir() if p.name.endswith(".garage.tmp")]  # swept by the write


def test_staging_left_by_a_dead_writer_is_swept_by_the_next_catalog_write(bin_, source):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [bin_.parts_dir / f".catalog.json.{dead.pid}.abcd.garage.tmp",
             bin_.parts_dir / f".p9.safetensors.{dead.pid}.efgh.garage.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    bin_.tag("mlp0", "again")
    assert not any(path.exists() for path in stale)
    assert bin_.get("mlp0").tags == ["again", "keep"]
