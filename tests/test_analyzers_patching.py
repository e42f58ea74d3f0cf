"""Activation patching on Eiffel Tower vs Colosseum."""

from __future__ import annotations

import json
import threading

import pytest

from engine.analyzers.patching import activation_patching
from engine.capture import capture_prompt
from engine.errors import GarageError
from engine.interventions import patch
from engine.loading import Cancelled
from engine.run import run
from engine.runner import encode

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"


def run_with(loaded, ids, **options):
    """``(main output, tap)`` of one ``engine.run.run`` pass."""
    output = run(loaded, ids, **options)
    return output.main, output.tap


@pytest.fixture(scope="module")
def report(smollm2):
    # heads of a few layers keep the test quick; the bench runs the full sweep
    return activation_patching(smollm2, CLEAN, CORRUPT, heads=[1, 3, 23])


def test_last_layer_restores_everything_and_names_answer_layers(smollm2, report):
    assert (report.answer, report.wrong) == (" Paris", " Rome")
    last = smollm2.anatomy.n_layers - 1
    assert report.layer_position[last][-1] == pytest.approx(1.0, abs=1e-6)
    assert all(abs(v) < 1e-6 for v in report.layer_position[last][:-1])  # other positions cannot matter there
    layers = report.layers_with_answer()
    assert f"L{last}" in layers and "L0" not in layers
    # early on, the answer lives at the subject's tokens, not at the last position
    assert max(report.layer_position[0][1:4]) > 0.5 and report.layer_position[0][-1] < 0.1
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["layers_with_answer"] == layers


def test_patching_a_whole_layer_output_restores_all(smollm2):
    corrupt_ids = encode(smollm2, CORRUPT)
    clean_l5 = capture_prompt(smollm2, CLEAN, ["L5.out"])[0]["L5.out"]
    patched, _ = run_with(smollm2, corrupt_ids, interventions=[patch("L5.out", clean_l5)])
    clean, _ = run_with(smollm2, encode(smollm2, CLEAN))
    assert (patched[0, -1] - clean[0, -1]).abs().max() < 1e-4


def test_head_scores_equal_single_head_patches(smollm2, report):
    address, restored = report.top_heads(1)[0]
    clean_z = capture_prompt(smollm2, CLEAN, [f"{address}.z"])[0][f"{address}.z"]
    logits, _ = run_with(smollm2, encode(smollm2, CORRUPT), interventions=[patch(f"{address}.z", clean_z)])
    answer = smollm2.tokenizer(report.answer, add_special_tokens=False).input_ids[0]
    wrong = smollm2.tokenizer(report.wrong, add_special_tokens=False).input_ids[0]
    diff = float(logits[0, -1, answer] - logits[0, -1, wrong])
    expected = (diff - report.corrupt_diff) / (report.clean_diff - report.corrupt_diff)
    assert restored == pytest.approx(expected, abs=1e-4) and restored > 0.1
    assert report.heads[0] == [] and len(report.heads[23]) == smollm2.anatomy.geometry.n_heads


def test_patching_errors(smollm2, minilm):
    with pytest.raises(GarageError, match="equal token length"):
        activation_patching(smollm2, CLEAN, "The Colosseum in Rome is in the city of")
    with pytest.raises(GarageError, match="causal language model"):
        activation_patching(minilm, CLEAN, CORRUPT)
    with pytest.raises(GarageError, match="head layers"):
        activation_patching(smollm2, CLEAN, CORRUPT, heads=[40])
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        activation_patching(smollm2, CLEAN, CORRUPT, heads=False, cancel=cancel)
