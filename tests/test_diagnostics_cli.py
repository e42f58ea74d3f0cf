"""The diagnostics verbs: snapshot, diff, analyze, steer (in-process, on the session fixtures)."""

from __future__ import annotations

import json

import pytest

from garage_tui.cli import main
from garage_tui.commands import analyze_cmd, snapshot_cmd, steer_cmd


@pytest.fixture()
def use_model(monkeypatch, request):
    """Point the verbs at a session fixture instead of reopening the model from disk."""

    def use(name: str):
        loaded = request.getfixturevalue(name)
        for module in (analyze_cmd, snapshot_cmd, steer_cmd):
            monkeypatch.setattr(module, "open_from_args", lambda args, **kw: loaded)
        return loaded

    return use


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_snapshot_and_diff(use_model, tmp_path, capsys):
    use_model("smollm2")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    prompt = "The capital of France is"
    assert main(["snapshot", "smollm2-135m", "--prompt", prompt, "--all", "--out", str(a)]) == 0
    assert "saved 91 states" in capsys.readouterr().out
    assert main(["snapshot", "smollm2-135m", "--prompt", prompt, "--ablate", "L20.mlp", "--out", str(b), "--json"]) == 0
    written = _json(capsys)
    assert written["interventions"] == [{"kind": "ablate", "address": "L20.mlp", "mode": "zero"}]
    assert main(["diff", str(a), str(a), "--json"]) == 0
    assert all(e["max_abs_diff"] == 0 for e in _json(capsys)["entries"])
    assert main(["diff", str(a), str(b), "--json"]) == 0
    changed = [e["address"] for e in _json(capsys)["entries"] if e["max_abs_diff"] > 0]
    assert changed[0] == "L20.mlp.out" and changed[-1] == "L29.out"
    assert main(["diff", str(a), str(b)]) == 0
    assert "L20.mlp.out" in capsys.readouterr().out


@pytest.mark.parametrize("what, fixture", [("stats", "minilm"), ("attention", "minilm"), ("similarity", "minilm"),
                                           ("lens", "smollm2")])
def test_analyze_json_and_tables(use_model, capsys, what, fixture):
    loaded = use_model(fixture)
    args = ["analyze", fixture, "--prompt", "The capital of France is", "--what", what]
    assert main(args + ["--json"]) == 0
    document = _json(capsys)
    assert document["what"] == what
    report = document["report"]
    if what == "stats":
        assert set(report) == {f"L{i}.out" for i in range(loaded.anatomy.n_layers)}
        assert report["L0.out"]["count"] > 0
    if what == "lens":
        assert report["layers"][-1]["top"][0]["token"] == " Paris"
        assert main(args + ["--position", "1", "--json"]) == 0
        earlier = _json(capsys)["report"]
        assert earlier["position"] == 1 and earlier["final_token"] != " Paris"
        assert main(args + ["--position", "99"]) == 2
        assert "outside the prompt" in capsys.readouterr().err
    assert main(args) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
def test_analyze_importance_and_patching(use_model, capsys):
    use_model("smollm2")
    assert main(["analyze", "smollm2-135m", "--what", "importance", "--layers", "0", "--prompt",
                 "The old garage stood at the end of a narrow street.", "--json"]) == 0
    report = _json(capsys)["report"]
    assert len(report["heads"]) == 9 and report["heads"][0]["delta"] >= report["heads"][-1]["delta"]
    # a short pair keeps the per-position grid small; the Eiffel pair is covered in test_analyzers_patching
    assert main(["analyze", "smollm2-135m", "--what", "patching", "--prompt", "The capital of France is",
                 "--corrupt", "The capital of Italy is", "--layers", "23", "--json"]) == 0
    report = _json(capsys)["report"]
    assert (report["answer"], report["wrong"]) == (" Paris", " Rome") and "L29" in report["layers_with_answer"]


@pytest.mark.slow
def test_steer_verb(use_model, capsys):
    use_model("smollm2")
    assert main(["steer", "smollm2-135m", "--layer", "10", "--positive", "I love it, wonderful!",
                 "--negative", "I hate it, awful!", "--prompt", "Today I feel", "--strength", "0",
                 "--strength", "8", "--max-new-tokens", "5", "--json"]) == 0
    document = _json(capsys)
    texts = [g["text"] for g in document["generations"]]
    assert len(texts) == 2 and texts[0] != texts[1]


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["analyze", "minilm-l6", "--prompt", "hi", "--what", "lens"], "causal language model"),
    (["analyze", "minilm-l6", "--prompt", "hi", "--what", "stats", "--at", "L9.out"], "out of range"),
    (["analyze", "minilm-l6", "--what", "attention"], "needs --prompt"),
    (["analyze", "minilm-l6", "--what", "importance", "--layers", "a,b"], "comma-separated"),
])
def test_bad_input_is_one_line_and_exit_2(use_model, capsys, argv, message):
    use_model("minilm")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("garage: error:") and message in err and err.count("\n") == 1


def test_diff_of_missing_file_is_exit_2(tmp_path, capsys):
    assert main(["diff", str(tmp_path / "nope.safetensors"), str(tmp_path / "nope.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
