"""The standard SAE metrics, with their standard definitions, over held-out token windows.

* explained variance: ``1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²`` (x̄ the mean activation over the tokens read)
* L0: mean number of non-zero features per token
* dead share: fraction of features that never fired on those tokens
* MSE: mean squared error per element; cosine: mean cosine(x, x̂) per token
* ce_loss_score: fraction of next-token loss recovered vs zero-ablation,
  ``(CE_zero - CE_spliced) / (CE_zero - CE_clean)``, with the point's value replaced by the
  (lossy) reconstruction or by zeros. Positions before ``positions_from`` (BOS) are left alone in
  every run and in every sum, as the SAE never saw them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from engine.features.coder import SparseCoder


@dataclass
class SaeMetrics:
    explained_variance: float
    l0: float
    dead_share: float
    mse: float
    cosine: float
    ce_loss_score: float
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _next_token_loss(logits: Tensor, ids: Tensor, positions_from: int) -> tuple[float, int]:
    """Summed cross-entropy of predicting ids[t+1] from position t ≥ positions_from, and the count."""
    pred = logits[0, positions_from:-1].float()
    target = ids[0, positions_from + 1:]
    return float(torch.nn.functional.cross_entropy(pred, target, reduction="sum")), int(target.numel())


def _replace_from(positions_from: int, make):
    def edit(value: Tensor) -> Tensor:
        out = value.clone()
        out[:, positions_from:] = make(value[:, positions_from:]).to(value.dtype)
        return out

    return edit


def evaluate_coder(loaded: Any, coder: SparseCoder, address: str, windows: Iterable[Tensor], *,
                   positions_from: int = 1, cancel: threading.Event | None = None) -> SaeMetrics:
    """All standard metrics of ``coder`` at ``address`` over ``windows`` (token ids ``[1, T]``)."""
    from engine.addresses import resolve_point
    from engine.progress import check_cancel
    from engine.run import run

    target = resolve_point(loaded.anatomy, address)
    sq_err = total_sq = cos_sum = 0.0
    elements = tokens = active = 0
    fired = torch.zeros(coder.d_sae, dtype=torch.bool)
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    ce_tokens = 0
    mean_acc: Tensor | None = None
    for ids in windows:
        check_cancel(cancel, "SAE evaluation")
        captured: dict[str, Tensor] = {}

        def reconstruct(x: Tensor, captured: dict[str, Tensor] = captured) -> Tensor:
            x = x.float()
            acts = coder.encode(x)
            recon = coder.decode(acts, x)
            captured["x"], captured["acts"], captured["recon"] = x.detach(), acts.detach(), recon.detach()
            return recon

        spliced = run(loaded, ids, edits=[(target, _replace_from(positions_from, reconstruct))])
        clean = run(loaded, ids)
        zero = run(loaded, ids, edits=[(target, _replace_from(positions_from, torch.zeros_like))])
        for name, result in (("clean", clean), ("spliced", spliced), ("zero", zero)):
            loss, count = _next_token_loss(result.logits, ids, positions_from)
            ce[name] += loss
        ce_tokens += count
        x = captured["x"].reshape(-1, coder.config.d_in).double()
        recon = captured["recon"].reshape(-1, coder.config.d_out).double()
        acts = captured["acts"].reshape(-1, coder.d_sae)
        sq_err += float((x - recon).square().sum())
        elements += x.numel()
        tokens += x.shape[0]
        active += int((acts > 0).sum())
        fired |= (acts > 0).any(0).cpu()
        cos_sum += float(torch.nn.functional.cosine_similarity(x, recon, dim=-1).sum())
        mean_acc = x.sum(0) if mean_acc is None else mean_acc + x.sum(0)
        total_sq += float(x.square().sum())
    if tokens == 0:
        from engine.features.errors import FeatureError

        raise FeatureError("no evaluation tokens were read; give more text")
    assert mean_acc is not None
    mean = mean_acc / tokens
    total_var = total_sq - tokens * float(mean.square().sum())  # Σ‖x - x̄‖²
    ce_clean, ce_spliced, ce_zero = (ce[n] / ce_tokens for n in ("clean", "spliced", "zero"))
    denominator = ce_zero - ce_clean
    return SaeMetrics(
        explained_variance=1.0 - sq_err / total_var if total_var > 0 else 0.0,
        l0=active / tokens, dead_share=float((~fired).double().mean()), mse=sq_err / elements,
        cosine=cos_sum / tokens,
        ce_loss_score=(ce_zero - ce_spliced) / denominator if denominator != 0 else 0.0,
        ce_clean=ce_clean, ce_spliced=ce_spliced, ce_zero=ce_zero, tokens=tokens,
    )


def activation_metrics(coder: SparseCoder, x: Tensor) -> dict[str, float]:
    """The reconstruction metrics above (no CE: that needs model runs) of ``coder`` on activation rows
    ``x`` ``[N, d_in]``: cheap enough to watch a long training run with."""
    with torch.no_grad():
        acts = coder.encode(x.float())
        recon = coder.decode(acts, x.float())
    xd, rd = x.double(), recon.double()
    sq_err = float((xd - rd).square().sum())
    total_var = float((xd - xd.mean(0)).square().sum())
    return {"explained_variance": 1.0 - sq_err / total_var if total_var > 0 else 0.0,
            "l0": float((acts > 0).sum()) / x.shape[0], "dead_share": float((~(acts > 0).any(0)).double().mean()),
            "mse": sq_err / xd.numel(), "cosine": float(torch.nn.functional.cosine_similarity(xd, rd, dim=-1).mean())}
