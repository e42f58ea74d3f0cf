"""The fit planner against measured peak memory, and how fast it plans a 70B config.

Each (model, phase) is measured in its own subprocess: after a warm-up that imports
everything, opens the model's structure and loads its tokenizer once as ``open_model`` will
(the process baseline) and hands the warm-up's freed heap back (``malloc_trim``, so the phase
cannot hide allocations in it), the child records its resident memory, runs the phase, and
reports its peak RSS (VmHWM, which is
``ru_maxrss`` without the parent's pre-exec share; see ``_peak_bytes``) minus that baseline. Phases:

* ``load``    – ``open_model`` and one read of every weight: transformers memory-maps the
  safetensors, so weights become resident when first read (the first forward does that too);
* ``forward`` – load, then one forward pass of ``--seq`` tokens;
* ``capture`` – load, then one forward capturing every point (``plan --capture-all``).

The GGUF dequantisation into the conversion cache is a one-off step measured separately
(``convert``; it needs the cache to be empty, so it uses a temporary cache).

Run: ``.venv/bin/python bench/bench_plan.py`` (about a minute on 2 CPUs).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = ("smollm2-135m", "minilm-l6", "gemma3-270m")
CONVERT = ("smollm2-135m",)  # Gemma's one-off conversion (a 262k-entry tokenizer) takes minutes
PHASES = ("load", "forward", "capture")
SEQ = 128


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_bytes() -> int:
    """This process's peak RSS (VmHWM), the figure ``ru_maxrss`` reports for a process of its own.

    ``getrusage(...).ru_maxrss`` also carries the RSS of the pre-exec copy of the parent (Linux
    keeps the larger of the two), so a child of a big process (pytest holding SmolLM2) would
    report the parent's size; VmHWM is the child's own high-water mark, and /proc/self/clear_refs
    resets it.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> int:
    """Reset the high-water mark to the current RSS and return it.

    The peak is a high-water mark: without the reset, a warm-up peak (imports, pages the kernel
    reclaims later) would stand in for the phase's own.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_bytes()


def _trim_heap() -> None:
    """Hand the warm-up's freed heap back to the system (glibc ``malloc_trim``).

    Parsing a tokenizer frees a few hundred MiB (Gemma's: ~190 MiB) that the C heap keeps; left in
    the baseline, the phase's own small allocations (captures, the second tokenizer) would land in
    it unseen. A fresh ``garage`` process has no such spare heap, so the measurement must not either.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim the same way


def child(spec: str, phase: str, seq: int) -> dict[str, float]:
    """Run one phase in this (fresh) process; return the peak bytes above the warm baseline.

    The baseline is the RSS after the warm-up, with the high-water mark reset to it there
    (``/proc/self/clear_refs``), so the high-water mark afterwards is the phase's own peak.
    ``phase="all"`` runs load, forward and capture one after another in this one process and
    reports each peak (``{"load": …, "forward": …, "capture": …}``): the phases nest (each one
    starts with the one before it) and the high-water mark is never reset between them, so each
    is what its own fresh process would see, bar what the earlier phase left warm (kernel
    caches, the heap the forward freed and the capture reuses) — the test's one-process check.
    """
    import torch

    from engine.addresses import all_addresses
    from engine.fit_plan import CAPTURE_ALL_POINTS
    from engine.hooks import hooked
    from engine.loading import ModelSource, _load_tokenizer, locate, open_model

    torch.set_num_threads(1)
    structure = open_model(spec, structure_only=True)
    source = locate(spec)
    if phase == "convert":
        baseline = _reset_peak()
        from engine.gguf_cache import converted_folder

        converted_folder(source.file)
        return {"peak": _peak_bytes() - baseline, "baseline": baseline}
    if source.kind.endswith("gguf"):
        from engine.gguf_cache import converted_folder

        source = ModelSource(source.name, "folder", folder=converted_folder(source.file), checked_cache=True)
    _load_tokenizer(source)  # the tokenizer library's first-use cost belongs to the baseline (as open_model loads it)
    with torch.no_grad():  # warm the CPU kernels on a tiny tensor
        torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    _trim_heap()
    baseline = _reset_peak()
    loaded = open_model(spec)
    with torch.no_grad():
        for tensor in (*loaded.model.parameters(), *loaded.model.buffers()):
            tensor.sum()  # page every mapped weight in, as a first forward would
    peaks = {"load": _peak_bytes() - baseline}
    if phase == "load":
        return {"peak": peaks["load"]}
    ids = torch.randint(0, 1000, (1, seq))
    if phase in ("forward", "all"):
        with torch.no_grad():
            loaded.model(input_ids=ids)
        peaks["forward"] = _peak_bytes() - baseline
        if phase == "forward":
            return {"peak": peaks["forward"]}
    points = [a for a in all_addresses(structure.anatomy)
              if "." in a and a.rsplit(".", 1)[1] in CAPTURE_ALL_POINTS and ".attn.h" not in a]
    with torch.no_grad(), hooked(loaded.model, loaded.anatomy, capture=points) as tap:
        loaded.model(input_ids=ids)
        assert len(tap.keys()) == len(set(points)) or len(tap.keys()) > 0
    peaks["capture"] = _peak_bytes() - baseline
    return peaks if phase == "all" else {"peak": peaks["capture"]}


def measure(spec: str, phase: str, seq: int = SEQ, env: dict[str, str] | None = None) -> dict[str, float]:
    """Peak bytes of ``phase`` on ``spec``, measured in a fresh subprocess."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", spec, phase, str(seq)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"measuring {spec} {phase} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def predicted(plan, phase: str) -> int:
    """The plan's figure for a measured phase."""
    return {"load": plan.load_peak_bytes, "forward": plan.forward_peak_bytes,
            "capture": plan.capture_peak_bytes}[phase]


def llama70b_config(folder: Path) -> Path:
    """A Llama-3-70B-shaped config.json (the shapes of meta-llama/Meta-Llama-3-70B)."""
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def main() -> None:
    from engine.fit_plan import parse_max_memory, plan_fit

    mib = 2**20
    print(f"{'model':14} {'phase':8} {'predicted MiB':>14} {'measured MiB':>13} {'error':>7}")
    from engine.bundled import bundled_path
    from engine.errors import GarageError

    for spec in MODELS:
        try:
            bundled_path(spec)
        except GarageError:
            print(f"{spec:14} not installed; skipped")
            continue
        plan = plan_fit(spec, seq=SEQ, capture_all=True)
        for phase in PHASES:
            measured = measure(spec, phase)["peak"]
            guess = predicted(plan, phase)
            print(f"{spec:14} {phase:8} {guess / mib:14.1f} {measured / mib:13.1f} "
                  f"{(guess - measured) / measured:+7.1%}")
        if plan.gguf is not None and spec in CONVERT:
            with tempfile.TemporaryDirectory() as cache:
                measured = measure(spec, "convert", env={"GARAGE_CACHE": cache})["peak"]
            guess = plan.gguf.conversion_peak_bytes
            print(f"{spec:14} {'convert':8} {guess / mib:14.1f} {measured / mib:13.1f} "
                  f"{(guess - measured) / measured:+7.1%}  (weights only: the tokenizer conversion is not planned)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = llama70b_config(Path(tmp) / "llama-3-70b")
        started = time.perf_counter()
        plan = plan_fit(str(folder), device="auto", dtype="bfloat16", seq=8192,
                        max_memory=parse_max_memory("cpu=100GiB,disk=1TiB"))
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        plan_fit(str(folder), device="auto", dtype="bfloat16", seq=8192,
                 max_memory=parse_max_memory("cpu=100GiB,disk=1TiB"), capture_all=True)
        elapsed_capture = time.perf_counter() - started
    shares = ", ".join(f"{s.device}={s.weight_bytes / 2**30:.1f}GiB" for s in plan.devices)
    print(f"Llama-3-70B config: {plan.n_parameters / 1e9:.2f}B parameters, bf16 weights "
          f"{plan.weight_bytes / 2**30:.1f} GiB ({shares}), KV cache at 8192 tokens "
          f"{plan.kv_cache_bytes / 2**30:.2f} GiB; planned in {elapsed:.2f} s "
          f"({elapsed_capture:.2f} s with --capture-all)")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        main()
