"""Peak memory of streaming statistics vs full capture, every layer and head of SmolLM2.

Each mode runs in its own subprocess on 4 × 512 tokens of the bundled sample text and
reports its peak RSS (``ru_maxrss``) minus the RSS after loading the model, so the model
itself cancels out. Run: ``.venv/bin/python bench/bench_stats_memory.py``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH, TOKENS = 4, 512


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(mode: str) -> None:
    import torch

    from engine.analyzers.importance import sample_text
    from engine.loading import open_model
    from engine.run import run
    from engine.stats import every_layer_and_head, stream_stats

    loaded = open_model("smollm2-135m")
    ids = loaded.tokenizer(sample_text(), return_tensors="pt").input_ids[0]
    ids = ids.repeat(BATCH * TOKENS // ids.numel() + 1)[: BATCH * TOKENS].view(BATCH, TOKENS)
    with torch.inference_mode():  # warm the allocator and kernels outside the measurement
        loaded.model(input_ids=ids[:1, :8])
    baseline = _rss_mb()
    start = time.perf_counter()
    if mode == "stream":
        summaries = stream_stats(loaded, ids, every_layer_and_head(loaded), bins=64)
        kept_numbers = sum(len(s.hist_counts) + len(s.hist_edges) + 16 for s in summaries.values())
    else:
        # the same information kept the usual way: each layer's output and all heads' z
        points = [f"L{i}.{p}" for i in range(loaded.anatomy.n_layers) for p in ("out", "attn.z")]
        tap = run(loaded, ids, capture=points, last_logits_only=True).tap
        kept_numbers = sum(tap[p].numel() for p in points)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "peak_mb": peak, "baseline_mb": baseline, "extra_mb": peak - baseline,
                      "kept_numbers": kept_numbers, "seconds": seconds}))


def main() -> None:
    results = {}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
    for mode in ("stream", "capture"):
        done = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True,
                              cwd=REPO, env=env, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    stream, capture = results["stream"], results["capture"]
    print(f"SmolLM2, {BATCH}×{TOKENS} tokens, 30 layer outputs + 270 heads")
    for mode, row in results.items():
        print(f"  {mode:8s} peak RSS {row['peak_mb']:7.0f} MB  (+{row['extra_mb']:6.0f} MB over the loaded model)"
              f"  keeps {row['kept_numbers']:>11,d} numbers  {row['seconds']:5.1f} s")
    print(f"  capture/stream extra memory: {capture['extra_mb'] / max(stream['extra_mb'], 1):.1f}×;"
          f" numbers kept: {capture['kept_numbers'] / stream['kept_numbers']:.0f}×")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.path.insert(0, str(REPO))
        child(sys.argv[2])
    else:
        main()
