"""Time of each analyzer on SmolLM2 for one 64-token prompt (the start of the bundled sample).

Patching needs two prompts of equal length and a per-(layer, position) grid, so it is timed
on the 9-token Eiffel Tower / Colosseum pair; its cost grows with layers × tokens.
Every figure is also given as a ratio to one plain forward pass measured in the same run.
Run: ``.venv/bin/python bench/bench_analyzers.py``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def timed(label: str, rows: list, work) -> object:
    start = time.perf_counter()
    result = work()
    rows.append((label, time.perf_counter() - start))
    return result


def main() -> None:
    from engine.analyzers._sites import run_with

    from engine.analyzers.attention import attention_report
    from engine.analyzers.generate import generate
    from engine.analyzers.importance import head_importance, sample_text
    from engine.analyzers.lens import logit_lens
    from engine.analyzers.patching import activation_patching
    from engine.analyzers.similarity import layer_similarity
    from engine.analyzers.steering import compare_steering, steering_vector
    from engine.loading import open_model
    from engine.runner import encode
    from engine.stats import every_layer_and_head, stream_stats

    loaded = open_model("smollm2-135m")
    ids = loaded.tokenizer(sample_text()).input_ids[:64]
    prompt = loaded.tokenizer.decode(ids)
    n_tokens = encode(loaded, prompt).shape[1]
    rows: list[tuple[str, float]] = []
    run_with(loaded, encode(loaded, prompt))  # warm-up
    forward_times = []
    for _ in range(3):  # the reference is the fastest of three, so one noisy pass does not skew ratios
        timed("forward", forward_times, lambda: run_with(loaded, encode(loaded, prompt)))
    rows.append(("one forward pass (reference, best of 3)", min(t for _, t in forward_times)))
    timed("stats: 30 layers + 270 heads", rows, lambda: stream_stats(loaded, prompt, every_layer_and_head(loaded)))
    timed("attention: 270 heads", rows, lambda: attention_report(loaded, prompt))
    timed("logit lens: 31 readings", rows, lambda: logit_lens(loaded, prompt))
    timed("layer similarity", rows, lambda: layer_similarity(loaded, prompt))
    importance = timed("importance: 270 heads + 60 blocks", rows,
                       lambda: head_importance(loaded, prompt, window=n_tokens))
    patching = timed("patching (9-token pair, 270 layer×pos + 270 heads)", rows,
                     lambda: activation_patching(loaded, "The Eiffel Tower is in the city of",
                                                 "The Colosseum is in the city of"))
    vector = timed("steering vector (2 + 2 prompts)", rows,
                   lambda: steering_vector(loaded, 10, ["I love it, wonderful!", "Great and happy"],
                                           ["I hate it, awful!", "Terrible and sad"]))
    timed("generate 20 tokens", rows, lambda: generate(loaded, "Today I feel", 20))
    comparison = timed("steer: 2 strengths × 20 tokens", rows,
                       lambda: compare_steering(loaded, vector, "Today I feel", (0.0, 4.0), 20))
    base = rows[0][1]
    print(f"SmolLM2-135M on {n_tokens} tokens, {os.cpu_count()} CPUs")
    for label, seconds in rows:
        print(f"  {label:55s} {seconds:7.2f} s  {seconds / base:7.1f}× a forward")
    print(f"  top head {importance.heads[0].address} Δloss {importance.heads[0].delta:+.3f}; "
          f"answer appears at {', '.join(patching.layers_with_answer())}")
    for strength, generation in comparison.generations.items():
        print(f"  strength {strength:g}: Today I feel{generation.text!r}")


if __name__ == "__main__":
    main()
