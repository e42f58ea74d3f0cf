"""How long the headless verbs take from a fresh process, and where the time goes.

Every verb runs as a real ``garage`` process (wall clock and CPU seconds of the child);
the structure-only open of a 70B-shaped config is split into "import torch + transformers"
and "build the meta model and its anatomy", measured inside one child.

    .venv/bin/python bench/bench_cli.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LLAMA3_70B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
    "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": 128001,
}
# Inside one child: the import cost and the open cost of a structure-only 70B, apart.
SPLIT = """
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import torch, transformers, transformers.models.llama.modeling_llama
from engine.loading import open_model
t1, c1 = time.perf_counter(), time.process_time()
open_model(sys.argv[1], structure_only=True)
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"import_wall": t1 - t0, "import_cpu": c1 - c0, "open_wall": t2 - t1, "open_cpu": c2 - c1}))
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=REPO, capture_output=True)  # exit 2 of a refused recipe is expected
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per verb; the best is reported")
    options = parser.parse_args()
    garage = [sys.executable, "-m", "garage_tui.cli"]
    with tempfile.TemporaryDirectory() as scratch:
        home, config = Path(scratch) / "home", Path(scratch) / "llama-70b"
        config.mkdir()
        (config / "config.json").write_text(json.dumps(LLAMA3_70B))
        env = {**os.environ, "GARAGE_HOME": str(home), "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-c", "from engine.parts import PartsBin; "
                        "PartsBin().add_from_checkpoint('minilm-l6', 'L0.norm1', name='keep')"],
                       env=env, cwd=REPO, check=True)
        broken = Path(scratch) / "broken.yaml"
        broken.write_text("layers: [take: a.L1\n")
        verbs = {
            "garage --help": ["--help"],
            "parts list": ["parts", "list"],
            "parts show keep": ["parts", "show", "keep"],
            "parts tag keep x": ["parts", "tag", "keep", "x"],
            "recipe check (unreadable file)": ["recipe", "check", str(broken)],
            "inspect --structure-only 70B": ["inspect", "--structure-only", str(config), "--depth", "1"],
        }
        print(f"{'verb':<34} {'wall s':>7} {'cpu s':>7}   (best of {options.repeat}, fresh process each)")
        for label, argv in verbs.items():
            wall, cpu = min(timed([*garage, *argv], env) for _ in range(options.repeat))
            print(f"{label:<34} {wall:7.2f} {cpu:7.2f}")
        split = json.loads(subprocess.run([sys.executable, "-c", SPLIT, str(config)], env=env, cwd=REPO,
                                          capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        print(f"70B structure-only, split: import torch+transformers {split['import_wall']:.2f}s wall "
              f"({split['import_cpu']:.2f}s cpu); meta model + anatomy {split['open_wall']:.2f}s wall "
              f"({split['open_cpu']:.2f}s cpu)")


if __name__ == "__main__":
    main()
