"""Hook overhead on SmolLM2, batch 4 × 128 tokens: plain forward vs capture and ablation.

Targets (issue 2): capturing every residual ≤ 1.05× plain forward; one head ablation ≤ 1.03×.
Runs are interleaved and the median of each is compared, so drift hits all variants alike.

    .venv/bin/python bench/bench_hooks.py [--repeats N]   (15 by default: 2 shared cores are noisy)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.hooks import hooked  # noqa: E402
from engine.interventions import ablate  # noqa: E402
from engine.loading import open_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = open_model("smollm2-135m")
    ids = torch.randint(0, loaded.config.vocab_size, (4, 128))
    layers = loaded.anatomy.n_layers
    heads = loaded.anatomy.geometry.n_heads
    variants = {
        "plain": ((), ()),
        "capture all residuals": ([f"L{i}.out" for i in range(layers)], ()),
        "capture every head z": ([f"L{i}.attn.h{h}.z" for i in range(layers) for h in range(heads)], ()),
        "ablate one head": ((), [ablate("L10.attn.h3")]),
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        loaded.model(input_ids=ids)  # warm-up
        for _ in range(args.repeats):
            for name, (capture, interventions) in variants.items():
                with hooked(loaded.model, loaded.anatomy, capture, interventions):
                    started = time.perf_counter()
                    loaded.model(input_ids=ids)
                    timings[name].append(time.perf_counter() - started)
    plain = statistics.median(timings["plain"])
    print(f"SmolLM2-135M, batch 4 × 128 tokens, {args.repeats} interleaved repeats, median")
    print(f"{'variant':<24} {'seconds':>8} {'ratio':>7}")
    for name, samples in timings.items():
        median = statistics.median(samples)
        print(f"{name:<24} {median:8.3f} {median / plain:7.3f}x")


if __name__ == "__main__":
    main()
