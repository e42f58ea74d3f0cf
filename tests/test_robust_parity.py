"""Captures whose points share memory, and blends that keep their sources' dtype.

Class 1: capture and snapshot files with overlapping points (``L10.out``/``L11.in``,
``embed.out``/``L0.in``, ``L29.out``/``final_norm.in``, a layer's pattern and one head's)
must hold independent tensors equal to what was captured. Class 2: linear and slerp blends
of bf16 sources give bf16 (as mergekit does), in the kernel and in a built folder.
"""

from __future__ import annotations

import json

import pytest
import torch

from engine.snapshots import independent_tensors, load_tensors, save_tensors
from tests.robust_harness import cli, recipe_file, tiny_llama

OVERLAPS = [("L10.out", "L11.in"), ("embed.out", "L0.in"), ("L29.out", "final_norm.in"),
            ("L10.attn.pattern", "L10.attn.h4.pattern")]


def test_views_and_repeats_are_copied_apart_only_when_they_share_storage():
    base = torch.arange(24.0).reshape(2, 3, 4)
    tensors = {"whole": base, "same": base, "head": base[:, 1], "other": torch.ones(3)}
    plain = independent_tensors(tensors)
    pointers = [t.untyped_storage().data_ptr() for t in plain.values()]
    assert len(set(pointers)) == 4
    assert plain["whole"].data_ptr() == base.data_ptr()  # the first keeps its memory: no needless copy
    assert all(torch.equal(plain[k], tensors[k]) for k in tensors)


def test_a_file_of_shared_tensors_saves_and_loads_back_equal(tmp_path):
    base = torch.randn(1, 4, 8)
    path = save_tensors(tmp_path / "c.safetensors", {"L0.out": base, "L1.in": base, "L1.in.h0": base[:, :, :2]},
                        {"model": "m"})
    loaded, meta = load_tensors(path)
    assert meta == {"model": "m"} and set(loaded) == {"L0.out", "L1.in", "L1.in.h0"}
    assert torch.equal(loaded["L1.in"], base) and torch.equal(loaded["L1.in.h0"], base[:, :, :2])


@pytest.mark.slow
@pytest.mark.parametrize("first,second", OVERLAPS)
def test_capture_with_overlapping_points_writes_independent_tensors(smollm2_eager, tmp_path, first, second):
    from engine.capture import capture_prompt

    captured, _ = capture_prompt(smollm2_eager, "The capital of France is", [first, second])
    path = save_tensors(tmp_path / "cap.safetensors", captured, {"addresses": list(captured)})
    loaded, _ = load_tensors(path)
    for address, tensor in captured.items():
        assert torch.equal(loaded[address], tensor.cpu()), address
    if "pattern" not in first:
        assert torch.equal(loaded[first], loaded[second])  # the same residual stream, stored twice
    else:
        assert torch.equal(loaded[second].squeeze(), loaded[first][:, 4].squeeze())


@pytest.mark.slow
def test_the_capture_and_snapshot_verbs_accept_overlapping_points(capsys, tmp_path):
    out = tmp_path / "c.safetensors"
    outcome = cli(capsys, "capture", "smollm2-135m", "--prompt", "Hello there", "--at", "L10.out", "--at", "L11.in",
                  "--at", "L29.out", "--at", "final_norm.in", "--out", out, "--json")
    assert outcome.code == 0, outcome.err
    tensors, _ = load_tensors(out)
    assert torch.equal(tensors["L10.out"], tensors["L11.in"]) and torch.equal(tensors["L29.out"],
                                                                              tensors["final_norm.in"])
    snap = tmp_path / "s.safetensors"
    outcome = cli(capsys, "snapshot", "smollm2-135m", "--prompt", "Hello there", "--at", "embed.out", "--at", "L0.in",
                  "--out", snap)
    assert outcome.code == 0, outcome.err


@pytest.mark.parametrize("op,params", [("linear", {"weights": [0.3, 0.7]}), ("slerp", {"t": 0.4})])
def test_blend_kernels_keep_bf16(op, params):
    from engine.build.ops import apply_op

    torch.manual_seed(0)
    a, b = torch.randn(16, 8).to(torch.bfloat16), torch.randn(16, 8).to(torch.bfloat16)
    out = apply_op(op, [a, b], params)
    assert out.dtype == torch.bfloat16
    reference = apply_op(op, [a.float(), b.float()], params)  # computed in float32, rounded once
    assert reference.dtype == torch.float32
    assert torch.equal(out, reference.to(torch.bfloat16))


@pytest.mark.parametrize("method,extra", [("linear", {"weights": [0.5, 0.5]}), ("slerp", {"t": 0.3})])
def test_a_bf16_build_keeps_bf16_tensors(capsys, tmp_path, method, extra):
    a = tiny_llama(tmp_path / "a", layers=2, seed=1, dtype=torch.bfloat16)
    b = tiny_llama(tmp_path / "b", layers=2, seed=2, dtype=torch.bfloat16)
    recipe = recipe_file(tmp_path, {"a": str(a), "b": str(b)},
                         [{"blend": ["a.L0", "b.L0"], "method": method, **extra}, {"take": "a.L1"}])
    out = tmp_path / "out"
    outcome = cli(capsys, "build", recipe, "--out", out, "--json")
    assert outcome.code == 0, outcome.err
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_slice(name).get_dtype() for name in handle.keys()}
        blended = handle.get_tensor("model.layers.0.mlp.up_proj.weight")
    assert dtypes == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(a / "model.safetensors"), framework="pt") as ha, \
            safe_open(str(b / "model.safetensors"), framework="pt") as hb:
        wa = ha.get_tensor("model.layers.0.mlp.up_proj.weight")
        wb = hb.get_tensor("model.layers.0.mlp.up_proj.weight")
    from engine.build.ops import apply_op

    expected = apply_op(method, [wa, wb], extra)
    assert torch.equal(blended, expected)
