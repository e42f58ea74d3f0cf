"""Train a TopK SAE here, on streamed activations over local text.

The model runs only up to the hook point (a stop exception right after it), each step reads
``windows_per_step`` token windows (their non-BOS tokens), and the first ``eval_windows``
windows are held out for the metrics. Activations can be cached as safetensors shards so a
second run reads them instead of running the model. Checkpoints (SAE tensors, Adam moments,
step and windows read) are safetensors + JSON, written atomically; ``resume`` continues one to
the same result an uninterrupted run reaches. Setting ``cancel`` saves a checkpoint and stops.

The recipe follows Gao et al. (2024) as SAELens and sparsify implement it: decoder rows kept at
unit norm, encoder initialised as the decoder's transpose, ``b_dec`` initialised at the first
batch's mean, an AuxK loss (coefficient 1/32) on dead latents, inputs scaled so their mean norm
is √d_in, a scale folded back into the saved weights (SAELens's ``fold_activation_norm_scaling_factor``).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.features.coder import CoderConfig, SparseCoder
from engine.features.corpus import read_texts, token_windows
from engine.features.errors import FeatureError
from engine.features.metrics import SaeMetrics, evaluate_coder
from engine.features.streaming import activations_at
from engine.limits import MAX_SAE_EXPANSION, check_count
from engine.storage import atomic_output_dir, ensure_dir

Progress = Callable[[str, float | None], None]
CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"
AUXK_COEFF = 1.0 / 32.0


@dataclass
class TrainConfig:
    address: str = "L15.out"
    expansion: int = 8
    k: int = 32
    sources: list[str] = field(default_factory=lambda: ["pydoc", "sample"])
    max_tokens: int = 200_000
    window: int = 128
    windows_per_step: int = 8
    lr: float = 1e-3
    dead_after_steps: int = 50
    eval_windows: int = 8
    checkpoint_every: int = 50
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainReport:
    coder: SparseCoder
    metrics: SaeMetrics
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    resumed_from_step: int
    losses: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"coder": self.coder.describe(), "metrics": self.metrics.to_dict(), "steps": self.steps,
                "tokens": self.tokens, "seconds": self.seconds, "tokens_per_s": self.tokens_per_s,
                "resumed_from_step": self.resumed_from_step, "final_loss": self.losses[-1] if self.losses else None}


class _TopK(torch.nn.Module):
    def __init__(self, d_in: int, d_sae: int, k: int, generator: torch.Generator) -> None:
        super().__init__()
        w_dec = torch.randn(d_sae, d_in, generator=generator)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w_dec)
        self.W_enc = torch.nn.Parameter(w_dec.T.clone().contiguous())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.k = k

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        top = torch.topk(pre, self.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        return acts @ self.W_dec + self.b_dec, acts, pre

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True))


def _auxk_loss(sae: _TopK, x: Tensor, recon: Tensor, pre: Tensor, dead: Tensor) -> Tensor:
    """Dead latents predict the live reconstruction's residual (Gao et al. appendix B.1)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return x.new_zeros(())
    k_aux = min(x.shape[-1] // 2, n_dead)
    scale = min(n_dead / (x.shape[-1] // 2), 1.0)
    masked = torch.where(dead[None], pre, torch.tensor(-torch.inf))
    top = masked.topk(k_aux, dim=-1)
    aux_acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    residual = (x - recon).detach()
    return scale * (aux_acts @ sae.W_dec - residual).square().sum(-1).mean()


def _inputs(loaded: Any, windows: list[Tensor], address: str, cancel: threading.Event | None,
            skip: int) -> Tensor:
    """Activation rows of ``windows`` (window after window, BOS dropped); equal-length windows run
    as one batch, which keeps the matrix products large enough to use the cores well."""
    rows = []
    if len({w.shape[1] for w in windows}) == 1:
        value = activations_at(loaded, torch.cat(windows), address, cancel=cancel)
        rows = [value[i, skip:] for i in range(value.shape[0])]
    else:
        rows = [activations_at(loaded, w, address, cancel=cancel)[0, skip:] for w in windows]
    return torch.cat(rows).float().clone()  # out of inference mode, so autograd can use it


class _Cache:
    """Activation shards (one per step) as safetensors under ``folder``, tagged with what made them."""

    def __init__(self, folder: Path | None, tag: dict[str, Any]) -> None:
        self.folder = folder
        self.tag = tag
        if folder is not None:
            ensure_dir(folder)
            stamp = folder / "cache.json"
            if stamp.exists() and json.loads(stamp.read_text()) != tag:
                raise FeatureError(f"activation cache {folder} was made with other settings; pass another "
                                   "--cache folder or delete it")
            stamp.write_text(json.dumps(tag, indent=1))

    def path(self, step: int) -> Path | None:
        return None if self.folder is None else self.folder / f"shard-{step:06d}.safetensors"

    def read(self, step: int) -> Tensor | None:
        from safetensors.torch import load_file

        path = self.path(step)
        return load_file(str(path))["acts"] if path is not None and path.exists() else None

    def write(self, step: int, acts: Tensor) -> None:
        from safetensors.torch import save_file

        from engine.storage import atomic_output_path

        path = self.path(step)
        if path is not None:
            with atomic_output_path(path) as tmp:
                save_file({"acts": acts.contiguous()}, str(tmp))


def _save_checkpoint(folder: Path, sae: _TopK, optimizer: torch.optim.Adam, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {name: p.detach().clone() for name, p in sae.named_parameters()}
    for name, param in sae.named_parameters():
        moments = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in moments:
                tensors[f"adam.{name}.{key}"] = moments[key].clone()
    state = {**state, "adam_step": {name: float(optimizer.state[p]["step"]) for name, p in sae.named_parameters()
                                    if p in optimizer.state}}
    with atomic_output_dir(folder) as tmp:
        save_file(tensors, str(tmp / CHECKPOINT_TENSORS))
        (tmp / CHECKPOINT_STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")


def _load_checkpoint(folder: Path, sae: _TopK, optimizer: torch.optim.Adam) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(folder / CHECKPOINT_TENSORS))
        state = json.loads((folder / CHECKPOINT_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatureError(f"no readable checkpoint in {folder} ({exc}); start without --resume") from exc
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(tensors[name])
            if f"adam.{name}.exp_avg" in tensors:
                optimizer.state[param] = {"step": torch.tensor(state["adam_step"][name]),
                                          "exp_avg": tensors[f"adam.{name}.exp_avg"].clone(),
                                          "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].clone()}
    return state


def train_sae(loaded: Any, config: TrainConfig, *, checkpoint_dir: str | Path | None = None, resume: bool = False,
              cache_dir: str | Path | None = None, progress: Progress | None = None,
              cancel: threading.Event | None = None) -> TrainReport:
    """Train a TopK SAE at ``config.address`` and evaluate it on held-out windows."""
    from engine.addresses import resolve_point
    from engine.errors import Cancelled
    from engine.features.parts import point_width

    target = resolve_point(loaded.anatomy, config.address)
    d_in = point_width(loaded, target.address)
    if d_in is None:
        raise FeatureError(f"cannot tell the width of '{target.address}'; train at a residual, attn/mlp output or z")
    expansion = check_count(config.expansion, "the expansion factor", MAX_SAE_EXPANSION, minimum=1)
    d_sae = expansion * d_in
    check_count(config.k, "k (active features per token)", d_sae, minimum=1)
    skip = 1 if loaded.tokenizer is not None and loaded.tokenizer.bos_token_id is not None else 0
    generator = torch.Generator().manual_seed(config.seed)
    sae = _TopK(d_in, d_sae, config.k, generator)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    texts = read_texts(config.sources)
    checkpoint = Path(checkpoint_dir).expanduser() if checkpoint_dir else None
    cache = _Cache(Path(cache_dir).expanduser() if cache_dir else None,
                   {"model": loaded.config_hash, "address": target.address, "sources": config.sources,
                    "window": config.window, "windows_per_step": config.windows_per_step,
                    "eval_windows": config.eval_windows})
    state: dict[str, Any] = {"step": 0, "tokens": 0, "scale": None, "last_fired": [0] * d_sae, "losses": []}
    if resume:
        if checkpoint is None:
            raise FeatureError("--resume needs the --checkpoint folder of the run to continue")
        state = _load_checkpoint(checkpoint, sae, optimizer)
    resumed_from = int(state["step"])
    last_fired = torch.tensor(state["last_fired"], dtype=torch.long)
    started = time.perf_counter()
    tokens_this_run = 0
    step = int(state["step"])
    windows = token_windows(loaded, texts, config.window,
                            skip_windows=config.eval_windows + step * config.windows_per_step)
    total_steps = max(1, config.max_tokens // max(1, (config.window - skip) * config.windows_per_step))
    while state["tokens"] < config.max_tokens:
        if cancel is not None and cancel.is_set():
            if checkpoint is not None:
                _save_checkpoint(checkpoint, sae, optimizer, {**state, "last_fired": last_fired.tolist()})
            raise Cancelled(f"SAE training was cancelled at step {step}"
                            + (f"; checkpoint saved in {checkpoint}, continue with --resume" if checkpoint else ""))
        x = cache.read(step)
        if x is None:
            batch = []
            for _ in range(config.windows_per_step):
                ids = next(windows, None)
                if ids is None:
                    break
                batch.append(ids)
            if not batch:
                break  # the text ran out before the token budget
            x = _inputs(loaded, batch, target.address, cancel, skip)
            cache.write(step, x)
        else:
            for _ in range(config.windows_per_step):
                next(windows, None)  # keep the window stream aligned with the cached steps
        if state["scale"] is None:
            scale = float(math.sqrt(d_in) / x.norm(dim=-1).mean())
            state["scale"] = scale
            with torch.no_grad():
                sae.b_dec.copy_(x.mean(0) * scale)
        xs = x * float(state["scale"])
        recon, acts, pre = sae(xs)
        mse = (recon - xs).square().sum(-1).mean()
        dead = (step - last_fired) > config.dead_after_steps
        loss = mse + AUXK_COEFF * _auxk_loss(sae, xs, recon, pre, dead)
        optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():  # drop the gradient component that would change decoder row norms
            w, g = sae.W_dec, sae.W_dec.grad
            if g is not None:
                g -= (g * w).sum(-1, keepdim=True) * w
        optimizer.step()
        sae.normalise_decoder()
        last_fired[(acts > 0).any(0)] = step
        step += 1
        state["step"] = step
        state["tokens"] += int(x.shape[0])
        tokens_this_run += int(x.shape[0])
        state["losses"].append(float(mse.detach()) / float(xs.square().sum(-1).mean()))
        if progress is not None:
            progress(f"step {step}: normalised MSE {state['losses'][-1]:.3f}", min(1.0, step / total_steps))
        if checkpoint is not None and step % config.checkpoint_every == 0:
            _save_checkpoint(checkpoint, sae, optimizer, {**state, "last_fired": last_fired.tolist()})
    seconds = time.perf_counter() - started
    if checkpoint is not None:
        _save_checkpoint(checkpoint, sae, optimizer, {**state, "last_fired": last_fired.tolist()})
    coder = _fold(sae, state["scale"] or 1.0, d_in, config, target.address)
    if progress is not None:
        progress("evaluating", None)
    eval_windows = list(_first(token_windows(loaded, texts, config.window), config.eval_windows))
    metrics = evaluate_coder(loaded, coder, target.address, eval_windows, positions_from=skip, cancel=cancel)
    return TrainReport(coder, metrics, step, int(state["tokens"]), seconds,
                       tokens_this_run / seconds if seconds > 0 else 0.0, resumed_from, list(state["losses"]))


def _first(iterator, n: int):
    for index, item in enumerate(iterator):
        if index >= n:
            return
        yield item


def _fold(sae: _TopK, scale: float, d_in: int, config: TrainConfig, address: str) -> SparseCoder:
    """The trained SAE as a SAELens topk coder on unscaled inputs (the input scale folded in)."""
    with torch.no_grad():
        tensors = {"W_enc": (sae.W_enc * scale).detach().clone(), "b_enc": sae.b_enc.detach().clone(),
                   "W_dec": (sae.W_dec / scale).detach().clone(), "b_dec": (sae.b_dec / scale).detach().clone()}
    cfg = {"architecture": "topk", "d_in": d_in, "d_sae": sae.W_dec.shape[0], "k": config.k, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none", "metadata": {"hook_name": address, "trained_by": "model-garage",
                                                        "sources": list(config.sources)}}
    coder_config = CoderConfig("topk", d_in, sae.W_dec.shape[0], d_in, k=float(config.k), hook_name=address,
                               source_format="saelens", raw=cfg)
    return SparseCoder(coder_config, tensors)


def train_sources(sources: Sequence[str]) -> list[str]:
    """Check text sources before a long run starts."""
    read_texts(sources)
    return list(sources)
