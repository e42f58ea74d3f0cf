"""Analyzers by name: what ``garage analyze --what NAME`` and the app look up.

Each entry turns one ``AnalyzeRequest`` into its report; the built-in entries import their
analyzer only when called, so listing names stays free of torch. A new analyzer registers
itself from a module in ``engine.plugins`` (one file plus its test; see the README).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.errors import GarageError
from engine.progress import Progress
from engine.registry import Registry

if TYPE_CHECKING:
    from engine.interventions import Intervention
    from engine.loading import LoadedModel


@dataclass
class AnalyzeRequest:
    """Everything an analyzer may be asked with; each reads the fields it needs."""

    prompt: str | None = None
    interventions: Sequence[Intervention] = ()
    addresses: Sequence[str] | None = None  # stats: capture points (default: every layer's output)
    bins: int = 64
    top_k: int = 5
    position: int = -1
    corrupt: str | None = None  # patching: the corrupted prompt
    mode: str = "zero"  # importance: ablation mode
    layers: list[int] | None = None  # importance: only these layers; patching: heads of these layers
    cancel: threading.Event | None = field(default=None, repr=False)
    progress: Progress | None = field(default=None, repr=False)

    def require_prompt(self, what: str) -> str:
        if not self.prompt:
            raise GarageError(f"--what {what} needs --prompt TEXT")
        return self.prompt


@dataclass(frozen=True)
class AnalyzerSpec:
    """One analyzer: its name, a one-line summary and how it computes a report."""

    name: str
    summary: str
    compute: Callable[[LoadedModel, AnalyzeRequest], Any]
    takes_interventions: bool = True  # False: it makes its own ablations or patches


ANALYZERS: Registry[AnalyzerSpec] = Registry("analyzer")


def register_analyzer(spec: AnalyzerSpec) -> AnalyzerSpec:
    """Make ``spec`` available to ``analyze`` and ``garage analyze --what``."""
    return ANALYZERS.register(spec.name, spec)


def analyze(loaded: LoadedModel, name: str, request: AnalyzeRequest) -> Any:
    """Run the analyzer called ``name``; its report has ``to_dict()`` (see ``engine.serialize``)."""
    spec = ANALYZERS.get(name)
    if request.interventions and not spec.takes_interventions:
        raise GarageError(f"--what {name} makes its own ablations or patches; drop --ablate/--scale")
    return spec.compute(loaded, request)


def _stats(loaded: LoadedModel, request: AnalyzeRequest) -> Any:
    from engine.stats import stream_stats

    addresses = request.addresses or [f"L{i}.out" for i in range(loaded.anatomy.n_layers)]
    return stream_stats(loaded, request.require_prompt("stats"), addresses, bins=request.bins,
                        interventions=request.interventions, cancel=request.cancel, progress=request.progress)


def _attention(loaded: LoadedModel, request: AnalyzeRequest) -> Any:
    from engine.analyzers.attention import attention_report

    return attention_report(loaded, request.require_prompt("attention"), request.interventions,
                            cancel=request.cancel, progress=request.progress)


def _lens(loaded: LoadedModel, request: AnalyzeRequest) -> Any:
    from engine.analyzers.lens import logit_lens

    return logit_lens(loaded, request.require_prompt("lens"), request.top_k, request.interventions,
                      position=request.position, cancel=request.cancel, progress=request.progress)


def _similarity(loaded: LoadedModel, request: AnalyzeRequest) -> Any:
    from engine.analyzers.similarity import layer_similarity

    return layer_similarity(loaded, request.require_prompt("similarity"), request.interventions,
                            cancel=request.cancel, progress=request.progress)


def _importance(loaded: LoadedModel, request: AnalyzeRequest) -> Any:
    from engine.analyzers.importance import head_importance

    return head_importance(loaded, request.prompt, request.mode, request.progress, request.cancel,
                           layers=request.layers)


def _patching(loaded: LoadedModel, request: AnalyzeRequest) -> Any:
    from engine.analyzers.patching import activation_patching

    if not request.corrupt:
        raise GarageError("--what patching needs --corrupt TEXT (same token length as --prompt)")
    return activation_patching(loaded, request.require_prompt("patching"), request.corrupt, request.progress,
                               request.cancel, heads=True if request.layers is None else request.layers)


register_analyzer(AnalyzerSpec("stats", "streaming statistics at capture points", _stats))
register_analyzer(AnalyzerSpec("attention", "per-head attention entropy, patterns and roles", _attention))
register_analyzer(AnalyzerSpec("lens", "logit lens: what each layer would predict", _lens))
register_analyzer(AnalyzerSpec("importance", "Δ loss per ablated head and block", _importance,
                               takes_interventions=False))
register_analyzer(AnalyzerSpec("similarity", "layer in/out cosine and layer-to-layer similarity", _similarity))
register_analyzer(AnalyzerSpec("patching", "activation patching between a clean and a corrupted prompt",
                               _patching, takes_interventions=False))
