"""First open of SmolLM2 (GGUF dequantised and cached) vs second open (from the cache).

Each open runs in a fresh subprocess with an empty (first) or warm (second) cache folder,
so neither benefits from the other's page cache of Python modules more than the other.

    .venv/bin/python bench/bench_loading.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Imports happen before the clock starts: the bench measures opening, not importing torch.
SNIPPET = "import time, transformers, transformers.models.llama.modeling_llama; " \
          "from engine.loading import open_model; t=time.perf_counter(); " \
          "open_model('smollm2-135m'); print(time.perf_counter()-t)"


def timed_open(cache: str) -> float:
    env = {**os.environ, "GARAGE_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        first = timed_open(cache)
        second = timed_open(cache)
        print(f"first open (dequantise + cache): {first:6.2f}s")
        print(f"second open (from cache):        {second:6.2f}s")
        wall = time.perf_counter() - started
        print(f"ratio first/second:              {first / second:6.1f}x   (bench wall {wall:.0f}s)")


if __name__ == "__main__":
    main()
