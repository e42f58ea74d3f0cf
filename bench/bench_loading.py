"""First open (GGUF dequantised, tokenizer converted, cached) vs second open (from the cache), and
the peak memory of the first open, for each bundled GGUF model.

Each open runs in a fresh subprocess, first with an empty cache folder, then with the warm one.
The child reports its wall and CPU seconds for the open alone (torch, transformers and the
modeling modules are imported before the clock starts), its resident memory after imports, and its peak resident memory
(``resource.getrusage(...).ru_maxrss``). Peak memory is compared with the model's float32
weights, counted once when tied; the aim is a first-open peak of at most 1.3× those bytes.
CPU seconds are printed beside wall seconds because on a shared machine the wall clock
mostly measures the neighbours.

    .venv/bin/python bench/bench_loading.py                     # both bundled GGUFs
    .venv/bin/python bench/bench_loading.py smollm2-135m        # one of them
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = ("smollm2-135m", "gemma3-270m")
CHILD = """
import json, resource, sys, time
import transformers, torch
# Imports are not opening: the modeling and loading modules come in before the clock starts.
import transformers.core_model_loading, transformers.tokenization_utils_tokenizers
import transformers.models.llama.modeling_llama, transformers.models.gemma3.modeling_gemma3
from engine.bundled import bundled_path
from engine.loading import open_model
bundled_path(sys.argv[1])  # a chunked model is joined once; that is packaging, not opening
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
base = rss_mb()
t, c = time.perf_counter(), time.process_time()
loaded = open_model(sys.argv[1])
wall, cpu = time.perf_counter() - t, time.process_time() - c
seen, weights = set(), 0
for p in loaded.model.parameters():
    if p.data_ptr() not in seen:
        seen.add(p.data_ptr()); weights += p.numel() * 4
print(json.dumps({"wall": wall, "cpu": cpu, "base_mb": base, "weights_mb": weights / 2**20,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@dataclass
class OpenTiming:
    wall: float
    cpu: float
    base_mb: float
    weights_mb: float
    peak_mb: float


def timed_open(model: str, cache: str) -> OpenTiming:
    env = {**os.environ, "GARAGE_CACHE": cache, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", CHILD, model], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return OpenTiming(**json.loads(out.strip().splitlines()[-1]))


def bench(model: str) -> None:
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        first = timed_open(model, cache)
        second = timed_open(model, cache)
        wall = time.perf_counter() - started
    print(f"{model}  (fp32 weights {first.weights_mb:.0f} MB; bench wall {wall:.0f}s)")
    print(f"  first open (dequantise + tokenizer + cache): {first.wall:7.2f}s wall {first.cpu:7.2f}s CPU")
    print(f"  second open (from the cache):                {second.wall:7.2f}s wall {second.cpu:7.2f}s CPU")
    print(f"  ratio first/second:                          {first.wall / second.wall:7.1f}x wall "
          f"{first.cpu / second.cpu:5.1f}x CPU")
    for label, run in (("first", first), ("second", second)):
        print(f"  {label:6s} open peak RSS {run.peak_mb:6.0f} MB = {run.peak_mb / run.weights_mb:4.2f}x fp32 weights; "
              f"above the {run.base_mb:.0f} MB after imports: {(run.peak_mb - run.base_mb) / run.weights_mb:4.2f}x")


def main() -> None:
    for model in sys.argv[1:] or MODELS:
        bench(model)


if __name__ == "__main__":
    main()
