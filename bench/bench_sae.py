"""SAE training speed and quality on SmolLM2: a TopK SAE (8 × 576 features, k = 32) at L15.out,
trained on streamed activations over Python's own documentation (``pydoc_data.topics``).

Prints tokens/s, the standard metrics (explained variance, L0, dead share, MSE, cosine,
ce_loss_score on held-out windows) and the token budget 30 minutes would allow at the measured
speed. Issue 17's target: explained variance ≥ 0.7, ce_loss_score ≥ 0.8, dead share ≤ 10% within
30 minutes on 2 cores.

    .venv/bin/python bench/bench_sae.py [--tokens N] [--at L15.out] [--expansion 8] [--k 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.features.train import TrainConfig, train_sae  # noqa: E402
from engine.loading import open_model  # noqa: E402

TARGET_SECONDS = 30 * 60


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16_000, help="training tokens (default 16000: ~2 min here)")
    parser.add_argument("--at", default="L15.out")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-windows", type=int, default=4)
    args = parser.parse_args()
    opened = time.perf_counter()
    loaded = open_model("smollm2-135m")
    print(f"  opened SmolLM2 in {time.perf_counter() - opened:.1f}s", file=sys.stderr, flush=True)
    config = TrainConfig(address=args.at, expansion=args.expansion, k=args.k, sources=["pydoc"],
                         max_tokens=args.tokens, lr=args.lr, eval_windows=args.eval_windows)
    started = time.perf_counter()
    cpu_started = time.process_time()  # CPU seconds of every thread: a speed that shared cores do not distort
    tokens_per_step = (config.window - 1) * config.windows_per_step

    def progress(stage: str, fraction: float | None) -> None:
        # partial speed on stderr after every step, so a run cut short still says how fast it went
        if stage.startswith("step "):
            step = int(stage.split()[1].rstrip(":"))
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            print(f"  {stage} · ~{step * tokens_per_step / elapsed:.0f} tokens/s wall, "
                  f"~{step * tokens_per_step / cpu:.0f} tokens per CPU-second so far", file=sys.stderr, flush=True)

    report = train_sae(loaded, config, progress=progress)
    total = time.perf_counter() - started
    cpu_total = time.process_time() - cpu_started
    m = report.metrics
    print(f"SAE {report.coder.describe()} at {args.at}: {report.steps} steps, {report.tokens} tokens")
    print(f"training: {report.seconds:.1f}s = {report.tokens_per_s:.0f} tokens/s (model up to the hook + SAE step); "
          f"with evaluation {total:.1f}s")
    print(f"explained variance {m.explained_variance:.3f} · L0 {m.l0:.1f} · dead share {m.dead_share:.1%} · "
          f"MSE {m.mse:.4g} · cosine {m.cosine:.3f} · ce_loss_score {m.ce_loss_score:.3f} "
          f"(CE clean {m.ce_clean:.3f}, spliced {m.ce_spliced:.3f}, zero-ablated {m.ce_zero:.3f}; {m.tokens} tokens)")
    print(f"30 minutes at this wall speed: ~{int(report.tokens_per_s * TARGET_SECONDS):,} training tokens; "
          f"CPU time (training + evaluation) {cpu_total:.0f}s, so 2 uncontended cores give "
          f"~{int(2 * TARGET_SECONDS * report.tokens / max(cpu_total, 1e-9)):,} tokens in 30 minutes")


if __name__ == "__main__":
    main()
