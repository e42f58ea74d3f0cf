"""Shared pieces of the robustness catalog (tests/test_robust_*.py).

Every case gives the garage one bad input and checks the promise: exit code 2, exactly one
``garage: error: …`` line that names the file or value, no traceback, bounded time and
memory, and every file that existed before still there with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 60.0
MEMORY_GROWTH_LIMIT_KB = 1_500_000  # a bomb shows as a jump of the process's peak RSS
CHILD_AS_LIMIT = 6 * 1024**3  # address-space cap for the subprocess lane (torch maps ~2-3 GB)


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float


def cli(capsys, *argv: str, cwd: Path | None = None) -> Outcome:
    """Run ``garage ARGV`` in this process (fast), timing it and watching peak memory."""
    from garage_tui.cli import main

    capsys.readouterr()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old_cwd = Path.cwd()
    started = time.perf_counter()
    try:
        if cwd is not None:
            os.chdir(cwd)
        code = main([str(a) for a in argv])
    finally:
        os.chdir(old_cwd)
    seconds = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    captured = capsys.readouterr()
    assert seconds < TIME_LIMIT_S, f"garage {' '.join(map(str, argv))} took {seconds:.1f}s"
    assert grown < MEMORY_GROWTH_LIMIT_KB, f"garage {' '.join(map(str, argv))} grew peak memory by {grown} kB"
    return Outcome(code, captured.out, captured.err, seconds)


def assert_one_error(outcome: Outcome, *needles: str) -> str:
    """Exit 2, one ``garage: error:`` line holding every needle, no traceback anywhere."""
    text = outcome.out + outcome.err
    assert "Traceback" not in text, text
    assert "unexpected" not in outcome.err, outcome.err
    assert outcome.code == 2, (outcome.code, outcome.err)
    lines = outcome.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("garage: error: "), outcome.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tree_state(*roots: Path) -> dict[str, str]:
    """sha256 of every file (and the target of every link) under ``roots``: 'nothing lost' is equality."""
    state: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            key = str(path)
            if path.is_symlink():
                state[key] = "link->" + os.readlink(path)
            elif path.is_file():
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                state[key] = "dir"
    return state


def tiny_llama(folder: Path, layers: int = 2, seed: int = 0, dtype=None) -> Path:
    """A tiny random Llama saved as an HF folder (safetensors), with a copy of SmolLM2-sized nothing."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=layers, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=48, vocab_size=64, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    return folder


def recipe_file(folder: Path, sources: dict[str, str], layers: list[dict], name: str = "recipe.json",
                **extra) -> Path:
    first = next(iter(sources))
    doc = {"recipe_version": 1, "sources": sources, "embed": first, "final_norm": first, "lm_head": first,
           "layers": layers, **extra}
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def write_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file with a hand-written (possibly lying) header."""
    payload = json.dumps(header).encode()
    path.write_bytes(len(payload).to_bytes(8, "little") + payload + data)
    return path


CHILD_LANE = """
import json, sys, time, io, contextlib, os
from garage_tui.cli import main
results = []
for case in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(case["argv"])
        except SystemExit as exc:
            code = exc.code
        except MemoryError:
            code = "MemoryError"
    results.append({"code": code, "err": err.getvalue(), "out": out.getvalue()[-500:],
                    "seconds": time.perf_counter() - started})
print(json.dumps(results))
"""


def run_lane(cases: list[list[str]], env: dict[str, str] | None = None, timeout: float = 240) -> list[Outcome]:
    """Run many ``garage`` cases in one child process under an address-space cap and a timeout.

    One interpreter start for the lot keeps the catalog fast; the cap makes a memory bomb
    fail as a MemoryError (a failure here), the timeout makes a hang fail.
    """
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS_LIMIT, CHILD_AS_LIMIT))

    payload = json.dumps([{"argv": [str(a) for a in argv]} for argv in cases])
    done = subprocess.run([sys.executable, "-c", CHILD_LANE, payload], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return [Outcome(r["code"], r["out"], r["err"], r["seconds"]) for r in json.loads(done.stdout.splitlines()[-1])]
