"""A split model gives the unsplit model's numbers: SmolLM2 with part of it on CPU, part on disk.

accelerate's real dispatch (``device_map="auto"`` with a ``max_memory`` the model does not fit,
and an offload folder) leaves the later layers' weights on disk and reads them back at each
call. Every capture, intervention, statistic, extraction and analyzer must agree with the
plain model to 1e-5 relative.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from engine.capture import capture_prompt
from engine.interventions import ablate, patch, replace, scale, steer
from engine.runner import encode, forward

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is Paris, and the capital of Italy is"
OTHER = "The capital of Spain is Madrid, and the capital of Japan is"
RTOL = 1e-5
TIMINGS = {"seconds", "elapsed", "elapsed_s", "wall_s"}  # how long a report took is not one of its numbers


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from engine.loading import open_model

    loaded = open_model("smollm2-135m", device="auto", max_memory={"cpu": 300 * 10**6},
                        offload_folder=str(tmp_path_factory.mktemp("offload")))
    return loaded


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    scale_ = want.abs().max().clamp_min(1e-12)
    assert float((got - want).abs().max() / scale_) <= RTOL


def _close_tree(got, want, where: str = "") -> None:
    """Every number in two reports (dataclasses, dicts, lists, tensors) agrees to RTOL."""
    if dataclasses.is_dataclass(got):
        got, want = dataclasses.asdict(got), dataclasses.asdict(want)
    if isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for key in got:
            if key not in TIMINGS:
                _close_tree(got[key], want[key], f"{where}.{key}")
    elif isinstance(got, (list, tuple)):
        assert len(got) == len(want), where
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            _close_tree(a, b, f"{where}[{index}]")
    elif isinstance(got, torch.Tensor):
        _close(got, want)
    elif isinstance(got, float):
        assert math.isclose(got, want, rel_tol=RTOL, abs_tol=1e-6) or (math.isnan(got) and math.isnan(want)), \
            (where, got, want)
    else:
        assert got == want, (where, got, want)


def test_the_split_really_puts_layers_on_cpu_and_disk(split):
    placed = set(split.model.hf_device_map.values())
    assert placed == {"cpu", "disk"}
    last = split.model.model.layers[-1].self_attn.q_proj
    assert last.weight.device.type == "meta"  # on disk, read back at each call
    from engine.fit_plan import plan_fit

    plan = plan_fit("smollm2-135m", device="auto", max_memory={"cpu": 300 * 10**6})
    assert {p.module: p.device for p in plan.placement} == dict(split.model.hf_device_map)


def test_captures_and_logits_equal_the_unsplit_model(split, smollm2):
    at = ["embed.out", "L3.out", "L12.attn.h4.z", "L20.mlp.hidden", "L29.out", "final_norm.out"]
    got, ids = capture_prompt(split, PROMPT, at)
    want, ids_plain = capture_prompt(smollm2, PROMPT, at)
    assert ids == ids_plain
    for address in want:
        _close(got[address], want[address])
    logits, _ = forward(split, encode(split, PROMPT))
    _close(logits, forward(smollm2, encode(smollm2, PROMPT))[0])


def test_every_intervention_gives_the_unsplit_numbers(split, smollm2):
    torch.manual_seed(0)
    vector = torch.randn(576)
    donor, _ = capture_prompt(smollm2, OTHER, ["L14.attn.z"])
    replacement = torch.nn.Identity()
    cases = [
        [ablate("L22.attn.h1")], [ablate("L15.mlp", "mean")], [ablate("L10")], [scale("L18", 0.5)],
        [scale("L25.attn.h3", 3.0)], [steer("L20", vector, 4.0)], [steer("L5", vector, 2.0, positions=[-1])],
        [patch("L14.attn.z", donor["L14.attn.z"])], [replace("L26.mlp", replacement)],
    ]
    plain_logits, _ = forward(smollm2, encode(smollm2, PROMPT))
    for interventions in cases:
        got, _ = forward(split, encode(split, PROMPT), interventions=interventions)
        want, _ = forward(smollm2, encode(smollm2, PROMPT), interventions=interventions)
        _close(got, want)
        assert not torch.allclose(want, plain_logits), interventions  # the edit really fired


def test_streaming_statistics_equal_the_unsplit_numbers(split, smollm2):
    from engine.stats import stream_stats

    at = ["L2.out", "L27.out", "L24.attn.h5.z", "L28.mlp.hidden"]
    _close_tree(stream_stats(split, [PROMPT, OTHER], at), stream_stats(smollm2, [PROMPT, OTHER], at))


def test_extraction_reads_disk_offloaded_weights_back(split, smollm2):
    from engine.parts.extract import tensors_from_model
    from engine.parts.plan import plan_part

    for address in ("L28.mlp", "L27.attn.h2", "L1.attn"):
        plan = plan_part(split.model, split.config, split.anatomy, address)
        got = tensors_from_model(plan, split.model)
        want = tensors_from_model(plan_part(smollm2.model, smollm2.config, smollm2.anatomy, address), smollm2.model)
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), (address, name)


def test_analyzers_give_the_unsplit_numbers(split, smollm2):
    from engine.analyzers.importance import head_importance
    from engine.analyzers.lens import logit_lens
    from engine.analyzers.similarity import layer_similarity

    _close_tree(logit_lens(split, PROMPT), logit_lens(smollm2, PROMPT))
    _close_tree(layer_similarity(split, PROMPT), layer_similarity(smollm2, PROMPT))
    text = PROMPT + " " + OTHER
    _close_tree(head_importance(split, text, layers=[27], blocks=False, window=24),
                head_importance(smollm2, text, layers=[27], blocks=False, window=24))


def test_attribution_gives_the_unsplit_scores(split, smollm2):
    from engine.attribution.attributor import attribute
    from engine.attribution.tasks import PromptPair

    # A plain pass first, as in the bay: it leaves the offloaded placeholders as inference tensors,
    # whose grad flags attribution must still put back.
    forward(split, encode(split, PROMPT))
    flags = [p.requires_grad for p in split.model.parameters()]
    pairs = [PromptPair("The capital of France is", "The capital of Spain is", " Paris", " Madrid")]
    _close_tree(attribute(split, pairs, top=0), attribute(smollm2, pairs, top=0))
    assert [p.requires_grad for p in split.model.parameters()] == flags
