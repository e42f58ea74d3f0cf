"""peer_bench plugin: the garage engine's cases, timed in the same round-robin as the peers.

Loaded by ``bench/peer_bench.py`` by default; imports the engine from this checkout. Every
case goes through ``engine.run.run`` (the one forward entry point) or ``stream_stats``, on the
same weights folder as the ``hf_plain`` baseline, with the ablation target the peers use.

    .venv/bin/python bench/peer_bench.py --only garage --hf-dir garage:smollm2-135m \\
        --skip verify,imports,loads,memory,minilm

In a peer venv the engine needs its light deps (``--peer-venv`` installs them).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_ENGINE: dict = {}
LAYER, HEAD = 10, 3  # the peers' ablation target (peer_bench.SMOL_ABL_LAYER/HEAD)


def _engine(model_dir):
    if "m" not in _ENGINE:
        from engine.loading import open_model

        _ENGINE["m"] = open_model(str(model_dir))
    return _ENGINE["m"]


def _runner(capture=(), interventions=()):
    """A case that runs one forward through the engine's entry point, keeping what it captured."""

    def build(z, ids):
        from engine.run import run

        g = _engine(z.model_dir)
        points = capture(g) if callable(capture) else list(capture)
        edits = interventions(g, ids) if callable(interventions) else list(interventions)

        def once():
            out = run(g, ids, capture=points, interventions=edits)
            return out.logits, [out.tap[p] for p in points]

        return once

    return build


def _layers(g):
    return [f"L{i}.out" for i in range(g.anatomy.n_layers)]


def _heads_z(g):
    return [f"L{i}.attn.h{j}.z" for i in range(g.anatomy.n_layers) for j in range(g.anatomy.geometry.n_heads)]


def _stats(addresses):
    def build(z, ids):
        from engine.stats import stream_stats

        g = _engine(z.model_dir)
        chosen = addresses(g)
        return lambda: stream_stats(g, ids, chosen)

    return build


def _stats_per_row(addresses):
    """Statistics over the batch fed one row at a time: four passes, four updates per site, merged."""
    def build(z, ids):
        from engine.stats import stream_stats

        g = _engine(z.model_dir)
        chosen = addresses(g)
        rows = list(ids.split(1))
        return lambda: stream_stats(g, rows, chosen)

    return build


def _ablate(g, ids):
    from engine.interventions import ablate

    return [ablate(f"L{LAYER}.attn.h{HEAD}")]


def _scale(g, ids):
    from engine.interventions import scale

    return [scale(f"L{LAYER}.attn.h{HEAD}", 0.5)]


def _steer(g, ids):
    import torch

    from engine.interventions import steer

    vector = torch.randn(g.config.hidden_size, generator=torch.Generator().manual_seed(0))
    return [steer(f"L{LAYER}", vector, strength=2.0)]


def _patch(g, ids):
    """Patch L10.h3's z with its value from the same batch reversed (a corrupted run)."""
    from engine.interventions import patch
    from engine.run import run

    address = f"L{LAYER}.attn.h{HEAD}.z"
    source = run(g, ids.flip(0), capture=[address], last_logits_only=True).tap[address].clone()
    return [patch(address, source)]


def smollm2_cases():
    from engine.stats import every_layer_and_head

    def hf_last_logits(z, ids):
        m = z["sdpa"]
        return lambda: m(ids, logits_to_keep=1).logits

    def hf_layers_only(z, ids):
        m = z["sdpa"]
        body = m.model
        # every decoder layer, neither the final norm nor the head: what a stats sweep runs
        return lambda: body(ids, output_hidden_states=False).last_hidden_state

    def hf_layers_per_row(z, ids):
        body = z["sdpa"].model
        rows = list(ids.split(1))
        return lambda: [body(row, output_hidden_states=False).last_hidden_state for row in rows]

    return {
        "hf_last_logits": (hf_last_logits, "hf_last_logits", "HF forward, logits of the last position only"),
        # stream_stats stops after the last layer it observes (stop_after_capture): its like-for-like
        # baseline runs the decoder layers alone, not hf_plain's head and full [4, 128, vocab] logits
        "hf_layers_only": (hf_layers_only, "hf_layers_only", "HF decoder layers and final norm, no head (model.model)"),
        "garage_run_plain": (_runner(), "hf_plain", "garage run(), nothing hooked"),
        "garage_capture_all_layers": (_runner(_layers), "hf_plain", "garage run(), capture 30 layer outputs"),
        "garage_capture_every_head_z": (_runner(_heads_z), "hf_plain", "garage run(), capture 270 head z"),
        "garage_capture_attn_pattern": (_runner([f"L{LAYER}.attn.pattern"]), "hf_plain_eager",
                                        "garage run(), capture L10's attention pattern (eager)"),
        "garage_stream_stats_all": (_stats(every_layer_and_head), "hf_layers_only",
                                    "garage streaming stats, every layer + head (300 addresses)"),
        "garage_stream_stats_layers": (_stats(_layers), "hf_layers_only",
                                       "garage streaming stats, 30 layer outputs"),
        "hf_layers_per_row": (hf_layers_per_row, "hf_layers_per_row",
                              "HF decoder layers alone, the batch's rows as four passes"),
        # small passes: each update's fixed cost (placement, merging) weighs more than its data passes
        "garage_stream_stats_all_per_row": (_stats_per_row(every_layer_and_head), "hf_layers_per_row",
                                            "garage streaming stats, every layer + head, rows as four passes"),
        "garage_ablate_head": (_runner(interventions=_ablate), "hf_plain", "garage zero-ablate L10.attn.h3"),
        "garage_scale_head": (_runner(interventions=_scale), "hf_plain", "garage scale L10.attn.h3 by 0.5"),
        "garage_steer_layer": (_runner(interventions=_steer), "hf_plain", "garage steer L10 by a vector"),
        "garage_patch_head": (_runner(interventions=_patch), "hf_plain", "garage patch L10.attn.h3.z"),
    }


def smollm2_agreement(z, ids):
    """The garage's captures and ablation equal transformers' own numbers."""
    import torch

    from engine.interventions import ablate
    from engine.run import run

    g = _engine(z.model_dir)
    with torch.inference_mode():
        hidden = z["sdpa"](ids, output_hidden_states=True).hidden_states
        captured = run(g, ids, capture=_layers(g)).tap
        n = g.anatomy.n_layers
        ablated = run(g, ids, interventions=[ablate(f"L{LAYER}.attn.h{HEAD}")]).logits
        plain = z["sdpa"](ids).logits
    return {"garage": {
        "layer_outputs_vs_hidden_states_maxabs(0..n-2)": max(
            float((captured[f"L{i}.out"] - hidden[i + 1]).abs().max()) for i in range(n - 1)),
        "ablation_effect_logits_maxabs": float((ablated - plain).abs().max()),
    }}
