"""Hook overhead on SmolLM2, batch 4 × 128 tokens: plain forward vs capture and ablation.

Targets (issue 20): capturing every residual ≤ 1.03× plain forward, every head's z ≤ 1.05×,
streaming stats of every layer and head ≤ 1.10× (against a plain forward that also keeps only
the last position's logits, as stream_stats does); one head ablation ~1.00×. Runs are
interleaved and the median of each is compared, so drift hits all variants alike. The hooks
are installed per forward (setup included), as a user's ``hooked`` block or ``run`` does.

    .venv/bin/python bench/bench_hooks.py [--repeats N] [--threads T] [--clock wall|cpu]

``--clock cpu`` times process CPU seconds (steadier when other work shares the cores; use it
with ``--threads 1``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.hooks import hooked  # noqa: E402
from engine.interventions import ablate  # noqa: E402
from engine.loading import open_model  # noqa: E402
from engine.stats import every_layer_and_head, stream_stats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    loaded = open_model("smollm2-135m")
    ids = torch.randint(0, loaded.config.vocab_size, (4, 128))
    layers = loaded.anatomy.n_layers
    heads = loaded.anatomy.geometry.n_heads
    sweep = every_layer_and_head(loaded)

    def forward(capture=(), interventions=(), **extra):
        def once():
            with hooked(loaded.model, loaded.anatomy, capture, interventions):
                loaded.model(input_ids=ids, **extra)
        return once

    variants = {
        "plain": (forward(), "plain"),
        "capture all residuals": (forward([f"L{i}.out" for i in range(layers)]), "plain"),
        "capture every head z": (forward([f"L{i}.attn.h{h}.z" for i in range(layers) for h in range(heads)]), "plain"),
        "ablate one head": (forward(interventions=[ablate("L10.attn.h3")]), "plain"),
        "plain, last logits": (forward(logits_to_keep=1), "plain, last logits"),
        "stats every layer+head": (lambda: stream_stats(loaded, ids, sweep), "plain, last logits"),
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for once, _ in variants.values():
            once()  # warm-up
        for _ in range(args.repeats):
            for name, (once, _) in variants.items():
                started = clock()
                once()
                timings[name].append(clock() - started)
    print(f"SmolLM2-135M, batch 4 × 128 tokens, {args.repeats} interleaved repeats, median {args.clock} seconds, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<24} {'seconds':>8} {'ratio':>7}  against")
    for name, samples in timings.items():
        median, baseline = statistics.median(samples), variants[name][1]
        print(f"{name:<24} {median:8.3f} {median / statistics.median(timings[baseline]):7.3f}x  {baseline}")


if __name__ == "__main__":
    main()
