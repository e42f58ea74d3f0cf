"""Validation refuses bad recipes before any weight is read, naming each problem's line.

"No weight read" is checked at the file level: while validating, every read from a
``.safetensors`` file is counted and must stay inside that file's header; memory maps and
safetensors' own loaders are made to fail.
"""

from __future__ import annotations

import builtins
import io
import json
import mmap
import struct
from pathlib import Path

import pytest

from engine.build import build, load_recipe, validate_recipe
from engine.build.recipe import RecipeError

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


class _CountingFile:
    def __init__(self, handle, counter: dict, key: str) -> None:
        self._handle, self._counter, self._key = handle, counter, key

    def _add(self, amount: int) -> None:
        position = self._handle.tell()
        self._counter[self._key] = max(self._counter.get(self._key, 0), position)
        del amount

    def read(self, *args):
        data = self._handle.read(*args)
        self._add(len(data))
        return data

    def readinto(self, buffer):
        count = self._handle.readinto(buffer)
        self._add(count or 0)
        return count

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.fixture()
def no_weight_reads(monkeypatch):
    """Track the furthest byte read of every .safetensors file; forbid maps and loaders."""
    from engine.bundled import bundled_path
    from engine.gguf_cache import converted_folder

    converted_folder(bundled_path("smollm2-135m"))  # the one-time GGUF conversion is not validation
    furthest: dict[str, int] = {}
    real_open = builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith(".safetensors") and "r" in mode:
            return _CountingFile(handle, furthest, str(file))
        return handle

    def refuse(*args, **kwargs):
        raise AssertionError("validation tried to load weights")

    import safetensors
    import safetensors.torch

    # imported before the patch: its `from safetensors import safe_open` would otherwise bind the
    # refusing stand-in for the rest of the session and break later loads
    import transformers.modeling_utils  # noqa: F401

    import engine.build.sources as sources_module

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(mmap, "mmap", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(sources_module, "read_tensor", refuse)
    yield furthest
    for file, position in furthest.items():
        with real_open(file, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
        assert position <= 8 + header_len, f"read {position} bytes of {file}, past its {8 + header_len}-byte header"


def messages(report) -> str:
    return "\n".join(str(p) for p in report.problems)


@pytest.mark.slow  # the bundled SmolLM2's GGUF conversion (cached once per run)
def test_mixed_architectures_refused_before_reading_weights(no_weight_reads):
    report = validate_recipe(load_recipe(RECIPES / "invalid-mixed-architectures.yaml"))
    assert not report.ok and report.plan is None
    text = messages(report)
    assert "invalid-mixed-architectures.yaml line 14 (layers[1].take)" in text
    assert "'mini' is a bert model but the base 'smol' is llama" in text
    assert "hidden size differs at this seam: 'mini' has 384, 'smol' has 576" in text
    assert len(report.problems) >= 3  # all problems at once, not only the first
    assert no_weight_reads, "the check should still have read the safetensors headers"


@pytest.mark.slow  # the bundled SmolLM2's GGUF conversion (cached once per run)
def test_good_recipe_is_planned_from_headers_only(no_weight_reads):
    report = validate_recipe(load_recipe(RECIPES / "smollm2-frankenmerge.yaml"))
    assert report.ok, messages(report)
    assert len(report.recipe.layers) == 38 and report.plan.layer_origins[16] == "smol.L8"
    per_layer = (2 * 576 * 576 + 2 * 192 * 576) + 3 * 576 * 1536 + 2 * 576  # attention, gated MLP, two norms
    assert report.plan.param_count == 134_515_008 + 8 * per_layer  # eight more SmolLM2 layers
    assert report.plan.largest_tensor_bytes == 49152 * 576 * 4  # the embedding matrix


SMOL_HEADS = """\
recipe_version: 1
name: bad-heads
sources:
  smol: smollm2-135m
embed: smol
final_norm: smol
lm_head: smol
layers:
  - take: smol.L0-9
  - take: smol.L10
    heads:
      - {head: 9, from: smol.L11.h3}
  - take: smol.L11
    heads:
      - {head: 3, from: smol.L12.h12, kv: keep}
  - take: smol.L12-29
"""


@pytest.mark.slow  # the bundled SmolLM2's GGUF conversion (cached once per run)
def test_wrong_head_index_refused(no_weight_reads):
    report = validate_recipe(load_recipe(SMOL_HEADS))
    assert not report.ok
    text = messages(report)
    assert "line 12 (layers[1].heads[0].head): head 9 does not exist: the output layers have heads h0-h8" in text
    assert "line 15 (layers[2].heads[0].from): 'smol' layers have heads h0-h8; h12 does not exist" in text


MISSING = """\
recipe_version: 1
name: missing
sources:
  smol: smollm2-135m
  ghost: /no/such/model/folder
embed: smol
final_norm: smol
lm_head: smol
layers:
  - take: smol.L0-28
  - take: ghost.L3
  - take: other.L1
  - take: smol.L99
"""


@pytest.mark.slow  # the bundled SmolLM2's GGUF conversion (cached once per run)
def test_missing_source_refused_with_every_problem_listed(no_weight_reads):
    report = validate_recipe(load_recipe(MISSING))
    text = messages(report)
    assert "line 5 (sources.ghost): source 'ghost' (/no/such/model/folder) cannot be used: no such model" in text
    assert "line 12 (layers[2].take): 'other' is not a source of this recipe" in text
    assert "line 13 (layers[3].take): 'smol' has layers L0-L29; L99 does not exist" in text
    assert len(report.problems) == 3


@pytest.mark.slow  # the bundled SmolLM2's GGUF conversion (cached once per run)
def test_schema_problems_name_their_lines():
    text = "recipe_version: 2\nsources: {a: smollm2-135m}\nembed: a\nlayers:\n  - take: a.L3-1\n  - blend: [a.L1]\n"
    recipe = load_recipe(text)
    listed = "\n".join(str(p) for p in recipe.problems)
    assert "line 1 (recipe_version): recipe_version must be 1, got 2" in listed
    assert "line 5 (layers[0].take): range a.L3-1 runs backwards" in listed
    assert "line 6 (layers[1].blend): blend wants a list of two or more layers" in listed
    report = validate_recipe(recipe)
    assert "the recipe must name the source of 'final_norm' explicitly" in messages(report)


@pytest.mark.slow  # the bundled SmolLM2's GGUF conversion (cached once per run)
def test_build_refuses_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(RecipeError, match="refused .*'mini' is a bert model"):
        build(load_recipe(RECIPES / "invalid-mixed-architectures.yaml"), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # the bundled SmolLM2's GGUF conversion (cached once per run)
def test_recipe_check_cli_lists_problems_and_exits_2(capsys):
    from garage_tui.cli import main

    code = main(["recipe", "check", str(RECIPES / "invalid-mixed-architectures.yaml"), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 2 and document["ok"] is False
    assert {p["line"] for p in document["problems"]} == {14}
    code = main(["recipe", "check", str(RECIPES / "smollm2-head-transplant.yaml")])
    assert code == 0 and "is valid: 30 layers" in capsys.readouterr().out


def test_hub_source_offline_says_so(monkeypatch):
    from engine.build import sources

    monkeypatch.setattr("engine.loading._hub_reachable", lambda: False)
    with pytest.raises(sources.SourceError, match="not in the local cache and the model hub cannot be reached"):
        sources.locate_folder("garage-test/not-cached-anywhere")


def test_hub_source_is_downloaded_once_when_the_hub_answers(monkeypatch, tmp_path):
    """Users have internet: a hub id missing from the cache is fetched (headers, configs, weights)."""
    import huggingface_hub

    from engine.build import sources

    calls = []

    def fake_snapshot(repo_id, local_files_only=False, allow_patterns=None):
        calls.append(local_files_only)
        if local_files_only:
            raise FileNotFoundError("not cached")
        assert "*.safetensors" in allow_patterns and "*.json" in allow_patterns
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr("engine.loading._hub_reachable", lambda: True)
    assert sources.locate_folder("org/model") == ("hub", tmp_path)
    assert calls == [True, False]
