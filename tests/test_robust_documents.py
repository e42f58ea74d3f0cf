"""JSON and YAML documents from disk, parsed with limits: recipes, sessions, keymap, settings, recipe.yaml.

Class: a document that is not UTF-8, nested tens of thousands deep, an alias bomb (billion
laughs), a recursive anchor, too large, or holding a non-finite number. One loader
(engine/safe_parse.py) refuses each in bounded time and memory; the CLI says so in one line
(recipes, a build's recipe.yaml), the engine raises one ``GarageError`` (sessions), and the
TUI's files (keymap, settings) fall back with a one-line problem instead of crashing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import GarageError
from engine.safe_parse import BadDocumentError, load_json, load_yaml, loads_json, loads_yaml, read_text_limited
from tests.robust_harness import assert_one_error, cli, tree_state

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))
BOMBS: dict[str, tuple[bytes, str]] = {
    "not-utf8": (b"name: caf\xe9\nlayers: []\n", "not UTF-8"),
    "deep-flow": (b"[" * 60_000 + b"]" * 60_000, "nested"),
    "deep-block": ("".join("  " * i + f"k{i}:\n" for i in range(3000)).encode(), "nested"),
    "billion-laughs": (LAUGHS.encode(), "expands to more than"),
    "recursive-anchor": (b"layers: &l [*l]\n", "refers to itself"),
    "recursive-mapping": (b"a: &m {b: *m}\n", "refers to itself"),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_the_loader_refuses_each_bomb_quickly(bomb):
    raw, needle = BOMBS[bomb]
    with pytest.raises(BadDocumentError, match=needle):
        loads_yaml(raw, "doc")


@pytest.mark.parametrize("text,needle", [("[" * 100_000, "nested"), ('{"w": NaN}', "finite"),
                                         ('{"w": -Infinity}', "finite"), ('{"w": 1e400}', "infinity"),
                                         (b'{"w": "\xff"}', "not UTF-8")])
def test_the_json_loader_refuses_depth_non_finite_and_bad_bytes(text, needle):
    with pytest.raises(BadDocumentError, match=needle):
        loads_json(text, "doc")


def test_size_is_refused_before_reading_the_whole_file(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: 1\n" * 1000)
    with pytest.raises(BadDocumentError, match="larger than the limit of 100 bytes"):
        read_text_limited(big, "recipe", max_bytes=100)
    with pytest.raises(BadDocumentError, match="does not exist"):
        load_json(tmp_path / "missing.json")
    assert load_yaml(big, max_bytes=10_000) == {"a": 1}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_recipe_bombs_are_one_error_in_check_and_build(capsys, tmp_path, bomb):
    raw, needle = BOMBS[bomb]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_bytes(raw)
    before = tree_state(tmp_path)
    assert_one_error(cli(capsys, "recipe", "check", recipe), str(recipe))
    assert_one_error(cli(capsys, "build", recipe, "--out", tmp_path / "out"), str(recipe))
    assert tree_state(tmp_path) == before


NUMBERS = {
    "nan-weights": {"blend": ["a.L0", "a.L1"], "weights": [float("nan"), 1.0]},
    "inf-weights": {"blend": ["a.L0", "a.L1"], "weights": [float("inf"), -float("inf")]},
    "nan-t": {"blend": ["a.L0", "a.L1"], "method": "slerp", "t": float("nan")},
}


@pytest.mark.parametrize("case", sorted(NUMBERS))
def test_non_finite_blend_numbers_fail_recipe_check(capsys, tmp_path, case):
    recipe = tmp_path / "r.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump({"recipe_version": 1, "sources": {"a": "minilm-l6"}, "embed": "a",
                                      "final_norm": "a", "lm_head": "a", "layers": [NUMBERS[case]]}))
    from engine.build import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="only finite numbers"):  # refused as the document is read
        load_recipe(recipe)
    assert_one_error(cli(capsys, "recipe", "check", recipe, "--json"), str(recipe), "finite")
    # Written as JSON (NaN is not JSON; YAML reads it as text), the weights still fail the check.
    as_json = tmp_path / "r.json"
    as_json.write_text(json.dumps({"recipe_version": 1, "sources": {"a": "minilm-l6"}, "embed": "a",
                                   "final_norm": "a", "lm_head": "a", "layers": [NUMBERS[case]]}))
    problems = [p.message for p in load_recipe(as_json).problems]
    assert any("finite" in m or "between 0 and 1" in m for m in problems), problems


@pytest.mark.parametrize("layers,needle", [([{"take": "a.L0-999999999"}], "limit of 1,024 layers"),
                                           ([{"take": "a.L0"}] * 100_000, "100,000 layer entries"),
                                           ([{"take": "a.L0-600"}, {"take": "a.L0-600"}], "limit of 1,024")])
def test_absurd_layer_counts_are_refused_before_anything_is_planned(capsys, tmp_path, layers, needle):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"recipe_version": 1, "sources": {"a": "minilm-l6"}, "embed": "a",
                                  "final_norm": "a", "lm_head": "a", "layers": layers}))
    from engine.build import load_recipe

    assert any(needle in p.message for p in load_recipe(recipe).problems)
    outcome = cli(capsys, "build", recipe, "--out", tmp_path / "out")
    assert outcome.code == 2 and needle in outcome.err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("bomb", ["not-utf8", "deep-flow", "recursive-anchor"])
def test_a_built_folders_recipe_yaml_bomb_is_one_error_in_eval(capsys, tmp_path, bomb):
    folder = tmp_path / "built"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "recipe.yaml").write_bytes(BOMBS[bomb][0])
    before = tree_state(tmp_path)
    assert_one_error(cli(capsys, "eval", folder), str(folder / "recipe.yaml"))
    assert tree_state(tmp_path) == before


SESSION_BOMBS = {"not-utf8": b'{"kind": "model-garage-session", "title": "\xff"}',
                 "deep": b"[" * 100_000 + b"]" * 100_000,
                 "deep-but-parseable": b'{"kind": "model-garage-session", "notes": ' + b"[" * 500 + b"]" * 500 + b"}",
                 "truncated": b'{"kind": "model-garage-session", "version": 1, "mod'}


@pytest.mark.parametrize("bomb", sorted(SESSION_BOMBS))
def test_session_files_that_are_bombs_raise_one_session_error(tmp_path, bomb):
    from engine.sessions import SessionError, load_session

    path = tmp_path / "s.json"
    path.write_bytes(SESSION_BOMBS[bomb])
    with pytest.raises(SessionError) as caught:
        load_session(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_keymap_and_settings_bombs_fall_back_without_crashing(tmp_path, bomb):
    from garage_tui.keymap import load_keymap
    from garage_tui.settings import load_settings

    path = tmp_path / "keymap.yaml"
    path.write_bytes(BOMBS[bomb][0])
    keymap, problem = load_keymap(path)
    assert keymap == {} and problem is not None and str(path) in problem and "\n" not in problem
    settings_path = tmp_path / "settings.yaml"
    settings_path.write_bytes(BOMBS[bomb][0])
    assert load_settings(settings_path).theme == "garage"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_settings_numbers_are_ignored(tmp_path, value):
    from garage_tui.settings import load_settings

    path = tmp_path / "settings.yaml"
    path.write_text(f"structure_first_gb: {value}\ntheme: dusk\n")
    settings = load_settings(path)
    assert settings.structure_first_gb == 2.0 and settings.theme == "dusk"


def test_every_document_error_is_a_garage_error():
    assert issubclass(BadDocumentError, GarageError)
    assert Path(__file__).name.startswith("test_robust_")


def test_document_bombs_in_a_memory_capped_child(tmp_path):
    """The same bombs through real `garage` verbs in one child under an address-space cap."""
    from tests.robust_harness import run_lane

    cases = []
    for name, (raw, _) in sorted(BOMBS.items()):
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(raw)
        cases.append(["recipe", "check", str(path)])
    outcomes = run_lane(cases)
    for argv, outcome in zip(cases, outcomes, strict=True):
        assert_one_error(outcome, argv[-1])
        assert outcome.seconds < 30, (argv, outcome.seconds)
