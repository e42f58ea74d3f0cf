"""Model folders with absurd configs, damaged small files and pickled checkpoints.

Classes: (1) configs with absurd sizes are refused before anything is allocated, on the meta
device too, with the limit in the message (run in a child under an address-space cap, so a
config that slipped through would fail as MemoryError, not pass); (2) truncated or malformed
``config.json``, ``model.safetensors.index.json`` and ``tokenizer.json`` in a model folder or
a recipe source name the file; (3) a folder holding only ``pytorch_model.bin`` says pickles
are not opened and how to convert one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.errors import GarageError
from engine.limits import MAX_HIDDEN, LimitError, check_config_sizes
from tests.robust_harness import assert_one_error, cli, recipe_file, run_lane, tiny_llama, tree_state


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tiny_llama(tmp_path_factory.mktemp("src") / "a", layers=2)
    return folder


def variant(source: Path, folder: Path, **changes) -> Path:
    shutil.copytree(source, folder)
    doc = json.loads((folder / "config.json").read_text())
    doc.update(changes)
    (folder / "config.json").write_text(json.dumps(doc))
    return folder


ABSURD = {
    "hidden-1e9": ({"hidden_size": 10**9}, "hidden_size"),
    "layers-1e7": ({"num_hidden_layers": 10**7}, "num_hidden_layers"),
    "vocab-1e12": ({"vocab_size": 10**12}, "vocab_size"),
    "intermediate-2e40": ({"intermediate_size": 2**40}, "intermediate_size"),
    "negative-heads": ({"num_attention_heads": -4}, "num_attention_heads"),
    "hidden-as-text": ({"hidden_size": "huge"}, "hidden_size"),
    "params-product": ({"hidden_size": 60_000, "num_hidden_layers": 1_000, "intermediate_size": 240_000},
                       "parameters"),
}


def test_absurd_configs_are_refused_before_allocating_in_a_capped_child(tmp_path, source):
    cases, needles = [], []
    for key, (changes, needle) in sorted(ABSURD.items()):
        folder = variant(source, tmp_path / key, **changes)
        cases += [["inspect", str(folder), "--structure-only", "--json"], ["inspect", str(folder), "--json"],
                  ["inspect", str(folder / "config.json"), "--json"]]
        extra = "not a whole number" if key == "hidden-as-text" else "limit"
        needles += [(needle, str(folder / "config.json"), extra)] * 3
    recipe = recipe_file(tmp_path, {"a": str(source), "b": str(tmp_path / "hidden-1e9")},
                         [{"take": "a.L0"}, {"take": "b.L1"}])
    cases.append(["build", str(recipe), "--out", str(tmp_path / "out")])
    needles.append(("hidden_size", "limit"))
    before = tree_state(tmp_path)
    outcomes = run_lane(cases)
    for argv, outcome, wanted in zip(cases, outcomes, needles, strict=True):
        assert outcome.code == 2, (argv, outcome)
        assert_one_error(outcome, *wanted)
        assert outcome.seconds < 30, (argv, outcome.seconds)
    assert tree_state(tmp_path) == before


def test_the_config_check_names_the_limit_for_dicts_and_transformers_configs():
    from transformers import LlamaConfig

    with pytest.raises(LimitError, match=f"0 to {MAX_HIDDEN:,}"):
        check_config_sizes({"hidden_size": MAX_HIDDEN + 1}, "cfg")
    with pytest.raises(LimitError, match="num_hidden_layers"):
        check_config_sizes(LlamaConfig(num_hidden_layers=10**7, hidden_size=8, num_attention_heads=1), "cfg")
    with pytest.raises(LimitError, match="text_config"):
        check_config_sizes({"text_config": {"hidden_size": float("inf")}}, "cfg text_config")
    check_config_sizes(LlamaConfig(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008), "7B")


DAMAGED = {
    "config-truncated": ("config.json", lambda raw: raw[: len(raw) // 2], "not valid JSON"),
    "config-not-utf8": ("config.json", lambda raw: raw.replace(b'"llama"', b'"ll\xffma"'), "not UTF-8"),
    "config-a-list": ("config.json", lambda raw: b"[1, 2, 3]", "not a JSON object"),
    "config-nested-bomb": ("config.json", lambda raw: b"[" * 200_000 + b"]" * 200_000, "nested deeper"),
    "config-nan": ("config.json", lambda raw: raw.replace(b'"rms_norm_eps": 1e-06', b'"rms_norm_eps": NaN'),
                   "finite"),
    "index-truncated": ("model.safetensors.index.json", lambda raw: b'{"metadata": {}, "weight_map": {"a": "mo',
                        "not valid JSON"),
    "index-no-weight-map": ("model.safetensors.index.json", lambda raw: b'{"metadata": {}}', "weight_map"),
    "index-missing-shard": ("model.safetensors.index.json",
                            lambda raw: b'{"weight_map": {"x": "model-00009-of-00009.safetensors"}}', "missing"),
    "index-escapes-folder": ("model.safetensors.index.json",
                             lambda raw: b'{"weight_map": {"x": "../../etc/passwd.safetensors"}}',
                             "not a .safetensors file in"),
    "tokenizer-truncated": ("tokenizer.json", lambda raw: b'{"version": "1.0", "model": {"type": "BPE", "vo',
                            "not valid JSON"),
    "tokenizer-not-utf8": ("tokenizer.json", lambda raw: b'{"version": "\xff"}', "not UTF-8"),
    "tokenizer-a-list": ("tokenizer.json", lambda raw: b"[]", "not a JSON object"),
}


def damaged_folder(source: Path, folder: Path, case: str) -> Path:
    shutil.copytree(source, folder)
    name, damage, _ = DAMAGED[case]
    path = folder / name
    path.write_bytes(damage(path.read_bytes() if path.exists() else b""))
    return path


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_small_files_of_a_model_folder_are_one_error_naming_the_file(capsys, tmp_path, source, case):
    path = damaged_folder(source, tmp_path / "m", case)
    before = tree_state(tmp_path)
    assert_one_error(cli(capsys, "inspect", tmp_path / "m", "--json"), str(path), DAMAGED[case][2])
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("case", ["config-truncated", "config-nested-bomb", "index-missing-shard",
                                  "tokenizer-not-utf8"])
def test_damaged_small_files_of_a_recipe_source_stop_the_build(capsys, tmp_path, source, case):
    path = damaged_folder(source, tmp_path / "b", case)
    recipe = recipe_file(tmp_path, {"a": str(source), "b": str(tmp_path / "b")}, [{"take": "a.L0"}, {"take": "b.L1"}])
    outcome = cli(capsys, "build", recipe, "--out", tmp_path / "out")
    assert outcome.code == 2 and "Traceback" not in outcome.err and str(path) in outcome.err, outcome.err
    assert not (tmp_path / "out").exists()


def _pickle_only(source: Path, folder: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    folder.mkdir()
    shutil.copy(source / "config.json", folder / "config.json")
    torch.save(load_file(source / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def test_a_pickle_only_folder_says_pickles_are_not_opened_and_how_to_convert(capsys, tmp_path, source):
    folder = _pickle_only(source, tmp_path / "pickled")
    before = tree_state(tmp_path)
    for argv in (("inspect", folder, "--json"), ("run", folder, "--prompt", "hi")):
        line = assert_one_error(cli(capsys, *argv), "pytorch_model.bin", "never opens pickles", "save_file")
        assert "weights_only=True" in line
    recipe = recipe_file(tmp_path, {"a": str(source), "b": str(folder)}, [{"take": "a.L0"}, {"take": "b.L1"}])
    outcome = cli(capsys, "build", recipe, "--out", tmp_path / "out")
    assert outcome.code == 2 and "never opens pickles" in outcome.err
    assert tree_state(tmp_path) == {**before, **{k: v for k, v in tree_state(tmp_path).items() if k not in before}}


def test_the_structure_of_a_pickle_only_folder_still_opens(capsys, tmp_path, source):
    """Structure-only reads config.json alone, so a pickled checkpoint does not stop it."""
    folder = _pickle_only(source, tmp_path / "pickled")
    outcome = cli(capsys, "inspect", folder, "--structure-only", "--json")
    assert outcome.code == 0 and json.loads(outcome.out)["structure_only"] is True


def test_every_refusal_here_is_a_garage_error():
    assert issubclass(LimitError, GarageError)


@pytest.mark.parametrize("override", [{"hidden_size": 10**9}, {"intermediate_size": 10**9},
                                      {"vocab_size": 10**12}, {"num_attention_heads": 10**6}])
def test_absurd_config_overrides_in_a_recipe_are_refused_before_the_meta_model(capsys, tmp_path, source, override):
    recipe = recipe_file(tmp_path, {"a": str(source)}, [{"take": "a.L0-1"}], config=override)
    from engine.build import validate_recipe
    from engine.build.recipe_parse import load_recipe

    report = validate_recipe(load_recipe(recipe))
    key = next(iter(override))
    assert not report.ok and any(key in p.message and "limit" in p.message for p in report.problems)
    outcome = cli(capsys, "build", recipe, "--out", tmp_path / "out")
    assert outcome.code == 2 and key in outcome.err and "Traceback" not in outcome.err
    assert not (tmp_path / "out").exists()
