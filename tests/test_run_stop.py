"""``run(..., stop_after_capture=True)``: the pass ends after the last capture point or observer,
with every captured value equal to a whole pass's, and the later layers and the head never run."""

from __future__ import annotations

import pytest
import torch

from engine.addresses import all_addresses, resolve_point
from engine.errors import GarageError
from engine.hooks import count_garage_hooks, hook_inventory
from engine.run import run
from tests.tiny_models import tiny_configs, tiny_model

IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


def _calls(loaded, layer: int) -> tuple[list[int], list]:
    """A counter of the forward calls of layer ``layer``'s module and of the model's last module
    (the head, or the encoder's pooler), and the handles to remove them."""
    counts = [0, 0]
    layer_module = loaded.model.get_submodule(loaded.anatomy.module_path_of(layer, "").rstrip("."))
    last_module = list(loaded.model.modules())[-1]

    def count(index):
        def hook(module, args, output):
            counts[index] += 1
        return hook

    # forward hooks, not pre-hooks: they see a module that ran to its end
    return counts, [layer_module.register_forward_hook(count(0)), last_module.register_forward_hook(count(1))]


@pytest.mark.parametrize("family", sorted(tiny_configs()))
def test_every_point_of_a_layer_equals_the_whole_pass_and_nothing_after_it_runs(family):
    loaded = tiny_model(family)
    has_final_norm = "final_norm" in loaded.anatomy.by_address
    for layer in (0, 1):  # the first of two layers, then the last: the pass stops before the final norm
        points = [a for a in all_addresses(loaded.anatomy) if resolve_point(loaded.anatomy, a).layer == layer]
        assert len(points) >= 5
        whole = run(loaded, IDS, capture=points)
        before = hook_inventory(loaded.model)
        counts, handles = _calls(loaded, 1)
        try:
            stopped = run(loaded, IDS, capture=points, stop_after_capture=True)
        finally:
            for handle in handles:
                handle.remove()
        if layer == 1 and not has_final_norm:  # nothing known to stop at: the whole pass runs
            assert counts == [1, 1] and stopped.main is not None
            continue
        # layer 1 ran only when it held the points, the model's last module never
        assert counts == [layer, 0] and stopped.main is None, (family, layer)
        for point in points:
            assert torch.equal(stopped.tap[point], whole.tap[point]), point
        assert hook_inventory(loaded.model) == before and count_garage_hooks(loaded.model) == 0
        with pytest.raises(GarageError, match="stopped after its capture points"):
            _ = stopped.logits


def test_an_observer_counts_as_a_capture_point():
    loaded = tiny_model("llama")
    seen = []
    counts, handles = _calls(loaded, 1)
    try:
        out = run(loaded, IDS, capture=["L0.out"], observers={"L1.mlp.out": seen.append}, stop_after_capture=True)
    finally:
        for handle in handles:
            handle.remove()
    assert counts == [1, 0] and len(seen) == 1 and out.main is None
    assert torch.equal(seen[0], run(loaded, IDS, capture=["L1.mlp.out"]).tap["L1.mlp.out"])


def test_a_point_outside_the_layers_runs_the_whole_pass_and_a_cache_is_refused():
    loaded = tiny_model("llama")
    out = run(loaded, IDS, capture=["L0.out", "final_norm.out"], stop_after_capture=True)
    whole = run(loaded, IDS, capture=["final_norm.out"])
    assert out.main is not None and torch.equal(out.tap["final_norm.out"], whole.tap["final_norm.out"])
    with pytest.raises(GarageError, match="KV cache"):
        run(loaded, IDS, capture=["L0.out"], use_cache=True, stop_after_capture=True)


@pytest.mark.slow
def test_smollm2_l3_capture_equals_hidden_states_and_runs_four_layers(smollm2):
    ids = IDS + 100
    with torch.inference_mode():
        reference = smollm2.model(input_ids=ids, output_hidden_states=True).hidden_states
    ran = []
    layers = smollm2.model.model.layers
    handles = [layer.register_forward_hook(lambda module, args, output, i=i: ran.append(i)) for i, layer in
               enumerate(layers)]
    try:
        out = run(smollm2, ids, capture=["L3.out", "L1.attn.h2.z"], stop_after_capture=True)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0, 1, 2, 3]
    assert torch.equal(out.tap["L3.out"], reference[4])
    head = []
    handle = smollm2.model.lm_head.register_forward_hook(lambda module, args, output: head.append(1))
    try:
        last = run(smollm2, ids, capture=["L29.out"], stop_after_capture=True)
    finally:
        handle.remove()
    # hidden_states' last entry is after the final norm; L29.out is before it
    whole = run(smollm2, ids, capture=["L29.out"])
    assert head == [] and last.main is None and torch.equal(last.tap["L29.out"], whole.tap["L29.out"])
