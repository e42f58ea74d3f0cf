"""Peak memory of a build stays near the largest tensors, not the model size.

Each measurement runs in its own subprocess and reads that child's peak RSS from
``wait4``. The baseline child imports the same libraries and validates the recipe (so it
holds torch, transformers and the meta-device plan) but writes nothing; the build's extra
peak over that baseline is what building costs. For contrast, a naive build that loads the
whole model and saves it again is measured the same way.

Run: .venv/bin/python bench/bench_build.py   (about a minute; needs the SmolLM2 conversion cache)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024

BASELINE = """
import sys
from engine.build import load_recipe, validate_recipe
report = validate_recipe(load_recipe(sys.argv[1]))
assert report.ok
"""
BUILD = """
import sys
from engine.build import build, load_recipe
build(load_recipe(sys.argv[1]), sys.argv[2])
"""
NAIVE = """
import sys
import torch
from engine.build import load_recipe, validate_recipe
import transformers
from transformers import AutoModelForCausalLM
transformers.utils.logging.disable_progress_bar()
report = validate_recipe(load_recipe(sys.argv[1]))
folder = report.sources["smol"].folder
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model.save_pretrained(sys.argv[2])
"""


def peak_rss(code: str, *args: str) -> tuple[int, float]:
    """Peak resident memory (bytes) and wall time of ``python -c code args``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench child failed: {code.strip().splitlines()[-1]}")
    return usage.ru_maxrss * 1024, elapsed


def main() -> None:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
    from engine.build import load_recipe, validate_recipe

    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    baselines: dict[str, int] = {}
    try:
        for stem in ("smollm2-identity", "smollm2-frankenmerge"):
            recipe = REPO / "recipes" / f"{stem}.yaml"
            plan = validate_recipe(load_recipe(recipe)).plan
            baseline, _ = peak_rss(BASELINE, str(recipe))
            baselines[stem] = baseline
            built, seconds = peak_rss(BUILD, str(recipe), str(work / stem))
            extra = built - baseline
            print(f"{stem}: {plan.total_bytes / MB:.0f} MB written in {seconds:.1f}s; largest tensor "
                  f"{plan.largest_tensor_bytes / MB:.0f} MB")
            print(f"  peak RSS: baseline (imports + plan) {baseline / MB:.0f} MB, build {built / MB:.0f} MB "
                  f"-> build adds {extra / MB:.0f} MB")
            print(f"  build extra / largest tensor = {extra / plan.largest_tensor_bytes:.2f}x; "
                  f"build extra / model size = {extra / plan.total_bytes:.2f}x")
            shutil.rmtree(work / stem, ignore_errors=True)
        recipe = REPO / "recipes" / "smollm2-identity.yaml"
        naive, seconds = peak_rss(NAIVE, str(recipe), str(work / "naive"))
        plan = validate_recipe(load_recipe(recipe)).plan
        print(f"naive load-and-save of the same model: peak RSS {naive / MB:.0f} MB in {seconds:.1f}s "
              f"(extra over baseline / model size = {(naive - baselines['smollm2-identity']) / plan.total_bytes:.2f}x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
