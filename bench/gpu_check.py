"""The GPU check: parity, split-model parity, hook overhead and the TUI's first frame on CUDA.

One script, a few minutes on one GPU, one table. On a machine where torch sees no CUDA device it
prints "no GPU" and exits 0, so it can run anywhere (a test runs it on CPU).

Checks (SmolLM2-135M, the bundled GGUF):
* fp32 CUDA vs fp32 CPU: captures at several addresses and the logits, relative L2 error
  (TF32 is switched off; reduction order still differs, hence 1e-4, not bit equality);
* bf16 CUDA vs fp32 CPU: the same, within the bf16 tolerance of tests/test_dtypes.py (0.06);
* CUDA + CPU split (``device="auto"`` with a GPU budget that holds half the layers) vs CUDA
  only: logits under each intervention (ablate, mean-ablate, scale, steer, patch), 1e-4;
* hook overhead on CUDA: capture every residual and ablate one head vs a plain forward;
* the TUI's first frame with the real model opening on CUDA, in a fresh interpreter.

Exit status: 0 when every check passes (or there is no GPU), 1 otherwise.
Run: ``.venv/bin/python bench/gpu_check.py``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is Paris, and the capital of Italy is"
OTHER = "The capital of Spain is Madrid, and the capital of Japan is"
ADDRESSES = ["embed.out", "L0.out", "L15.out", "L29.out", "L15.attn.z", "L15.mlp.hidden"]


@dataclass
class Check:
    name: str
    measured: float
    bound: float | None  # None: reported, not judged
    unit: str = ""

    @property
    def ok(self) -> bool:
        return self.bound is None or self.measured <= self.bound


def relative_l2(got, want) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def parity_checks(cpu, cuda, label: str, bound: float) -> list[Check]:
    from engine.capture import capture_prompt
    from engine.runner import encode, forward

    got, _ = capture_prompt(cuda, PROMPT, ADDRESSES)
    want, _ = capture_prompt(cpu, PROMPT, ADDRESSES)
    worst = max(relative_l2(got[a], want[a]) for a in ADDRESSES)
    logits = relative_l2(forward(cuda, encode(cuda, PROMPT))[0], forward(cpu, encode(cpu, PROMPT))[0])
    return [Check(f"{label}: worst capture", worst, bound), Check(f"{label}: logits", logits, bound)]


def split_checks(cuda, split) -> list[Check]:
    import torch

    from engine.capture import capture_prompt
    from engine.interventions import ablate, patch, scale, steer
    from engine.runner import encode, forward

    torch.manual_seed(0)
    vector = torch.randn(cuda.config.hidden_size)
    donor, _ = capture_prompt(cuda, OTHER, ["L14.attn.z"])
    cases = {
        "none": [], "ablate L22.attn.h1": [ablate("L22.attn.h1")], "mean-ablate L15.mlp": [ablate("L15.mlp", "mean")],
        "scale L18 ×0.5": [scale("L18", 0.5)], "steer L20": [steer("L20", vector, 4.0)],
        "patch L14.attn.z": [patch("L14.attn.z", donor["L14.attn.z"])],
    }
    checks = []
    for name, interventions in cases.items():
        got, _ = forward(split, encode(split, PROMPT), interventions=interventions)
        want, _ = forward(cuda, encode(cuda, PROMPT), interventions=interventions)
        checks.append(Check(f"cuda+cpu split vs cuda: {name}", relative_l2(got, want), 1e-4))
    return checks


def overhead_checks(cuda, repeats: int = 20) -> list[Check]:
    import torch

    from engine.hooks import hooked
    from engine.interventions import ablate

    ids = torch.randint(0, cuda.config.vocab_size, (4, 128), device=cuda.input_device)
    layers = cuda.anatomy.n_layers
    variants = {"plain": ((), ()), "capture all residuals": ([f"L{i}.out" for i in range(layers)], ()),
                "ablate one head": ((), [ablate("L10.attn.h3")])}
    timings: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        cuda.model(input_ids=ids)
        torch.cuda.synchronize()
        for _ in range(repeats):
            for name, (capture, interventions) in variants.items():
                with hooked(cuda.model, cuda.anatomy, capture, interventions):
                    started = time.perf_counter()
                    cuda.model(input_ids=ids)
                    torch.cuda.synchronize()
                    timings[name].append(time.perf_counter() - started)
    plain = statistics.median(timings["plain"])
    return [Check(f"hook overhead on cuda: {name}", statistics.median(samples) / plain, None, "×")
            for name, samples in timings.items() if name != "plain"]


FIRST_FRAME = """
import time, sys
from garage_tui.factory import build_app
from garage_tui.app import GarageApp
def start(self):
    print(f"FRAME {time.time():.6f}", flush=True)
    self.exit()
GarageApp._start = start
build_app(None, None, None, model="smollm2-135m", device="cuda").run(headless=True, size=(100, 30))
"""


def first_frame_check() -> Check:
    started = time.time()
    done = subprocess.run([sys.executable, "-c", FIRST_FRAME], capture_output=True, text=True, cwd=REPO,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = next((line for line in done.stdout.splitlines() if line.startswith("FRAME")), None)
    if line is None:
        print(done.stderr[-2000:], file=sys.stderr)
        return Check("TUI first frame (smollm2 on cuda)", float("inf"), 10.0, "s")
    return Check("TUI first frame (smollm2 on cuda)", float(line.split()[1]) - started, 10.0, "s")


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no GPU: torch sees no CUDA device here, so there is nothing to check (exit 0)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from engine.fit_plan import plan_fit
    from engine.loading import open_model

    started = time.time()
    cpu = open_model("smollm2-135m")
    cuda = open_model("smollm2-135m", device="cuda")
    checks = parity_checks(cpu, cuda, "fp32 cuda vs fp32 cpu", 1e-4)
    bf16 = open_model("smollm2-135m", device="cuda", dtype="bfloat16")
    checks += parity_checks(cpu, bf16, "bf16 cuda vs fp32 cpu", 0.06)
    del bf16
    # a GPU budget that holds about half the layers: the rest runs on the CPU
    plan = plan_fit("smollm2-135m", device="cuda")
    budget = {0: plan.weight_bytes // 2, "cpu": 64 * 2**30}
    with tempfile.TemporaryDirectory() as offload:
        split = open_model("smollm2-135m", device="auto", max_memory=budget, offload_folder=offload)
        placed = sorted({str(where) for where in split.model.hf_device_map.values()})
        checks += split_checks(cuda, split)
        del split
    checks += overhead_checks(cuda)
    checks.append(first_frame_check())
    name = torch.cuda.get_device_name(0)
    print(f"GPU check on {name} (torch {torch.__version__}); split placed on {', '.join(placed)}")
    print(f"{'check':<52} {'measured':>12} {'bound':>10}  ok")
    for check in checks:
        bound = "-" if check.bound is None else f"{check.bound:.0e}" if check.bound < 1 else f"{check.bound:g}"
        print(f"{check.name:<52} {check.measured:12.3g}{check.unit:1} {bound:>10}  {'yes' if check.ok else 'NO'}")
    print(f"total {time.time() - started:.0f} s")
    return 0 if all(check.ok for check in checks) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
    sys.exit(main())
