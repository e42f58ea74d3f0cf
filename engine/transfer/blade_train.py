"""Train a blade on B's task loss with A and B frozen, judge it against two controls, sweep the depth.

The controls, on the same held-out examples: B with the blade off, and the random blade — the
trained blade with every injected vector turned by a fixed random rotation, so it adds exactly
as much (per position) and carries no direction. A blade helps only where it beats both.

Training is seeded and resumable: the examples of step ``t`` come from a generator seeded with
``(seed, t)``, and a checkpoint holds the blade, Adam's state and the losses so far, so a run
stopped and resumed ends with the blade an uninterrupted run makes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.limits import MAX_EPOCHS, check_count, check_finite
from engine.progress import Progress, check_cancel, notify, scaled
from engine.transfer.blade import Blade, blade_from_stitch, inject
from engine.transfer.blade_data import BladeData, BladeTask, TaskScore, encode_task, residual_rms, score_logits
from engine.transfer.pairs import TransferError

__all__ = ["BladeEval", "BladeReport", "BladeSweep", "TrainSettings", "TrainLog", "evaluate_blade", "sweep_depths",
           "train_blade", "train_blade_at"]

MAX_BLADE_STEPS = 1_000_000
CHECKPOINT_FORMAT = "garage-blade-checkpoint/1"


@dataclass
class TrainSettings:
    """How a blade is trained: Adam for ``steps`` steps of ``batch_size`` examples."""

    steps: int = 200
    lr: float = 1e-2
    batch_size: int = 8
    seed: int = 0
    map_kind: str = "affine"
    gate: str = "scalar"
    rank: int = 16
    hidden: int = 256

    def checked(self) -> TrainSettings:
        check_count(self.steps, "the blade's training steps", MAX_BLADE_STEPS, minimum=1)
        check_count(self.batch_size, "the blade's batch size", MAX_EPOCHS, minimum=1)
        check_count(self.seed, "the blade's seed", 2**31 - 1)  # seed · 1,000,003 + step must fit an int64
        if not 0 < check_finite(self.lr, "the blade's learning rate") <= 10:
            raise TransferError(f"the blade's learning rate must be in (0, 10], got {self.lr}")
        return self


@dataclass
class TrainLog:
    """Training losses (one per step), time taken, and the step a resumed run started from."""

    losses: list[float]
    seconds: float
    resumed_from: int = 0

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else float("nan")


@dataclass
class BladeEval:
    """B on one example set with the blade, with it off, and with the random (same-norm) blade."""

    blade: TaskScore
    off: TaskScore
    random: TaskScore
    injection_ratio: float  # mean norm of the injected vectors / B's residual RMS at the point

    @property
    def helps(self) -> bool:
        """True where the blade's loss is below both controls'."""
        return self.blade.loss < min(self.off.loss, self.random.loss)


@dataclass
class BladeReport:
    """One trained blade: where it reads and writes, what it was trained on, and its numbers."""

    address_a: str
    address_b: str
    layer_b: int
    depth: float  # layer_b / B's layer count: the seed idea's 87.5% is 0.875
    alignment: str
    task: str
    task_digest: str
    settings: TrainSettings
    train: BladeEval
    held_out: BladeEval
    log: TrainLog
    blade: Blade | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        from engine.serialize import to_json

        doc = {key: to_json(getattr(self, key)) for key in ("address_a", "address_b", "layer_b", "depth", "alignment",
                                                            "task", "task_digest", "settings", "train", "held_out")}
        doc["helps"] = self.held_out.helps
        doc["training"] = {"steps": len(self.log.losses), "final_loss": self.log.final_loss,
                           "seconds": self.log.seconds, "resumed_from": self.log.resumed_from,
                           "losses": self.log.losses}
        return doc


@dataclass
class BladeSweep:
    """Blades trained at several depths of B from one address of A, with both controls at each."""

    model_a: str
    model_b: str
    address_a: str
    layers_b: int
    reports: list[BladeReport]

    @property
    def best(self) -> BladeReport:
        """The depth whose blade has the lowest held-out task loss."""
        return min(self.reports, key=lambda report: report.held_out.blade.loss)

    def to_dict(self) -> dict[str, Any]:
        return {"model_a": self.model_a, "model_b": self.model_b, "address_a": self.address_a,
                "layers_b": self.layers_b, "best_layer": self.best.layer_b, "best_depth": self.best.depth,
                "depths": [report.to_dict() for report in self.reports]}


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Stop ``model``'s parameters from collecting gradients for the block (only the blade learns)."""
    thawed = [param for param in model.parameters() if param.requires_grad]
    try:
        for param in thawed:
            param.requires_grad_(False)
        yield
    finally:
        for param in thawed:
            param.requires_grad_(True)


def _logits(loaded_b: Any, data: BladeData, address_b: str, blade: Blade | None, grad: bool = False):
    from engine.run import run

    interventions = [] if blade is None else [
        inject(blade, address_b, data.donor.rows, data.donor.batch_index, data.donor.position_index)]
    return run(loaded_b, data.ids.to(loaded_b.input_device), interventions=interventions,
               attention_mask=data.mask, grad=grad).logits


def _batches(data: BladeData, size: int) -> Iterator[BladeData]:
    for start in range(0, len(data), size):
        yield data.select(list(range(start, min(start + size, len(data)))))


def _score(loaded_b: Any, data: BladeData, address_b: str, blade: Blade | None, batch_size: int) -> TaskScore:
    total_loss, total_right, count = 0.0, 0.0, 0
    for part in _batches(data, batch_size):
        _, score = score_logits(_logits(loaded_b, part, address_b, blade), part)
        total_loss += score.loss * score.examples
        total_right += score.accuracy * score.examples
        count += score.examples
    return TaskScore(total_loss / count, total_right / count, count)


def evaluate_blade(loaded_b: Any, address_b: str, blade: Blade, data: BladeData, *, batch_size: int = 8,
                   seed: int = 0) -> BladeEval:
    """Task loss and accuracy with the blade, blade off, and the random blade of the same norm."""
    with torch.no_grad():
        injected = blade(data.donor.rows.to(blade.x_mean.device)).norm(dim=-1).mean()
        scale = float(blade.y_scale)
    return BladeEval(_score(loaded_b, data, address_b, blade, batch_size),
                     _score(loaded_b, data, address_b, None, batch_size),
                     _score(loaded_b, data, address_b, blade.random_control(seed), batch_size),
                     float(injected) / (scale * blade.width_b ** 0.5))


def _save_checkpoint(path: Path, blade: Blade, optimiser: torch.optim.Optimizer, step: int, losses: list[float],
                     settings: TrainSettings) -> None:
    from safetensors.torch import save

    from engine.storage import atomic_write_bytes

    tensors = {f"blade.{name}": value for name, value in blade.tensors().items()}
    state = optimiser.state_dict()
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value, dtype=torch.float32).reshape(-1).clone() \
                if key == "step" else value.detach().float().contiguous().clone()
    meta = {"format": CHECKPOINT_FORMAT, "step": step, "losses": losses, "settings": blade.settings(),
            "train": settings.__dict__}
    atomic_write_bytes(path, save(tensors, metadata={"garage": json.dumps(meta)}))


def _load_checkpoint(path: Path, blade: Blade, optimiser: torch.optim.Optimizer,
                     settings: TrainSettings) -> tuple[int, list[float]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        payload = path.read_bytes()
        tensors = load(payload)
        header = json.loads(payload[8:8 + int.from_bytes(payload[:8], "little")])
        meta = json.loads(header["__metadata__"]["garage"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise TransferError(f"cannot read the blade checkpoint {path} ({exc}); remove it to start afresh") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("settings") != blade.settings() or \
            meta.get("train") != settings.__dict__:
        raise TransferError(f"the checkpoint {path} is for another blade or other settings; remove it or pass the "
                            "settings it was made with")
    blade.load_state_dict({name[6:]: value for name, value in tensors.items() if name.startswith("blade.")})
    state = optimiser.state_dict()
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            restored.setdefault(int(index), {})[key] = value.reshape(()) if key == "step" else value
    state["state"] = restored
    optimiser.load_state_dict(state)
    return int(meta["step"]), [float(x) for x in meta["losses"]]


def train_blade(loaded_b: Any, address_b: str, blade: Blade, data: BladeData, settings: TrainSettings, *,
                cancel: threading.Event | None = None, progress: Progress | None = None,
                checkpoint: Path | None = None, checkpoint_every: int = 50,
                on_step: Callable[[int, float], None] | None = None) -> TrainLog:
    """Train ``blade`` in place on B's task loss over ``data``; resumes from ``checkpoint`` when it exists.

    ``on_step(step, loss)`` hears of every step (a view drawing the loss curve).
    """
    settings.checked()
    started = time.perf_counter()
    blade.to(loaded_b.input_device)  # before Adam and a resumed state: the injection would move it mid-run
    optimiser = torch.optim.Adam(blade.parameters(), lr=settings.lr)
    step, losses = 0, list[float]()
    if checkpoint is not None and Path(checkpoint).is_file():
        step, losses = _load_checkpoint(Path(checkpoint), blade, optimiser, settings)
    resumed_from = step
    size = min(settings.batch_size, len(data))
    blade.train()
    with frozen(loaded_b.model):
        while step < settings.steps:
            check_cancel(cancel, "blade training")
            generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
            chosen = torch.randperm(len(data), generator=generator)[:size].tolist()
            part = data.select(chosen)
            loss, _ = score_logits(_logits(loaded_b, part, address_b, blade, grad=True), part)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            step += 1
            if on_step is not None:
                on_step(step, losses[-1])
            notify(progress, f"training the blade at {address_b}: step {step}/{settings.steps}, "
                             f"loss {losses[-1]:.3f}", step / settings.steps)
            if checkpoint is not None and (step % checkpoint_every == 0 or step == settings.steps):
                _save_checkpoint(Path(checkpoint), blade, optimiser, step, losses, settings)
    blade.eval()
    return TrainLog(losses, time.perf_counter() - started, resumed_from)


def _x_stats(data: BladeData) -> tuple[torch.Tensor, float]:
    rows = data.donor.rows.double()
    mean = rows.mean(0)
    return mean.float(), float((rows - mean).pow(2).mean().sqrt())


def train_blade_at(loaded_a: Any, loaded_b: Any, address_a: str, address_b: str, task: BladeTask,
                   settings: TrainSettings | None = None, *, stitch: Any = None, held_out_every: int = 4,
                   data: tuple[BladeData, BladeData] | None = None, y_rms: float | None = None,
                   cancel: threading.Event | None = None, progress: Progress | None = None,
                   checkpoint: Path | None = None, on_step: Callable[[int, float], None] | None = None) -> BladeReport:
    """Train one blade from A's ``address_a`` into B's ``address_b`` on ``task`` and judge it on held-out examples.

    ``stitch`` (a fitted ``Stitch`` from A's address to B's) starts the map; otherwise it starts
    random. ``data`` passes already-encoded (train, held-out) examples, as the depth sweep does.
    """
    from engine.addresses import resolve_point

    settings = (settings or TrainSettings()).checked()
    target_a = resolve_point(loaded_a.anatomy, address_a)
    target_b = resolve_point(loaded_b.anatomy, address_b)
    if target_b.part.kind != "layer":
        raise TransferError(f"a blade writes into a layer's residual; '{address_b}' is not one (use e.g. L10)")
    if data is None:
        train_examples, held_examples = task.split(held_out_every)
        notify(progress, "reading the task through model A", None)
        data = (encode_task(loaded_a, loaded_b, target_a.address, train_examples, cancel=cancel),
                encode_task(loaded_a, loaded_b, target_a.address, held_examples, cancel=cancel))
    train_data, held_data = data
    if y_rms is None:
        y_rms = residual_rms(loaded_b, train_data, [target_b.address])[target_b.address]
    x_mean, x_scale = _x_stats(train_data)
    width_a, width_b = int(train_data.donor.rows.shape[1]), int(loaded_b.config.hidden_size)
    if stitch is not None:
        if (stitch.width_a, stitch.width_b) != (width_a, width_b):
            raise TransferError(f"the stitch maps {stitch.width_a}→{stitch.width_b} but these addresses carry "
                                f"{width_a}→{width_b}; fit a stitch between these models")
        blade = blade_from_stitch(stitch, x_mean=x_mean, x_scale=x_scale, y_scale=y_rms, gate=settings.gate,
                                  seed=settings.seed)
        settings.map_kind = blade.map_kind
    else:
        blade = Blade(width_a, width_b, map_kind=settings.map_kind, gate=settings.gate, rank=settings.rank,
                      hidden=settings.hidden, seed=settings.seed)
        blade.set_scales(x_mean, x_scale, y_rms)
    log = train_blade(loaded_b, target_b.address, blade, train_data, settings, cancel=cancel,
                      progress=scaled(progress, 0.0, 0.9), checkpoint=checkpoint, on_step=on_step)
    notify(progress, "judging the blade against its controls", 0.95)
    train_eval = evaluate_blade(loaded_b, target_b.address, blade, train_data, batch_size=settings.batch_size,
                                seed=settings.seed)
    held_eval = evaluate_blade(loaded_b, target_b.address, blade, held_data, batch_size=settings.batch_size,
                               seed=settings.seed)
    layer = int(target_b.part.address[1:])  # a layer's address is L<index>
    return BladeReport(target_a.address, target_b.address, layer, layer / loaded_b.anatomy.n_layers,
                       train_data.alignment, task.name, task.digest, settings, train_eval, held_eval, log, blade)


def sweep_depths(loaded_a: Any, loaded_b: Any, address_a: str, layers_b: list[int], task: BladeTask,
                 settings: TrainSettings | None = None, *, held_out_every: int = 4,
                 cancel: threading.Event | None = None, progress: Progress | None = None,
                 on_step: Callable[[int, int, float], None] | None = None) -> BladeSweep:
    """A fresh blade at each of B's ``layers_b`` (output of the layer), each judged against both controls.

    A runs over the task once; B's residual RMS at every depth is read in one pass.
    ``on_step(layer, step, loss)`` hears of every training step at every depth.
    """
    from engine.addresses import resolve_point

    if not layers_b:
        raise TransferError("the depth sweep needs at least one layer of B")
    bad = [layer for layer in layers_b if not 0 <= layer < loaded_b.anatomy.n_layers]
    if bad:
        raise TransferError(f"B has layers 0–{loaded_b.anatomy.n_layers - 1}; {bad[0]} is not one")
    target_a = resolve_point(loaded_a.anatomy, address_a)
    train_examples, held_examples = task.split(held_out_every)
    notify(progress, "reading the task through model A", 0.0)
    data = (encode_task(loaded_a, loaded_b, target_a.address, train_examples, cancel=cancel),
            encode_task(loaded_a, loaded_b, target_a.address, held_examples, cancel=cancel))
    addresses = [f"L{layer}.out" for layer in layers_b]
    rms = residual_rms(loaded_b, data[0], addresses)
    reports = []
    for number, address in enumerate(addresses):
        share = scaled(progress, number / len(layers_b), (number + 1) / len(layers_b))
        each = TrainSettings(**{**(settings or TrainSettings()).__dict__})
        layer = layers_b[number]
        hear = None if on_step is None else (lambda step, loss, layer=layer: on_step(layer, step, loss))
        reports.append(train_blade_at(loaded_a, loaded_b, target_a.address, address, task, each, data=data,
                                      y_rms=rms[address], cancel=cancel, progress=share, on_step=hear))
    return BladeSweep(loaded_a.name, loaded_b.name, target_a.address, loaded_b.anatomy.n_layers, reports)
