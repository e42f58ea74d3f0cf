"""Esc stops every analyzer at its next layer: cancel after the first layer, see ``Cancelled``.

A tiny random Llama with a character tokenizer stands in for a real model, so the whole file
runs in seconds. The cancel event is set by a forward hook on layer 0; the engine's check
before layer 1 must then raise, layer 1 must never run, and no hook of ours may remain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from engine.analyzers.attention import attention_report
from engine.analyzers.generate import generate
from engine.analyzers.importance import head_importance
from engine.analyzers.lens import logit_lens
from engine.analyzers.patching import activation_patching
from engine.analyzers.similarity import layer_similarity
from engine.analyzers.steering import compare_steering, steering_vector
from engine.build.evaluate import evaluate
from engine.capture import capture_prompt
from engine.errors import Cancelled
from engine.hooks import count_garage_hooks, hook_inventory
from engine.interventions import ablate
from engine.motion import take_motion_snapshot
from engine.prompt_report import prompt_report
from engine.run import run
from engine.runner import predict
from engine.stats import residual_norms, stream_stats
from tests.tiny_models import CharTokenizer, tiny_model


@pytest.fixture(scope="module")
def tiny():
    loaded = tiny_model("llama")
    loaded.tokenizer = CharTokenizer()
    loaded.extra["vector"] = steering_vector(loaded, 1, ["abc"], ["xyz"])  # made before any cancel hook
    return loaded


def _block(loaded, layer: int) -> torch.nn.Module:
    return loaded.model.get_submodule(loaded.anatomy.module_path_of(layer, "").rstrip("."))


JOBS: dict[str, Callable] = {
    "run": lambda m, c: run(m, m.tokenizer("abcdef").input_ids, cancel=c),
    "predict": lambda m, c: predict(m, "abcdef", cancel=c),
    "capture": lambda m, c: capture_prompt(m, "abcdef", ["L1.out"], cancel=c),
    "stats": lambda m, c: stream_stats(m, "abcdef", ["L1.out"], cancel=c),
    "residual norms": lambda m, c: residual_norms(m, "abcdef", cancel=c),
    "attention": lambda m, c: attention_report(m, "abcdef", cancel=c),
    "lens": lambda m, c: logit_lens(m, "abcdef", cancel=c),
    "similarity": lambda m, c: layer_similarity(m, "abcdef", cancel=c),
    "importance": lambda m, c: head_importance(m, "abcdefghij", cancel=c),
    "patching": lambda m, c: activation_patching(m, "abcdef", "abcxyz", cancel=c),
    "steering vector": lambda m, c: steering_vector(m, 1, ["abc"], ["xyz"], cancel=c),
    "steering comparison": lambda m, c: compare_steering(m, m.extra["vector"], "abc", (0.0, 2.0), 4, cancel=c),
    "generate": lambda m, c: generate(m, "abcdef", 4, cancel=c),
    "generate with mean ablation": lambda m, c: generate(m, "abcdef", 4, [ablate("L0.attn.h1", "mean")], cancel=c),
    "motion": lambda m, c: take_motion_snapshot(m, "abcdef", ["L1.out"], max_new_tokens=3, cancel=c),
    "prompt report": lambda m, c: prompt_report(m, "abcdef", [ablate("L0.attn.h1")], "L1", cancel=c),
    "evaluation": lambda m, c: evaluate(m, window=64, stride=48, cancel=c),
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_cancel_after_the_first_layer_stops_the_job(tiny, job: str) -> None:
    cancel = threading.Event()
    layer_one_calls = []
    before = hook_inventory(tiny.model)
    setter = _block(tiny, 0).register_forward_hook(lambda *_: cancel.set())
    watcher = _block(tiny, 1).register_forward_hook(lambda *_: layer_one_calls.append(1))
    try:
        with pytest.raises(Cancelled):
            JOBS[job](tiny, cancel)
    finally:
        setter.remove()
        watcher.remove()
    # the job's check before layer 1 stopped it: layer 1 never finished once the event was set
    assert layer_one_calls == []
    assert count_garage_hooks(tiny.model) == 0
    assert hook_inventory(tiny.model) == before


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_finishes_without_a_cancel(tiny, job: str) -> None:
    # the same calls complete when nobody cancels, so the test above measures the cancel
    JOBS[job](tiny, threading.Event())
    assert count_garage_hooks(tiny.model) == 0


def test_progress_hears_every_layer(tiny) -> None:
    heard: list[tuple[str, float | None]] = []
    run(tiny, tiny.tokenizer("abc").input_ids, progress=lambda stage, fraction: heard.append((stage, fraction)))
    assert heard == [("layer 1/2", 0.0), ("layer 2/2", 0.5)]
