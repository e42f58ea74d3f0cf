"""SAE training speed and quality on SmolLM2: a TopK SAE (8 × 576 features, k = 32) at L15.out,
trained on activations over Python's own documentation (``pydoc_data.topics``) and the bundled
sample, several epochs over the same activations, within a budget of process CPU time.

Prints tokens per CPU-second for the activation pass (the model up to the hook) and for the SAE
steps separately, interim explained variance / L0 / dead share on the held-out windows every
``--interim-every`` CPU-seconds (so a run cut short still says something), then the standard
metrics (explained variance, L0, dead share, MSE, cosine, ce_loss_score on held-out windows).
Issue 17's target: explained variance ≥ 0.7, ce_loss_score ≥ 0.8, dead share ≤ 10% within 30
minutes on 2 cores, i.e. 3600 CPU-seconds (the default budget; CPU time is the fair measure on a
shared machine).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_sae.py [--budget-cpu-seconds 3600] [--epochs 1000]
        [--tokens N] [--at L15.out] [--expansion 8] [--k 32] [--windows-per-step 16] [--eval-windows 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.features.train import TrainConfig, train_sae  # noqa: E402
from engine.loading import open_model  # noqa: E402

TARGET = {"explained_variance": 0.7, "ce_loss_score": 0.8, "dead_share": 0.10}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-cpu-seconds", type=float, default=3600.0,
                        help="process CPU time for training (default 3600 = 2 cores × 30 minutes)")
    parser.add_argument("--epochs", type=int, default=1000, help="passes over the text (default: the budget decides)")
    parser.add_argument("--tokens", type=int, default=None, help="training tokens over all epochs (default: no cap)")
    parser.add_argument("--at", default="L15.out")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--windows-per-step", type=int, default=16, help="128-token windows per SAE step")
    parser.add_argument("--eval-windows", type=int, default=32, help="held-out windows (never trained on)")
    parser.add_argument("--interim-every", type=float, default=300.0, help="CPU-seconds between interim metrics")
    parser.add_argument("--checkpoint", help="checkpoint folder (with --resume, continue a run)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--cache", help="activation shard folder")
    args = parser.parse_args()
    opened = time.perf_counter()
    loaded = open_model("smollm2-135m")
    print(f"  opened SmolLM2 in {time.perf_counter() - opened:.1f}s", file=sys.stderr, flush=True)
    config = TrainConfig(address=args.at, expansion=args.expansion, k=args.k, max_tokens=args.tokens,
                         epochs=args.epochs, budget_cpu_seconds=args.budget_cpu_seconds, lr=args.lr,
                         windows_per_step=args.windows_per_step, eval_windows=args.eval_windows,
                         checkpoint_every=100)
    started = time.perf_counter()
    cpu_started = time.process_time()
    last_print = [0.0]

    def progress(stage: str, fraction: float | None) -> None:
        if stage.startswith("step ") and time.process_time() - last_print[0] >= 60:  # a line per CPU-minute
            last_print[0] = time.process_time()
            print(f"  {stage} · {time.process_time() - cpu_started:.0f} CPU-s, "
                  f"{time.perf_counter() - started:.0f}s wall", file=sys.stderr, flush=True)

    def interim(m: dict[str, float]) -> None:
        print(f"  interim at {m['cpu_seconds']:.0f} CPU-s, step {m['step']:.0f}, {m['tokens']:,.0f} tokens, "
              f"{m['epochs']:.1f} epochs: EV {m['explained_variance']:.3f} · L0 {m['l0']:.1f} · "
              f"dead (held-out) {m['dead_share']:.1%} · dead (last pass of training) {m['dead_share_training']:.1%} · "
              f"cosine {m['cosine']:.3f}", flush=True)

    report = train_sae(loaded, config, checkpoint_dir=args.checkpoint, resume=args.resume, cache_dir=args.cache,
                       progress=progress, interim=interim, interim_every_cpu_seconds=args.interim_every)
    total = time.perf_counter() - started
    cpu_total = time.process_time() - cpu_started
    m = report.metrics
    print(f"SAE {report.coder.describe()} at {args.at}: {report.steps} steps, {report.tokens:,} tokens, "
          f"{report.epochs:.2f} epochs, stopped by {report.stopped}")
    print(f"speed: activation pass {report.pass_tokens_per_cpu_s:.0f} tokens per CPU-second, SAE steps "
          f"{report.sae_tokens_per_cpu_s:.0f} tokens per CPU-second; training {report.cpu_seconds:.0f} CPU-s "
          f"({report.seconds:.0f}s wall); with evaluation {cpu_total:.0f} CPU-s ({total:.0f}s wall)")
    print(f"explained variance {m.explained_variance:.3f} · L0 {m.l0:.1f} · dead share {m.dead_share:.1%} "
          f"(held-out {m.tokens} tokens; {report.dead_share_training:.1%} over the last pass of training) · "
          f"MSE {m.mse:.4g} · cosine {m.cosine:.3f} · ce_loss_score {m.ce_loss_score:.3f} "
          f"(CE clean {m.ce_clean:.3f}, spliced {m.ce_spliced:.3f}, zero-ablated {m.ce_zero:.3f})")
    met = {"explained_variance": m.explained_variance >= TARGET["explained_variance"],
           "ce_loss_score": m.ce_loss_score >= TARGET["ce_loss_score"],
           "dead_share": m.dead_share <= TARGET["dead_share"]}
    print("target (EV ≥ 0.7, ce_loss_score ≥ 0.8, dead ≤ 10%): "
          + ", ".join(f"{name} {'met' if ok else 'missed'}" for name, ok in met.items())
          + f" within {report.cpu_seconds:.0f} CPU-s of training")


if __name__ == "__main__":
    main()
