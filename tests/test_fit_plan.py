"""The fit planner: its figures against what a real model really allocates, places and keeps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from engine.fit_plan import PlanError, parse_max_memory, parse_size, plan_fit
from engine.hooks import hooked
from garage_tui.cli import main

REPO = Path(__file__).resolve().parent.parent


def _bench_plan():
    spec = importlib.util.spec_from_file_location("bench_plan", REPO / "bench" / "bench_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random 4-layer GQA Llama saved as an HF folder, and the model itself."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    return folder, model


def test_sizes_and_budgets_parse_and_bad_ones_say_what_to_write():
    assert parse_size("20GiB") == 20 * 2**30
    assert parse_size("512MB") == 512 * 10**6
    assert parse_size("1000") == 1000
    assert parse_max_memory("0=20GiB, 1=10GB,cpu=30GiB") == {0: 20 * 2**30, 1: 10 * 10**9, "cpu": 30 * 2**30}
    with pytest.raises(PlanError, match="DEVICE=SIZE"):
        parse_max_memory("cpu")
    with pytest.raises(PlanError, match="not a GPU index"):
        parse_max_memory("gpu0=1GiB")
    with pytest.raises(PlanError, match="20GiB"):
        parse_size("lots")


def test_weights_kv_cache_and_logits_equal_a_real_models(tiny_llama):
    folder, model = tiny_llama
    plan = plan_fit(str(folder), seq=24, batch=3)
    real_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert plan.weight_bytes == real_bytes
    assert plan.n_parameters == sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 256, (3, 24))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    cache_bytes = sum(t.numel() * t.element_size()
                      for layer in cache.layers for t in (layer.keys, layer.values))
    assert plan.kv_cache_bytes == cache_bytes
    assert plan.logits_bytes == out.logits.numel() * out.logits.element_size()
    half = plan_fit(str(folder), dtype="bfloat16", seq=24, batch=3)
    assert half.kv_cache_bytes * 2 == plan.kv_cache_bytes
    assert half.n_parameters == plan.n_parameters
    # the checkpoint is float32: loading it as bfloat16 holds both while converting
    assert half.load_peak_bytes > half.weight_bytes + plan.weight_bytes * 0.99


def test_capture_cost_equals_the_storage_a_real_capture_keeps(tiny_llama):
    from engine.anatomy import build_anatomy

    folder, model = tiny_llama
    at = ["L1.out", "L2.in", "L2.attn.z", "L3.mlp.hidden", "L0.attn.q.out", "embed.out"]
    plan = plan_fit(str(folder), seq=10, batch=2, captures=at)
    everything = plan_fit(str(folder), seq=10, batch=2, capture_all=True)
    anatomy = build_anatomy(model, model.config)
    from engine.addresses import all_addresses
    from engine.fit_plan import CAPTURE_ALL_POINTS

    every_point = [a for a in all_addresses(anatomy)
                   if "." in a and a.rsplit(".", 1)[1] in CAPTURE_ALL_POINTS and ".attn.h" not in a]
    assert everything.captured_points == len(every_point)
    assert "lm_head.out" in every_point
    for points, planned in ((at, plan.capture_bytes), (every_point, everything.capture_bytes)):
        with torch.no_grad(), hooked(model, anatomy, capture=points) as tap:
            logits = model(input_ids=torch.randint(0, 256, (2, 10))).logits
        storages = {tap[a].untyped_storage().data_ptr(): tap[a].untyped_storage().nbytes() for a in points}
        # the captured lm_head.out is the logits tensor the forward returns (and the plan counts there)
        output = logits.untyped_storage().data_ptr()
        assert (output in storages) == (points is every_point)
        assert planned == sum(size for pointer, size in storages.items() if pointer != output)
    assert plan.capture_bytes < everything.capture_bytes
    assert everything.logits_bytes == 2 * 10 * 256 * 4


def test_auto_placement_matches_where_transformers_puts_each_layer(tiny_llama, tmp_path):
    import transformers

    folder, model = tiny_llama
    layer_bytes = sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    embed_bytes = model.model.embed_tokens.weight.numel() * 4
    budget = {"cpu": embed_bytes + 2 * layer_bytes + layer_bytes // 2}
    plan = plan_fit(str(folder), device="auto", max_memory=budget)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        folder, device_map="auto", max_memory=dict(budget), offload_folder=str(tmp_path / "offload"))
    assert {item.module: item.device for item in plan.placement} == {
        name: str(where) for name, where in loaded.hf_device_map.items()}
    devices = {share.device: share.weight_bytes for share in plan.devices}
    assert set(devices) == {"cpu", "disk"}
    assert sum(devices.values()) == plan.weight_bytes
    assert plan.forward_peak_bytes < plan_fit(str(folder)).forward_peak_bytes


def test_a_llama3_70b_config_plans_from_config_json_alone(tmp_path):
    folder = _bench_plan().llama70b_config(tmp_path / "llama-3-70b")
    plan = plan_fit(str(folder), dtype="bfloat16", seq=8192, device="auto",
                    max_memory=parse_max_memory("cpu=100GiB,disk=1TiB"))
    assert plan.n_parameters == 70_553_706_496  # Meta-Llama-3-70B's published count
    assert plan.weight_bytes >= 2 * plan.n_parameters
    assert plan.kv_cache_bytes == 2 * 80 * 8192 * 8 * 128 * 2
    devices = {share.device: share.weight_bytes for share in plan.devices}
    assert devices["cpu"] <= 100 * 2**30 < plan.weight_bytes
    assert devices["cpu"] + devices["disk"] == plan.weight_bytes


def test_plan_verb_prints_json_and_refuses_bad_budgets_in_one_line(tiny_llama, capsys):
    folder, _ = tiny_llama
    assert main(["plan", str(folder), "--seq", "16", "--at", "L1.out", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["weight_bytes"] == plan_fit(str(folder)).weight_bytes
    assert report["captured_points"] == 1 and report["capture_bytes"] == 16 * 64 * 4
    assert main(["plan", str(folder), "--device", "auto", "--max-memory", "cpu=lots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("garage: error: cannot read the size 'lots'") and err.count("\n") == 1
    assert main(["plan", str(folder), "--max-memory", "cpu=200KB", "--device", "auto"]) == 0
    assert "disk" in capsys.readouterr().out


@pytest.mark.slow
def test_gguf_plan_reads_quantisation_from_the_header(smollm2):
    plan = plan_fit("smollm2-135m")
    assert plan.gguf is not None
    real_bytes = sum(t.numel() * t.element_size() for t in (*smollm2.model.parameters(), *smollm2.model.buffers()))
    assert plan.weight_bytes == real_bytes
    assert plan.gguf.tensor_types["Q4_1"] > 100
    file_bytes = Path(plan.gguf.path).stat().st_size
    assert 0.9 * file_bytes < plan.gguf.quantised_bytes < file_bytes
    assert plan.gguf.dequantised_bytes > 5 * plan.gguf.quantised_bytes


@pytest.mark.slow
@pytest.mark.parametrize("spec,fixture", [("smollm2-135m", "smollm2"), ("minilm-l6", "minilm"),
                                          ("gemma3-270m", "gemma")])
def test_predicted_peaks_are_within_ten_percent_of_measured_rss(spec, fixture, request):
    request.getfixturevalue(fixture)  # the session's open filled the conversion cache the children read
    bench = _bench_plan()
    plan = plan_fit(spec, seq=bench.SEQ, capture_all=True)
    peaks = bench.measure(spec, "all")  # one child for the three phases (the bench runs one per phase)
    for phase in bench.PHASES:
        measured = peaks[phase]
        predicted = bench.predicted(plan, phase)
        assert abs(predicted - measured) <= 0.10 * measured, (spec, phase, predicted, measured)


@pytest.mark.slow
def test_gpu_check_reports_no_gpu_and_passes_on_a_cpu_machine():
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py")], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no GPU")


def test_an_open_model_plans_like_its_folder(tiny_llama):
    from engine.anatomy import build_anatomy
    from engine.fit_plan import plan_for_loaded
    from engine.loading import LoadedModel
    from garage_tui.render_plan import plan_lines

    folder, model = tiny_llama
    loaded = LoadedModel(name="tiny", source=str(folder), source_kind="folder", model=model, config=model.config,
                         tokenizer=None, anatomy=build_anatomy(model, model.config), device="cpu",
                         dtype="float32", structure_only=False, weights_path=folder)
    from_open = plan_for_loaded(loaded, seq=32)
    from_folder = plan_fit(str(folder), seq=32)
    assert from_open.weight_bytes == from_folder.weight_bytes
    assert from_open.kv_cache_bytes == from_folder.kv_cache_bytes
    assert from_open.forward_peak_bytes == from_folder.forward_peak_bytes
    assert next(model.parameters()).device.type == "cpu"  # the open model itself is untouched
    lines = plan_lines(from_open)
    assert lines[0].startswith("weights (float32): ") and "KV cache (1×32 tokens)" in lines[2]
