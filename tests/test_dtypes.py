"""Half-precision runs against float32, float64 statistics, and quantised weights refused in one line.

Tolerances (relative L2 error, ‖x_half − x_fp32‖ / ‖x_fp32‖, per captured address, SmolLM2 on a
13-token prompt): bfloat16 ≤ 0.06, float16 ≤ 0.01; both predict the same next token. The
measured figures per address are in the README ("Big models").
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.capture import capture_prompt

PROMPT = "The capital of France is Paris, and the capital of Italy is"
ADDRESSES = ["embed.out", "L0.out", "L7.out", "L15.out", "L22.out", "L29.out", "L15.attn.z", "L15.mlp.hidden",
             "lm_head.out"]
TOLERANCE = {"bfloat16": 0.06, "float16": 0.01}


@pytest.fixture(scope="module")
def fp32_folder(smollm2):
    """The float32 safetensors folder the bundled GGUF converts into (already cached by ``smollm2``)."""
    return smollm2.weights_path


def relative_errors(half: dict[str, torch.Tensor], full: dict[str, torch.Tensor]) -> dict[str, float]:
    return {address: float((half[address].double() - full[address].double()).norm() / full[address].double().norm())
            for address in full}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_stay_within_the_stated_tolerance(dtype, fp32_folder, smollm2):
    from engine.loading import open_model
    from engine.stats import stream_stats

    half = open_model(str(fp32_folder), dtype=dtype)
    assert next(half.model.parameters()).dtype == getattr(torch, dtype)
    got, ids = capture_prompt(half, PROMPT, ADDRESSES)
    want, ids_full = capture_prompt(smollm2, PROMPT, ADDRESSES)
    assert ids == ids_full
    errors = relative_errors(got, want)
    assert max(errors.values()) <= TOLERANCE[dtype], errors
    assert min(errors.values()) > 0  # really ran in half precision
    assert int(got["lm_head.out"][0, -1].argmax()) == int(want["lm_head.out"][0, -1].argmax())

    # Streaming statistics accumulate in float64 whatever the model's dtype: their mean and std
    # equal float64 arithmetic over the half-precision values, far below half-precision rounding.
    summary = stream_stats(half, PROMPT, ["L15.out"])["L15.out"]
    values = got["L15.out"].double()
    assert summary.count == values.numel()
    assert math.isclose(summary.mean, float(values.mean()), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(summary.std, float(values.std(unbiased=False)), rel_tol=1e-9)
    assert math.isclose(summary.rms, float(values.square().mean().sqrt()), rel_tol=1e-9)


@pytest.fixture(scope="module")
def quantised_tiny(tmp_path_factory):
    """A tiny random Llama whose config says it was loaded with bitsandbytes 4-bit, as an open model
    and as a folder. The weights stay float32 (bitsandbytes is not installed here); what the
    garage must react to is the model's own declaration."""
    import transformers

    from engine.anatomy import build_anatomy
    from engine.loading import LoadedModel

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = transformers.LlamaForCausalLM(config).eval()
    model.config.quantization_config = transformers.BitsAndBytesConfig(load_in_4bit=True)
    folder = tmp_path_factory.mktemp("quantised-tiny")
    model.save_pretrained(folder)
    loaded = LoadedModel(name="tiny-4bit", source=str(folder), source_kind="folder", model=model,
                         config=model.config, tokenizer=None, anatomy=build_anatomy(model, model.config),
                         device="cpu", dtype="float32", structure_only=False, weights_path=folder)
    return loaded, folder


def test_quantised_models_are_detected_and_plain_ones_are_not(quantised_tiny):
    import transformers

    from engine.quantised import quantisation_of

    loaded, _ = quantised_tiny
    assert quantisation_of(loaded.model) == "bitsandbytes"
    assert quantisation_of(transformers.LlamaConfig(num_hidden_layers=1)) is None
    plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64))
    assert quantisation_of(plain) is None


def test_extraction_bake_and_build_refuse_quantised_weights_in_one_line(quantised_tiny, tmp_path):
    from engine.build.sources import resolve_source
    from engine.features.bake import BakeOp, bake
    from engine.parts.catalog import PartsBin
    from engine.quantised import QuantisedWeightsError

    loaded, folder = quantised_tiny
    bin_ = PartsBin(tmp_path / "home")
    refusals = []
    with pytest.raises(QuantisedWeightsError) as refused:
        bin_.add_from_model(loaded, "L0.mlp")
    refusals.append(str(refused.value))
    with pytest.raises(QuantisedWeightsError) as refused:
        bin_.add_from_checkpoint(folder, "L0.mlp")
    refusals.append(str(refused.value))
    with pytest.raises(QuantisedWeightsError) as refused:
        bake(loaded, [BakeOp("scale_head", layer=0, head=1, factor=0.0)], tmp_path / "baked")
    refusals.append(str(refused.value))
    with pytest.raises(QuantisedWeightsError) as refused:
        resolve_source("a", str(folder))
    refusals.append(str(refused.value))
    for message in refusals:
        assert "\n" not in message and "quantised (bitsandbytes)" in message
    assert not (tmp_path / "baked").exists()
    assert bin_.list() == []  # nothing half-written


def test_captures_and_interventions_still_work_on_quantised_weights(quantised_tiny):
    from engine.interventions import ablate
    from engine.runner import forward

    loaded, _ = quantised_tiny
    ids = torch.randint(0, 128, (1, 8))
    plain, tap = forward(loaded, ids, capture=["L1.out"])
    ablated, _ = forward(loaded, ids, interventions=[ablate("L1.attn.h0")])
    assert tap["L1.out"].shape == (1, 8, 64)
    assert not torch.allclose(plain, ablated)
