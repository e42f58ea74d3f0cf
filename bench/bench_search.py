"""Layer-drop search on SmolLM2 (drop 4 of 30 → 26 layers) and the job runner's throughput.

1. Search: TPE (or ``--optimiser cmaes``) over which 4 layers to drop, ``--budget`` evaluations
   (issue 19 asks for 40), perplexity on the first ``--max-tokens`` tokens of the bundled text.
   ``--warm-start block-influence`` spends one of them on ShortGPT's Block Influence pass and
   starts the optimiser from its ranking; ``--warm-start screen`` (the default) adds the single
   drop of each of the ``--screen-layers`` (12) lowest-BI layers (one evaluation each) and
   seeds the optimiser with the best single drops; ``--warm-start none`` does neither.
2. Ground truth (only with ``--greedy``; 114 evaluations, ~minutes per round on 2 shared cores):
   drop the least harmful layer, four times; the search's best should be within 2% of it.
3. Throughput: the same ``--throughput-trials`` trials in-process, on 2 local workers and on a
   local Ray instance with 2 actors; trials per minute and peak memory (RSS) per worker.

Run: ``.venv/bin/python bench/bench_search.py [--budget 40] [--greedy]``.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LAYERS = 30
DROP = 4


def measured_trial(task):
    """A trial plus the worker's peak RSS in MB (for the memory-per-worker column)."""
    from engine.search.trial import evaluate_trial

    result = evaluate_trial(task)
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, os.getpid()


def spec_for(budget: int, max_tokens: int, optimiser: str, seed: int, warm_start: str = "none",
             screen_layers: int = 12):
    from engine.search import load_search_spec

    warm = {} if warm_start == "none" else {"warm_start": warm_start}
    if warm_start == "screen":
        warm["screen_layers"] = screen_layers
    return load_search_spec({**warm,
        "search_version": 1, "name": "smollm2-drop4", "recipe": str(REPO / "recipes/smollm2-identity.yaml"),
        "parameters": [{"drop": [0, LAYERS - 1], "count": DROP}], "objectives": ["perplexity"],
        "optimiser": optimiser, "budget": budget, "seed": seed, "max_tokens": max_tokens,
    })


def task_dropping(spec, dropped: set[int], number: int):
    """A trial task whose recipe drops exactly ``dropped`` (any count) from the identity recipe."""
    import copy

    from engine.search.trial import TrialTask

    doc = copy.deepcopy(spec.base)
    doc["layers"] = [layer for i, layer in enumerate(doc["layers"]) if i not in dropped]
    return TrialTask(number, tuple(sorted(float(i) for i in dropped)), doc, ("perplexity",), spec.max_tokens)


def greedy_truth(spec) -> tuple[float, list[int], int]:
    from engine.search.trial import evaluate_trial

    dropped: set[int] = set()
    evaluations = 0
    best_ppl = math.inf
    for round_ in range(DROP):
        scores = {}
        for layer in range(LAYERS):
            if layer in dropped:
                continue
            scores[layer] = evaluate_trial(task_dropping(spec, dropped | {layer}, evaluations)).perplexity
            evaluations += 1
        layer = min(scores, key=lambda k: (scores[k], k))
        dropped.add(layer)
        best_ppl = scores[layer]
        print(f"  greedy round {round_ + 1}: drop L{layer} → perplexity {best_ppl:.3f}", flush=True)
    return best_ppl, sorted(dropped), evaluations


def throughput(spec, trials: int) -> list[tuple[str, float, float, int, bool]]:
    from engine.jobs import InProcessBackend, PoolBackend, make_backend

    tasks = [(i, task_dropping(spec, {LAYERS - 1 - i, LAYERS - 5 - i, 3 + i, 10 + i}, i)) for i in range(trials)]
    rows = []
    reference = None
    backends = [("in-process", InProcessBackend), ("2 local workers", lambda: PoolBackend(2))]
    try:
        import ray  # noqa: F401

        backends.append(("ray, 2 actors", lambda: make_backend(workers=2, ray="local")))
    except ImportError:
        print("  (ray not installed: pip install 'model-garage[ray]' for its row)")
    for label, factory in backends:
        start = time.perf_counter()
        with factory() as backend:
            # a warm-up trial per worker first, so the table shows steady trials per minute
            list(backend.run(measured_trial, [(i, t) for i, t in tasks[:backend.workers]]))
            start = time.perf_counter()
            out = dict(backend.run(measured_trial, tasks))
        elapsed = time.perf_counter() - start
        results = {i: r.perplexity for i, (r, _, _) in out.items()}
        reference = reference or results
        per_worker: dict[int, float] = {}
        for _, rss, pid in out.values():
            per_worker[pid] = max(per_worker.get(pid, 0.0), rss)
        rows.append((label, trials / elapsed * 60, max(per_worker.values()), len(per_worker), results == reference))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--optimiser", default="tpe", choices=["tpe", "cmaes"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-start", default="screen", choices=["block-influence", "screen", "none"])
    parser.add_argument("--screen-layers", type=int, default=12, help="single drops --warm-start screen evaluates")
    parser.add_argument("--greedy", action="store_true", help="also run the 114-evaluation greedy ground truth")
    parser.add_argument("--throughput-trials", type=int, default=6)
    args = parser.parse_args()

    from engine.search import run_search

    spec = spec_for(args.budget, args.max_tokens, args.optimiser, args.seed, args.warm_start, args.screen_layers)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = run_search(spec, Path(tmp) / "search.jsonl")
        elapsed = time.perf_counter() - start
    best = report.best
    assert best is not None
    kept = {int(layer["take"].rsplit(".L", 1)[1]) for layer in best.recipe["layers"]}
    dropped = sorted(set(range(LAYERS)) - kept)
    warm = report.extra.get("warm_start")
    used = report.evaluated + (warm["evaluations"] if warm else 0)
    if warm:
        print(f"block influence, lowest first: {warm['ranking']} (warm start {warm['kind']}: "
              f"{warm['evaluations']} evaluation(s); {warm['enqueued']} warm trials asked first)")
    if warm and "screen" in warm:
        singles = sorted(warm["screen"], key=lambda s: s["values"][0])
        print(f"screen: {len(singles)} single drops (one evaluation each), best first: "
              + ", ".join(f"L{s['layer']} {s['values'][0]:.2f}" for s in singles))
    print(f"search ({args.optimiser}, seed {args.seed}, {args.max_tokens} tokens, warm start {args.warm_start}): "
          f"best perplexity {best.perplexity:.3f} dropping {dropped} (trial {best.number}) after {used} "
          f"evaluations ({elapsed:.0f} s)", flush=True)
    if args.greedy:
        truth, truth_dropped, evaluations = greedy_truth(spec)
        gap = (best.perplexity - truth) / truth
        print(f"greedy ground truth: perplexity {truth:.3f} dropping {truth_dropped} after {evaluations} "
              f"evaluations; search is {gap:+.2%} from it ({'within' if gap <= 0.02 else 'outside'} 2%)")
    if args.throughput_trials:
        print(f"\nthroughput, {args.throughput_trials} trials (26-layer builds in memory + scoring):")
        print(f"{'backend':<18}{'trials/min':>12}{'peak RSS/worker MB':>21}{'workers':>9}{'same results':>14}")
        for label, per_minute, rss, workers, same in throughput(spec, args.throughput_trials):
            print(f"{label:<18}{per_minute:>12.1f}{rss:>21.0f}{workers:>9}{'yes' if same else 'NO':>14}")


if __name__ == "__main__":
    main()
