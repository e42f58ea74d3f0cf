"""``garage sae`` and ``garage direction``: import/export, refusals as one line with exit 2,
directions from an SAE row and a bake (tiny Llama folder); reading features on SmolLM2 (slow)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.features.formats import tensors_equal_bytes, write_saelens_folder


def garage(capsys, *argv: str) -> tuple[int, str, str]:
    from garage_tui.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sae_folder(path, d_in: int, hook: str, d_sae: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.zeros(d_sae),
               "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.zeros(d_in)}
    cfg = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": 8, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"hook_name": hook}}
    return write_saelens_folder(path, cfg, tensors)


@pytest.fixture()
def tiny_folder(tmp_path):
    from tests.tiny_models import tiny_model

    folder = tmp_path / "tiny-llama"
    tiny_model("llama").model.save_pretrained(folder)
    return folder


def test_import_export_direction_and_bake_on_a_tiny_llama(tiny_folder, tmp_path, garage_home, capsys):
    sae = _sae_folder(tmp_path / "sae", 64, "blocks.1.hook_resid_post")
    code, out, err = garage(capsys, "sae", "import", str(sae), str(tiny_folder), "--name", "tiny-sae", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["kind"] == "sae" and record["address"] == "L1.out" and record["config"]["coder"]["k"] == 8
    code, out, _ = garage(capsys, "sae", "export", "tiny-sae", str(tmp_path / "again"), "--json")
    assert code == 0
    assert tensors_equal_bytes(load_file(str(tmp_path / "again" / "sae_weights.safetensors")),
                               load_file(str(sae / "sae_weights.safetensors")))
    assert json.loads((tmp_path / "again" / "cfg.json").read_text()) == json.loads((sae / "cfg.json").read_text())
    code, out, _ = garage(capsys, "parts", "list", "--kind", "sae", "--json")
    assert [doc["name"] for doc in json.loads(out)] == ["tiny-sae"]

    code, out, _ = garage(capsys, "direction", "from-sae", str(tiny_folder), "tiny-sae", "5", "--name", "row5",
                          "--json")
    assert code == 0 and json.loads(out)["config"]["method"] == "sae_row"
    code, out, err = garage(capsys, "direction", "bake", str(tiny_folder), "row5", "--out", str(tmp_path / "baked"),
                            "--json")
    assert code == 0, err
    provenance = json.loads((tmp_path / "baked" / "garage_bake.json").read_text())
    assert provenance["ops"][0]["direction_digest"] == json.loads(
        garage(capsys, "parts", "show", "row5", "--json")[1])["sha256"]


def test_refusals_are_one_line_with_exit_2(tiny_folder, tmp_path, garage_home, capsys):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "sae.pth").write_bytes(b"\x80\x04")
    code, out, err = garage(capsys, "sae", "import", str(tmp_path / "pickled"), str(tiny_folder))
    assert code == 2 and err.startswith("garage: error:") and "never unpickles" in err and len(err.splitlines()) == 1
    narrow = _sae_folder(tmp_path / "narrow", 32, "blocks.1.hook_resid_post")
    code, _, err = garage(capsys, "sae", "import", str(narrow), str(tiny_folder))
    assert code == 2 and "64 wide but the coder/direction expects 32" in err
    code, _, err = garage(capsys, "sae", "train", str(tiny_folder), "--at", "L1.out", "--tokens", "100")
    assert code == 2 and "has no tokenizer" in err
    code, _, err = garage(capsys, "sae", "train", str(tiny_folder), "--at", "L1.out", "--source", "/nope.txt")
    assert code == 2 and "neither sample, pydoc nor a readable file" in err
    nowhere = _sae_folder(tmp_path / "nowhere", 64, "blocks.9.hook_whatever")
    code, _, err = garage(capsys, "sae", "import", str(nowhere), str(tiny_folder))
    assert code == 2 and "pass --at ADDRESS" in err


@pytest.mark.slow
def test_features_and_read_on_smollm2(tmp_path, garage_home, capsys):
    sae = _sae_folder(tmp_path / "sae", 576, "blocks.10.hook_resid_post", d_sae=256)
    assert garage(capsys, "sae", "import", str(sae), "smollm2-135m", "--name", "smol", "--json")[0] == 0
    code, out, err = garage(capsys, "sae", "features", "smollm2-135m", "smol", "--prompt", "The engine runs.",
                            "--top", "3", "--json")
    assert code == 0, err
    features = json.loads(out)["features"]
    assert 1 <= len(features) <= 3 and features[0]["activation"] >= features[-1]["activation"]
    code, out, err = garage(capsys, "sae", "read", "smollm2-135m", "smol", str(features[0]["feature"]),
                            "--prompt", "The engine runs.", "--tokens", "200", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["prompt_hits"][0]["activation"] == pytest.approx(features[0]["activation"], rel=1e-5)
    assert len(report["promoted"]) == 10 and report["tokens_read"] > 100
