"""``garage build`` / ``garage eval`` / ``garage recipe check`` end to end, on a small llama
that speaks SmolLM2's tokenizer (so evaluation runs in seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from garage_tui.cli import main


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.build.sources import TOKENIZER_FILES
    from engine.bundled import bundled_path
    from engine.gguf_cache import converted_folder

    folder = tmp_path_factory.mktemp("small") / "small-llama"
    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=49152, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    smol = converted_folder(bundled_path("smollm2-135m"))
    for name in TOKENIZER_FILES:
        if (smol / name).is_file():
            shutil.copyfile(smol / name, folder / name)
    return folder


def write_recipe(path: Path, source: Path) -> Path:
    path.write_text(f"""recipe_version: 1
name: small-stack
sources:
  a: {source}
embed: a
final_norm: a
lm_head: a
layers:
  - take: a.L0-2
  - take: a.L1
  - take: a.L3
""")
    return path


@pytest.mark.slow
def test_build_then_eval_from_the_command_line(small_source, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "stack.yaml", small_source)
    out = tmp_path / "built"
    assert main(["build", str(recipe), "--out", str(out), "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["ok"] and dry["layers"] == 5 and dry["dry_run"] and not out.exists()
    assert main(["build", str(recipe), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layers"] == 5 and Path(result["out_dir"]) == out and (out / "provenance.json").is_file()
    assert main(["build", str(recipe), "--out", str(out)]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["eval", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    hybrid, source = report["models"]
    assert source["name"] == "small-llama" and source["role"] == "source"  # found through recipe.yaml
    assert hybrid["tokens_scored"] == source["tokens_scored"] > 500
    assert hybrid["perplexity"] > 1000 and source["perplexity"] > 1000  # random weights over 49k tokens
    assert hybrid["perplexity"] != source["perplexity"]
    assert 0.0 <= hybrid["top1_agreement"]["small-llama"] <= 1.0
    assert len(hybrid["continuations"]) == 3
    assert main(["eval", str(out), "--no-sources"]) == 0
    table = capsys.readouterr().out
    assert "perplexity" in table and "bits per byte" in table


@pytest.mark.slow
def test_eval_refuses_encoder_only_model(capsys):
    assert main(["eval", "minilm-l6", "--no-sources"]) == 2
    assert "has no language-model head" in capsys.readouterr().err


def test_recipe_check_unreadable_file(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("layers: [take: a.L1\n")
    assert main(["recipe", "check", str(broken)]) == 2
    assert "broken.yaml is not valid YAML/JSON at line" in capsys.readouterr().err
    assert main(["recipe", "check", str(tmp_path / "absent.yaml")]) == 2
    assert "no such recipe file" in capsys.readouterr().err
