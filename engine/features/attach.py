"""Attach a sparse coder at an address: spliced exactly (with the error term) or lossy, with
per-feature ablate / scale / steer / clamp, and an observer that streams feature activations.

``FeatureSplice`` is an ``Intervention``: it plans its own hook edits (``plan_edits``), so it
composes with every other intervention in one ``run``/``hooked`` call.

With the error term the output is ``decode(edited) + (x - decode(encode(x)))``: without feature
edits it equals the unspliced activation (to float rounding), and an edit changes the output by
exactly the decoder rows it touches. Without it (lossy) the output is the reconstruction. A
folded coder (``CoderConfig.folded_from``) is refused in an exact splice: the error term would
cancel its fold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.features.coder import SparseCoder
from engine.features.errors import FeatureError, FeatureMismatchError
from engine.interventions import EditPlan, Intervention, InterventionKind, RunMask, register_intervention

FEATURE_OPS = ("ablate", "scale", "steer", "clamp")


@dataclass
class FeatureEdit:
    """Change features' activations: ``ablate`` (0), ``scale`` (× value), ``steer`` (+ value), ``clamp`` (= value)."""

    op: str
    features: list[int]
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.op not in FEATURE_OPS:
            raise FeatureError(f"unknown feature edit '{self.op}'; use one of: {', '.join(FEATURE_OPS)}")
        if not self.features:
            raise FeatureError(f"feature {self.op} needs at least one feature index")

    def apply(self, acts: Tensor) -> Tensor:
        index = torch.tensor(self.features, device=acts.device)
        chosen = acts.index_select(-1, index)
        if self.op == "ablate":
            new = torch.zeros_like(chosen)
        elif self.op == "scale":
            new = chosen * self.value
        elif self.op == "steer":
            new = chosen + self.value
        else:
            new = torch.full_like(chosen, self.value)
        return acts.index_copy(-1, index, new)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "features": list(self.features), "value": self.value}


def refuse_folded_exact(coder: SparseCoder, exact: bool, part: str | None = None) -> None:
    """An exact splice computes its error term with the coder itself, so a folded coder's fold cancels
    and the run silently equals the unspliced one; refuse it with what to do instead."""
    parent = coder.config.folded_from
    if not exact or parent is None:
        return
    what = f"part '{part}'" if part else "this coder"
    instead = f"the parent part '{parent}'" if parent else "its unfolded parent"
    raise FeatureError(f"{what} has feature scales folded into its decoder rows and an exact splice's error term "
                       f"cancels them; attach it lossy, or attach {instead} with a scale edit")


def _check_features(coder: SparseCoder, edits: Sequence[FeatureEdit]) -> None:
    for edit in edits:
        bad = [f for f in edit.features if not 0 <= f < coder.d_sae]
        if bad:
            raise FeatureError(f"feature {bad[0]} is out of range: this coder has features 0–{coder.d_sae - 1}")


@dataclass
class FeatureSplice(Intervention):
    """Run ``coder`` at ``address`` (and write a transcoder's output at ``address_out``)."""

    coder: SparseCoder | None = None
    address_out: str | None = None
    exact: bool = True
    edits: list[FeatureEdit] = field(default_factory=list)
    observe: Callable[[Tensor], None] | None = None  # sees each pass's (unedited) feature activations
    part: str | None = None  # the parts-bin name, for descriptions and sessions

    def describe(self) -> str:
        what = self.part or (self.coder.describe() if self.coder is not None else "coder")
        edits = "; ".join(f"{e.op} {','.join(map(str, e.features))}" + (f" {e.value:g}" if e.op != "ablate" else "")
                          for e in self.edits)
        mode = "exact" if self.exact else "lossy"
        return f"splice {what} at {self.address} ({mode}{', ' + edits if edits else ''})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "address_out": self.address_out, "part": self.part,
                "exact": self.exact, "edits": [e.to_dict() for e in self.edits]}

    def _codes(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction of the edited codes, reconstruction of the clean codes, clean codes)."""
        coder = self.coder
        assert coder is not None
        if x.shape[-1] != coder.config.d_in:
            raise FeatureMismatchError(f"'{self.address}' carries {x.shape[-1]} values per token but the coder "
                                       f"reads {coder.config.d_in}; attach it where it was trained")
        acts = coder.encode(x)
        if self.observe is not None:
            self.observe(acts)
        clean = coder.decode(acts, x)
        if not self.edits:
            return clean, clean, acts
        edited = acts
        for edit in self.edits:
            edited = edit.apply(edited)
        return coder.decode(edited, x), clean, acts

    def _output(self, x_in: Tensor, original_out: Tensor) -> Tensor:
        recon, clean, _ = self._codes(x_in)
        if self.exact:
            # recon + error term (original - clean), summed as original + (recon - clean): the same
            # value, but rounding no longer scales with the residual's size (SmolLM2 carries values ~1e3)
            out = original_out.to(recon.dtype) + (recon - clean)
        else:
            out = recon
        return out.to(original_out.dtype)

    def plan_edits(self, anatomy: Any, mask: RunMask | None = None) -> list[EditPlan]:
        from engine.addresses import resolve_point
        from engine.sites import head_view, site_for

        if self.coder is None:
            raise FeatureError(f"splice at '{self.address}' needs a coder")
        refuse_folded_exact(self.coder, self.exact, self.part)
        _check_features(self.coder, self.edits)
        target = resolve_point(anatomy, self.address)
        if self.address_out is None or resolve_point(anatomy, self.address_out).address == target.address:
            if self.coder.config.d_out != self.coder.config.d_in:
                raise FeatureError("a transcoder writes to another point; give its output address (--out)")
            return [EditPlan(site_for(anatomy, target), head_view(target, anatomy, lambda x: self._output(x, x)))]
        out_target = resolve_point(anatomy, self.address_out)
        held: dict[str, Tensor] = {}

        def remember(value: Tensor) -> None:
            held["x"] = value

        def on_output(value: Tensor) -> Tensor:
            if "x" not in held:
                raise FeatureError(f"'{self.address}' did not run before '{self.address_out}'; a transcoder reads "
                                   "a point upstream of where it writes")
            return self._output(held["x"], value)

        return [EditPlan(site_for(anatomy, target), head_view(target, anatomy, remember), observe=True),
                EditPlan(site_for(anatomy, out_target), head_view(out_target, anatomy, on_output))]


def splice(coder: SparseCoder, address: str, *, address_out: str | None = None, exact: bool = True,
           edits: Sequence[FeatureEdit] = (), observe: Callable[[Tensor], None] | None = None,
           part: str | None = None) -> FeatureSplice:
    """An intervention that runs ``coder`` at ``address`` (see ``FeatureSplice``); a folded coder with
    ``exact`` is refused here already, not only when the run plans it."""
    refuse_folded_exact(coder, exact, part)
    return FeatureSplice("features", address, coder=coder, address_out=address_out, exact=exact,
                         edits=list(edits), observe=observe, part=part)


def stream_feature_stats(loaded: Any, coder_splice: FeatureSplice, prompts: Sequence[str] | str, *, bins: int = 64,
                         interventions: Sequence[Intervention] = ()):
    """Streaming statistics (``engine.stats.StreamingStats``) of the feature activations over ``prompts``,
    plus how often each feature fired; the activations themselves are never kept."""
    from engine.run import run
    from engine.runner import encode
    from engine.stats import StreamingStats

    stats = StreamingStats(bins, f"{coder_splice.address}#features")
    fired = torch.zeros(coder_splice.coder.d_sae if coder_splice.coder else 0, dtype=torch.long)
    tokens = 0

    def observe(acts: Tensor) -> None:
        nonlocal tokens
        stats.update(acts)
        flat = acts.reshape(-1, acts.shape[-1])
        fired.add_((flat > 0).sum(0).cpu())
        tokens += flat.shape[0]

    observed = FeatureSplice(**{**coder_splice.__dict__, "observe": observe})
    for prompt in ([prompts] if isinstance(prompts, str) else prompts):
        run(loaded, encode(loaded, prompt), interventions=[*interventions, observed], last_logits_only=True)
    return stats.summary(), fired, tokens


def _position_independent(item: Intervention) -> bool:
    # every architecture encodes each token on its own, except BatchTopK's training form (whole batch)
    coder = getattr(item, "coder", None)
    return coder is None or coder.config.architecture != "batchtopk" or "threshold" in coder.tensors


register_intervention(InterventionKind(
    "features", lambda anatomy, item, mask: item.plan_edits(anatomy, mask),  # type: ignore[attr-defined]
    lambda item: item.describe(), position_independent=_position_independent))
