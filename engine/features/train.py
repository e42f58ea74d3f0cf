"""Train a TopK SAE here, on activations over local text.

The first epoch streams the text: the model runs only up to the hook point (a stop exception right
after it), ``windows_per_step`` token windows per step (their non-BOS tokens), a few steps' windows
per forward pass. The first ``eval_windows`` windows are held out for the metrics and never
trained on. With ``epochs`` > 1 the first pass's activations stay in memory (float32) and later
epochs revisit them in a seeded shuffled order, so they cost only the SAE step, not the model.
Training stops at the end of the last epoch, at ``max_tokens`` (counted over all epochs) or once
the process has used ``budget_cpu_seconds`` of CPU time (the fair measure on shared cores), and then
evaluates. Activations can be cached as safetensors shards so another run reads them instead of
running the model. Checkpoints record epoch and position; ``resume`` continues one (mid-epoch too)
to the result an uninterrupted run reaches. Setting ``cancel`` saves a checkpoint and stops.

The recipe follows Gao et al. (2024) as SAELens and sparsify implement it: decoder rows kept at
unit norm, encoder initialised as the decoder's transpose, ``b_dec`` initialised at the first
batch's mean, an AuxK loss (coefficient 1/32) on dead latents, inputs scaled so their mean norm
is √d_in, a scale folded back into the saved weights (SAELens's ``fold_activation_norm_scaling_factor``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.features.coder import CoderConfig, SparseCoder
from engine.features.corpus import read_texts, token_windows
from engine.features.errors import FeatureError
from engine.features.metrics import SaeMetrics, activation_metrics, evaluate_coder
from engine.features.streaming import activations_at
from engine.features.topk_sae import TopKSae
from engine.features.train_store import ActivationCache, load_checkpoint, save_checkpoint
from engine.limits import MAX_EPOCHS, MAX_SAE_EXPANSION, check_count

Progress = Callable[[str, float | None], None]
Interim = Callable[[dict[str, float]], None]
PASS_WINDOWS = 32  # windows per forward pass: bigger batches use the cores better (measured 1.9x vs 8)


@dataclass
class TrainConfig:
    address: str = "L15.out"
    expansion: int = 8
    k: int = 32
    sources: list[str] = field(default_factory=lambda: ["pydoc", "sample"])
    max_tokens: int | None = 200_000  # training tokens over all epochs; None: no cap
    epochs: int = 1
    budget_cpu_seconds: float | None = None
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
    epochs: float = 0.0  # passes over the training text, fractional when a budget stopped it
    stopped: str = "text"  # text | epochs | tokens | budget
    cpu_seconds: float = 0.0  # process CPU time of training (all runs), evaluation excluded
    pass_tokens_per_cpu_s: float = 0.0  # the model up to the hook
    sae_tokens_per_cpu_s: float = 0.0  # the SAE step alone
    dead_share_training: float = 0.0  # latents that did not fire on the last pass's worth of tokens

    def to_dict(self) -> dict[str, Any]:
        return {"coder": self.coder.describe(), "metrics": self.metrics.to_dict(), "steps": self.steps,
                "tokens": self.tokens, "seconds": self.seconds, "tokens_per_s": self.tokens_per_s,
                "resumed_from_step": self.resumed_from_step, "final_loss": self.losses[-1] if self.losses else None,
                "epochs": self.epochs, "stopped": self.stopped, "cpu_seconds": self.cpu_seconds,
                "pass_tokens_per_cpu_s": self.pass_tokens_per_cpu_s,
                "sae_tokens_per_cpu_s": self.sae_tokens_per_cpu_s, "dead_share_training": self.dead_share_training}


def _window_rows(loaded: Any, windows: list[Tensor], address: str, cancel: threading.Event | None,
                 skip: int) -> list[Tensor]:
    """Activation rows of each window (BOS dropped), all windows in one batch where that is exact:
    equal lengths, or a causal model, whose positions never see the right padding after them."""
    lengths = [w.shape[1] for w in windows]
    longest = max(lengths)
    if len(set(lengths)) == 1 or loaded.is_causal_lm:
        pad = torch.nn.functional.pad
        ids = torch.cat([pad(w, (0, longest - w.shape[1]), value=int(w[0, -1])) for w in windows])
        value = activations_at(loaded, ids, address, cancel=cancel)
        return [value[i, skip:n].float().clone() for i, n in enumerate(lengths)]  # clone: out of inference mode
    return [activations_at(loaded, w, address, cancel=cancel)[0, skip:].float().clone() for w in windows]


def _first_pass(loaded: Any, texts: list[str], config: TrainConfig, address: str, cache: ActivationCache,
                skip: int, cancel: threading.Event | None, start: int, state: dict[str, Any]) -> Iterator[Tensor]:
    """Each first-pass step's activation rows from step ``start`` on, from the cache or the model.

    Forward passes cover aligned groups of steps, so a resumed run batches the same windows together
    as an uninterrupted one and gets the same activations."""
    per_pass = max(1, PASS_WINDOWS // config.windows_per_step)
    if config.max_tokens is not None:  # no forward pass for windows the token cap will never train on
        rows_per_step = (config.window - skip) * config.windows_per_step
        per_pass = max(1, min(per_pass, math.ceil(config.max_tokens / rows_per_step)))
    position = start // per_pass * per_pass
    windows = token_windows(loaded, texts, config.window,
                            skip_windows=config.eval_windows + position * config.windows_per_step)
    while True:
        steps = [batch for batch in (list(islice(windows, config.windows_per_step)) for _ in range(per_pass))
                 if batch]
        if not steps:
            return
        missing = [i for i in range(len(steps)) if not cache.has(position + i)]
        made: dict[int, Tensor] = {}
        if missing:
            began = time.process_time()
            rows = iter(_window_rows(loaded, [w for i in missing for w in steps[i]], address, cancel, skip))
            for i in missing:
                made[i] = torch.cat([next(rows) for _ in steps[i]])
                cache.write(position + i, made[i])
                state["pass_tokens"] += int(made[i].shape[0])
            state["cpu"]["pass"] += time.process_time() - began
        for i in range(len(steps)):
            if position + i >= start:
                x = made.get(i)
                yield x if x is not None else cache.read(position + i)  # type: ignore[misc]
        position += len(steps)


def _batches(first_pass: Callable[[int], Iterator[Tensor]], config: TrainConfig, rows_per_step: int,
             state: dict[str, Any]) -> Iterator[tuple[int, int, Tensor]]:
    """``(epoch, position, rows)`` for every step left, from the checkpointed epoch and position on."""
    epoch, position = int(state["epoch"]), int(state["position"])
    keep = config.epochs > 1
    pool: list[Tensor] = []
    if epoch == 0:
        source = first_pass(0 if keep else position)
        if keep:
            pool.extend(islice(source, position))  # a resumed run rebuilds what earlier steps read
        for x in source:
            if keep:
                pool.append(x)
            yield 0, position, x
            position += 1
        state["pass_done"] = True
        epoch, position = 1, 0
    elif keep:
        pool.extend(first_pass(0))
    if epoch >= config.epochs or not pool:
        return
    data = torch.cat(pool)
    pool.clear()
    per_epoch = math.ceil(data.shape[0] / rows_per_step)
    while epoch < config.epochs:
        # a generator per epoch from (seed, epoch): the order a resumed run sees needs no saved RNG state
        order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        for at in range(position, per_epoch):
            yield epoch, at, data[order[at * rows_per_step:(at + 1) * rows_per_step]]
        epoch, position = epoch + 1, 0


def train_sae(loaded: Any, config: TrainConfig, *, checkpoint_dir: str | Path | None = None, resume: bool = False,
              cache_dir: str | Path | None = None, progress: Progress | None = None,
              cancel: threading.Event | None = None, interim: Interim | None = None,
              interim_every_cpu_seconds: float | None = None) -> TrainReport:
    """Train a TopK SAE at ``config.address`` and evaluate it on held-out windows.

    ``interim`` hears reconstruction metrics on the held-out windows (no CE) every
    ``interim_every_cpu_seconds`` of CPU time, so a long run says how it is going."""
    from engine.addresses import resolve_point
    from engine.errors import Cancelled
    from engine.features.parts import point_width

    target = resolve_point(loaded.anatomy, config.address)
    d_in = point_width(loaded, target.address)
    if d_in is None:
        raise FeatureError(f"cannot tell the width of '{target.address}'; train at a residual, attn/mlp output or z")
    budget = config.budget_cpu_seconds
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise FeatureError(f"the CPU budget must be a positive number of seconds, got {budget}")
    expansion = check_count(config.expansion, "the expansion factor", MAX_SAE_EXPANSION, minimum=1)
    d_sae = expansion * d_in
    check_count(config.k, "k (active features per token)", d_sae, minimum=1)
    check_count(config.epochs, "the number of epochs", MAX_EPOCHS, minimum=1)
    skip = 1 if loaded.tokenizer is not None and loaded.tokenizer.bos_token_id is not None else 0
    generator = torch.Generator().manual_seed(config.seed)
    sae = TopKSae(d_in, d_sae, config.k, generator)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    texts = read_texts(config.sources)
    checkpoint = Path(checkpoint_dir).expanduser() if checkpoint_dir else None
    cache = ActivationCache(Path(cache_dir).expanduser() if cache_dir else None,
                            {"model": loaded.config_hash, "address": target.address, "sources": config.sources,
                             "window": config.window, "windows_per_step": config.windows_per_step,
                             "eval_windows": config.eval_windows})
    state: dict[str, Any] = {"step": 0, "tokens": 0, "epoch": 0, "position": 0, "scale": None,
                             "last_fired": [-1] * d_sae,  # -1: never fired (0 would read as "fired at step 0")
                             "losses": [], "cpu": {"pass": 0.0, "sae": 0.0, "total": 0.0},
                             "pass_tokens": 0, "pass_rows": 0, "pass_done": False}
    if resume:
        if checkpoint is None:
            raise FeatureError("--resume needs the --checkpoint folder of the run to continue")
        loaded_state = load_checkpoint(checkpoint, sae, optimizer)
        state = {**state, "position": loaded_state.get("step", 0), **loaded_state}
    resumed_from = int(state["step"])
    last_fired = torch.tensor(state["last_fired"], dtype=torch.long)
    started, cpu_started, cpu_before = time.perf_counter(), time.process_time(), float(state["cpu"]["total"])
    rows_per_step = (config.window - skip) * config.windows_per_step
    tokens_this_run = 0
    step = int(state["step"])
    held_out: Tensor | None = None
    next_interim = cpu_before + (interim_every_cpu_seconds or 0.0)

    def cpu_used() -> float:
        return cpu_before + time.process_time() - cpu_started

    def snapshot() -> dict[str, Any]:
        state["cpu"]["total"] = cpu_used()
        return {**state, "last_fired": last_fired.tolist()}

    batches = _batches(lambda start: _first_pass(loaded, texts, config, target.address, cache, skip, cancel, start,
                                                 state), config, rows_per_step, state)
    stopped = "epochs" if config.epochs > 1 else "text"
    while True:
        if cancel is not None and cancel.is_set():
            if checkpoint is not None:
                save_checkpoint(checkpoint, sae, optimizer, snapshot())
            raise Cancelled(f"SAE training was cancelled at step {step}"
                            + (f"; checkpoint saved in {checkpoint}, continue with --resume" if checkpoint else ""))
        if config.max_tokens is not None and state["tokens"] >= config.max_tokens:
            stopped = "tokens"
            break
        if config.budget_cpu_seconds is not None and cpu_used() >= config.budget_cpu_seconds:
            stopped = "budget"
            break
        item = next(batches, None)
        if item is None:
            break
        epoch, position, x = item
        began = time.process_time()
        if state["scale"] is None:
            scale = float(math.sqrt(d_in) / x.norm(dim=-1).mean())
            state["scale"] = scale
            with torch.no_grad():
                sae.b_dec.copy_(x.mean(0) * scale)
        xs = x * float(state["scale"])
        loss, mse, fired = sae.step_loss(xs, (step - last_fired) > config.dead_after_steps)
        optimizer.zero_grad()
        loss.backward()
        sae.project_decoder_grad()
        optimizer.step()
        sae.normalise_decoder()
        last_fired[fired] = step
        step += 1
        state.update(step=step, epoch=epoch, position=position + 1)
        state["tokens"] += int(x.shape[0])
        state["pass_rows"] += int(x.shape[0]) if epoch == 0 else 0
        tokens_this_run += int(x.shape[0])
        state["losses"].append(float(mse.detach()) / float(xs.square().sum(-1).mean()))
        state["cpu"]["sae"] += time.process_time() - began
        if progress is not None:
            progress(f"step {step}: normalised MSE {state['losses'][-1]:.3f}", _fraction(config, state, cpu_used()))
        if checkpoint is not None and step % config.checkpoint_every == 0:
            save_checkpoint(checkpoint, sae, optimizer, snapshot())
        if interim is not None and interim_every_cpu_seconds and cpu_used() >= next_interim:
            next_interim = cpu_used() + interim_every_cpu_seconds
            if held_out is None:
                held_out = torch.cat(_window_rows(loaded, list(_first(token_windows(loaded, texts, config.window),
                                                                      config.eval_windows)),
                                                  target.address, cancel, skip))
            coder = _fold(sae, float(state["scale"]), d_in, config, target.address)
            interim({"step": step, "tokens": state["tokens"], "epochs": _epochs_done(state, rows_per_step),
                     "cpu_seconds": cpu_used(), **activation_metrics(coder, held_out),
                     "dead_share_training": _dead_training(last_fired, step, state, rows_per_step)})
    seconds = time.perf_counter() - started
    final = snapshot()
    if checkpoint is not None:
        save_checkpoint(checkpoint, sae, optimizer, final)
    coder = _fold(sae, state["scale"] or 1.0, d_in, config, target.address)
    if progress is not None:
        progress("evaluating", None)
    eval_windows = list(_first(token_windows(loaded, texts, config.window), config.eval_windows))
    metrics = evaluate_coder(loaded, coder, target.address, eval_windows, positions_from=skip, cancel=cancel)
    cpu = state["cpu"]
    sae_tokens = int(state["tokens"])
    return TrainReport(coder, metrics, step, sae_tokens, seconds,
                       tokens_this_run / seconds if seconds > 0 else 0.0, resumed_from, list(state["losses"]),
                       epochs=_epochs_done(state, rows_per_step), stopped=stopped, cpu_seconds=cpu["total"],
                       pass_tokens_per_cpu_s=state["pass_tokens"] / cpu["pass"] if cpu["pass"] > 0 else 0.0,
                       sae_tokens_per_cpu_s=sae_tokens / cpu["sae"] if cpu["sae"] > 0 else 0.0,
                       dead_share_training=_dead_training(last_fired, step, state, rows_per_step))


def _epochs_done(state: dict[str, Any], rows_per_step: int) -> float:
    """Passes over the training text: the first counts once it has ended, later ones by position."""
    if int(state["epoch"]) == 0:
        return 1.0 if state["pass_done"] else 0.0
    return int(state["epoch"]) + int(state["position"]) / math.ceil(state["pass_rows"] / rows_per_step)


def _dead_training(last_fired: Tensor, step: int, state: dict[str, Any], rows_per_step: int) -> float:
    """Share of latents that did not fire in the last pass's worth of steps (all steps before that)."""
    window = math.ceil(state["pass_rows"] / rows_per_step) if state["pass_done"] else step
    return float((last_fired < step - min(window, step)).double().mean()) if step else 1.0


def _fraction(config: TrainConfig, state: dict[str, Any], cpu: float) -> float | None:
    parts = []
    if config.max_tokens:
        parts.append(state["tokens"] / config.max_tokens)
    if config.budget_cpu_seconds:
        parts.append(cpu / config.budget_cpu_seconds)
    return min(1.0, max(parts)) if parts else None


def _first(iterator, n: int):
    for index, item in enumerate(iterator):
        if index >= n:
            return
        yield item


def _fold(sae: TopKSae, scale: float, d_in: int, config: TrainConfig, address: str) -> SparseCoder:
    """The trained SAE as a SAELens topk coder on unscaled inputs (the input scale folded in)."""
    with torch.no_grad():
        tensors = {"W_enc": (sae.W_enc_t.T * scale).detach().clone(), "b_enc": sae.b_enc.detach().clone(),
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
