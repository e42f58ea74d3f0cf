"""Safetensors files with lying headers, wherever the garage reads one.

Class: a header that disagrees with itself or with the file (dtype and byte span, unknown
dtype, a shape whose size overflows, offsets of the wrong type, overlapping tensors, an
absurd header length, ...). One validator (engine/safetensors_check.py) is used by model
loading, snapshots (`garage diff`), the build bench's sources and the parts bin; each lie
ends as one `garage: error:` line naming the file, exit 2, and nothing is written.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from engine.safetensors_check import BadSafetensorsError, check_bytes, check_file
from tests.robust_harness import assert_one_error, cli, recipe_file, tiny_llama, tree_state, write_safetensors

F32x4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
LIES: dict[str, tuple[dict | list, bytes, str]] = {
    "span-disagrees-with-dtype": ({"w": {**F32x4, "dtype": "F64"}}, b"\0" * 16, "needs 32 bytes"),
    "span-disagrees-with-shape": ({"w": {**F32x4, "shape": [2, 3]}}, b"\0" * 16, "needs 24 bytes"),
    "unknown-dtype": ({"w": {**F32x4, "dtype": "Q4_K"}}, b"\0" * 16, "unknown dtype"),
    "overflowing-shape": ({"w": {**F32x4, "shape": [2**40, 2**40, 2**40]}}, b"\0" * 16, "more bytes"),
    "offsets-as-strings": ({"w": {**F32x4, "data_offsets": ["0", "16"]}}, b"\0" * 16, "data_offsets"),
    "offsets-as-floats": ({"w": {**F32x4, "data_offsets": [0.0, 16.0]}}, b"\0" * 16, "data_offsets"),
    "negative-offset": ({"w": {**F32x4, "data_offsets": [-16, 0]}}, b"\0" * 16, "data_offsets"),
    "shape-of-bools": ({"w": {**F32x4, "shape": [True, 4]}}, b"\0" * 16, "shape"),
    "offsets-past-the-end": ({"w": {**F32x4, "shape": [8], "data_offsets": [0, 32]}}, b"\0" * 16, "truncated"),
    "overlapping": ({"a": F32x4, "b": {**F32x4, "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, "overlap"),
    "header-a-list": ([1, 2], b"", "not a JSON object"),
    "metadata-not-text": ({"__metadata__": {"k": 1}, "w": F32x4}, b"\0" * 16, "__metadata__"),
}


def lying_file(path: Path, lie: str) -> Path:
    header, data, _ = LIES[lie]
    return write_safetensors(path, header, data)  # type: ignore[arg-type]


@pytest.mark.parametrize("lie", sorted(LIES))
def test_the_validator_names_each_lie(tmp_path, lie):
    path = lying_file(tmp_path / "x.safetensors", lie)
    with pytest.raises(BadSafetensorsError, match=LIES[lie][2]) as caught:
        check_file(path)
    assert str(path) in str(caught.value)
    with pytest.raises(BadSafetensorsError):
        check_bytes(path.read_bytes(), "part file")


@pytest.mark.parametrize("raw", [b"", b"\x01\x02", struct.pack("<Q", 2**63) + b"{}",
                                 struct.pack("<Q", 4) + b"\xff\xfe{}", struct.pack("<Q", 3) + b"[[["])
def test_absurd_header_lengths_and_bytes_are_refused_without_reading_them(tmp_path, raw):
    path = tmp_path / "y.safetensors"
    path.write_bytes(raw)
    with pytest.raises(BadSafetensorsError, match="re-download or re-export"):
        check_file(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("src") / "a", layers=2)


@pytest.mark.parametrize("lie", ["span-disagrees-with-dtype", "unknown-dtype", "overflowing-shape",
                                 "offsets-as-strings", "overlapping"])
def test_lying_model_weights_are_one_error_naming_the_file(capsys, tmp_path, source, lie):
    folder = tmp_path / "model"
    shutil.copytree(source, folder)
    weights = lying_file(folder / "model.safetensors", lie)
    before = tree_state(tmp_path)
    assert_one_error(cli(capsys, "inspect", folder, "--json"), str(weights), "re-download")
    assert_one_error(cli(capsys, "run", folder, "--prompt", "hi"), str(weights))
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("lie", ["span-disagrees-with-shape", "unknown-dtype", "overflowing-shape",
                                 "offsets-as-floats", "metadata-not-text", "header-a-list"])
def test_lying_snapshots_are_one_error_in_diff(capsys, tmp_path, lie):
    import torch

    from engine.snapshots import save_tensors

    good = save_tensors(tmp_path / "good.safetensors", {"L0.out": torch.ones(2, 3)}, {"model": "m"})
    bad = lying_file(tmp_path / "bad.safetensors", lie)
    before = tree_state(tmp_path)
    assert_one_error(cli(capsys, "diff", good, bad), str(bad))
    assert_one_error(cli(capsys, "diff", bad, good), str(bad))
    assert tree_state(tmp_path) == before


def test_a_snapshot_with_garage_metadata_that_is_not_an_object_is_refused(capsys, tmp_path):
    bad = write_safetensors(tmp_path / "m.safetensors", {"__metadata__": {"garage": "[1, 2]"}, "w": F32x4},
                            b"\0" * 16)
    assert_one_error(cli(capsys, "diff", bad, bad), str(bad), "not an object")
    bomb = write_safetensors(tmp_path / "d.safetensors", {"__metadata__": {"garage": "[" * 50_000}, "w": F32x4},
                             b"\0" * 16)
    assert_one_error(cli(capsys, "diff", bomb, bomb), str(bomb), "nested deeper")


@pytest.mark.parametrize("lie", ["span-disagrees-with-dtype", "unknown-dtype", "offsets-past-the-end"])
def test_a_recipe_source_with_lying_weights_builds_nothing(capsys, tmp_path, source, lie):
    folder = tmp_path / "b"
    shutil.copytree(source, folder)
    weights = lying_file(folder / "model.safetensors", lie)
    recipe = recipe_file(tmp_path, {"a": str(source), "b": str(folder)}, [{"take": "a.L0"}, {"take": "b.L1"}])
    out = tmp_path / "out"
    outcome = cli(capsys, "build", recipe, "--out", out)
    assert outcome.code == 2 and "Traceback" not in outcome.err and str(weights) in outcome.err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_lying_part_file_is_refused_by_the_parts_reader(tmp_path):
    from engine.parts.errors import PartError
    from engine.parts.extract import read_part_file

    for lie in ("span-disagrees-with-dtype", "overflowing-shape", "offsets-as-strings"):
        payload = lying_file(tmp_path / f"{lie}.safetensors", lie).read_bytes()
        with pytest.raises(PartError, match="not a readable safetensors"):
            read_part_file(payload)
    nested = write_safetensors(tmp_path / "n.safetensors", {"__metadata__": {"garage_part": "[" * 100_000},
                                                           "w": F32x4}, b"\0" * 16)
    with pytest.raises(PartError, match="nested deeper"):
        read_part_file(nested.read_bytes())
    assert json.loads(json.dumps(LIES["header-a-list"][0])) == [1, 2]
