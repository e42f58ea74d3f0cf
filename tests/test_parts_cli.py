"""``garage extract`` and ``garage parts``: outputs, bad input (exit 2, nothing lost), concurrency."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def garage(capsys, *argv: str) -> tuple[int, str, str]:
    from garage_tui.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_extract_list_show_tag_note_verify_rm(garage_home, capsys):
    code, out, _ = garage(capsys, "extract", "minilm-l6", "L2.attn.h1", "--tag", "heads", "--json")
    assert code == 0 and json.loads(out)["name"] == "minilm-l6-L2.attn.h1"
    code, out, _ = garage(capsys, "extract", "smollm2-135m", "L10.mlp", "--name", "smol-mlp", "--json")
    assert code == 0 and json.loads(out)["params"] == 3 * 576 * 1536
    code, out, _ = garage(capsys, "parts", "list", "--kind", "head", "--json")
    assert [doc["name"] for doc in json.loads(out)] == ["minilm-l6-L2.attn.h1"]
    assert garage(capsys, "parts", "tag", "smol-mlp", "mine", "swap")[0] == 0
    assert garage(capsys, "parts", "note", "smol-mlp", "from layer ten")[0] == 0
    code, out, _ = garage(capsys, "parts", "show", "smol-mlp", "--json")
    shown = json.loads(out)
    assert shown["tags"] == ["mine", "swap"] and shown["notes"] == "from layer ten"
    code, out, _ = garage(capsys, "parts", "fits", "smollm2-135m", "L2.mlp", "--json")
    assert [doc["name"] for doc in json.loads(out)["parts"]] == ["smol-mlp"]
    code, out, _ = garage(capsys, "parts", "verify", "--json")
    assert code == 0 and json.loads(out)["problems"] == 0
    assert garage(capsys, "parts", "rename", "smol-mlp", "mlp-10")[0] == 0
    assert garage(capsys, "parts", "rm", "mlp-10")[0] == 0
    assert not (garage_home / "parts" / "mlp-10.safetensors").exists()
    code, out, _ = garage(capsys, "parts", "list", "--json")
    assert [doc["name"] for doc in json.loads(out)] == ["minilm-l6-L2.attn.h1"]


def test_verify_cli_flags_a_one_byte_change(garage_home, capsys):
    assert garage(capsys, "extract", "minilm-l6", "L3.norm1", "--name", "n3")[0] == 0
    path = garage_home / "parts" / "n3.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x80
    path.write_bytes(bytes(data))
    code, out, _ = garage(capsys, "parts", "verify", "--json")
    report = json.loads(out)
    assert code == 1 and report["problems"] == 1 and report["results"][0]["status"] == "altered"


@pytest.mark.parametrize("argv, needle", [
    pytest.param(("extract", "smollm2-135m", "L10.atn"), "unknown address 'L10.atn'", marks=pytest.mark.slow),
    pytest.param(("extract", "smollm2-135m", "L40.mlp"), "out of range", marks=pytest.mark.slow),
    (("extract", "minilm-l6", "L2", "--name", "../../escape"), "'..'"),
    (("extract", "minilm-l6", "L2", "--name", "sub/dir"), "'/'"),
    (("parts", "show", "../catalog"), "'..'"),
    (("parts", "rm", "no-such-part"), "no part named"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(garage_home, capsys, argv, needle):
    assert garage(capsys, "extract", "minilm-l6", "L0.norm1", "--name", "keep")[0] == 0
    before = snapshot(garage_home)
    code, _, err = garage(capsys, *argv)
    assert code == 2
    assert err.startswith("garage: error: ") and err.count("\n") == 1 and needle in err
    assert snapshot(garage_home) == before
    assert not any(p.name == "escape.safetensors" for p in garage_home.parent.rglob("*"))


def test_corrupted_catalog_is_kept_aside_with_a_clear_error(garage_home, capsys):
    assert garage(capsys, "extract", "minilm-l6", "L0.norm1", "--name", "keep")[0] == 0
    catalog = garage_home / "parts" / "catalog.json"
    broken = catalog.read_bytes()[:-40] + b"\x00garbage"
    catalog.write_bytes(broken)
    code, _, err = garage(capsys, "extract", "minilm-l6", "L1.norm1", "--name", "new")
    assert code == 2 and "corrupted" in err and err.count("\n") == 1
    kept = list((garage_home / "parts").glob("catalog.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == broken  # every byte kept, nothing overwritten
    assert kept[0].name in err
    assert (garage_home / "parts" / "keep.safetensors").is_file()
    assert not (garage_home / "parts" / "new.safetensors").exists()
    # The next command starts a fresh catalog and the kept file stays untouched.
    assert garage(capsys, "extract", "minilm-l6", "L1.norm1", "--name", "new")[0] == 0
    assert kept[0].read_bytes() == broken
    # The orphaned part file is catalogued again from the metadata inside it, and still runs.
    code, out, _ = garage(capsys, "parts", "reindex", "--json")
    assert code == 0 and [doc["name"] for doc in json.loads(out)] == ["keep"]
    from engine.parts import PartsBin

    bin_ = PartsBin()
    assert bin_.get("keep").address == "L0.norm1" and all(r.ok for r in bin_.verify())
    assert type(bin_.load_module("keep")).__name__ == "LayerNorm"


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` unwritable even for root (chattr +i), or by mode bits for other users."""
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "-R", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root without chattr +i: cannot make a folder read-only here")
        try:
            yield
        finally:
            subprocess.run([chattr, "-R", "-i", str(folder)], check=True)
    else:
        paths = [folder, *folder.rglob("*")]
        modes = {p: p.stat().st_mode for p in paths}
        for p in reversed(paths):
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p in paths:
                p.chmod(modes[p])


def test_read_only_home_is_a_clear_error_and_keeps_the_bin(garage_home, capsys):
    assert garage(capsys, "extract", "minilm-l6", "L0.norm1", "--name", "keep")[0] == 0
    before = snapshot(garage_home)
    with read_only(garage_home):
        code, _, err = garage(capsys, "extract", "minilm-l6", "L1.norm1", "--name", "new")
        assert code == 2 and "not writable" in err and err.count("\n") == 1
        code, _, err = garage(capsys, "parts", "tag", "keep", "x")
        assert code == 2 and "not writable" in err
        code, out, _ = garage(capsys, "parts", "list", "--json")  # reading still works
        assert code == 0 and [doc["name"] for doc in json.loads(out)] == ["keep"]
    assert snapshot(garage_home) == before


@pytest.mark.slow
def test_two_processes_adding_50_parts_each_lose_nothing(garage_home, tmp_path):
    script = textwrap.dedent("""
        import sys
        from engine.parts import PartsBin
        bin_ = PartsBin()
        worker = sys.argv[1]
        for i in range(50):
            bin_.add_from_checkpoint("minilm-l6", f"L{i % 6}.norm{1 + i % 2}", name=f"w{worker}-{i:02d}")
    """)
    env = {**os.environ, "GARAGE_HOME": str(garage_home), "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen([sys.executable, "-c", script, str(n)], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in (1, 2)]
    outputs = [w.communicate(timeout=180) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err.decode()[-2000:] for _, err in outputs]
    from engine.parts import PartsBin

    records = PartsBin(garage_home).list()
    assert len(records) == 100
    assert {r.name for r in records} == {f"w{n}-{i:02d}" for n in (1, 2) for i in range(50)}
    assert all(r.ok for r in PartsBin(garage_home).verify())
    assert len(list((garage_home / "parts").glob("*.safetensors"))) == 100


@pytest.mark.slow
def test_extract_with_load_writes_the_same_bytes_as_from_the_checkpoint(garage_home, capsys):
    code, out, _ = garage(capsys, "extract", "minilm-l6", "L5.attn", "--load", "--name", "loaded", "--json")
    assert code == 0
    loaded = json.loads(out)
    code, out, _ = garage(capsys, "extract", "minilm-l6", "L5.attn", "--name", "read", "--json")
    read = json.loads(out)
    assert loaded["source"]["kind"] == "bundled-folder" and read["source"]["kind"] == "checkpoint"
    assert loaded["sha256"] == read["sha256"]
