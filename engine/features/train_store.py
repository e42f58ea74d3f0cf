"""What SAE training keeps on disk: activation shards (one per first-pass step) and checkpoints
(SAE tensors and Adam moments as safetensors, the loop's state as JSON), all written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.features.errors import FeatureError
from engine.storage import atomic_output_dir, atomic_output_path, ensure_dir

CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


class ActivationCache:
    """Activation shards as safetensors under ``folder``, tagged with what made them."""

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

    def has(self, step: int) -> bool:
        path = self.path(step)
        return path is not None and path.exists()

    def read(self, step: int) -> Tensor | None:
        from safetensors.torch import load_file

        return load_file(str(self.path(step)))["acts"] if self.has(step) else None

    def write(self, step: int, acts: Tensor) -> None:
        from safetensors.torch import save_file

        path = self.path(step)
        if path is not None:
            with atomic_output_path(path) as tmp:
                save_file({"acts": acts.contiguous()}, str(tmp))


def save_checkpoint(folder: Path, sae: torch.nn.Module, optimizer: torch.optim.Adam, state: dict[str, Any]) -> None:
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


def load_checkpoint(folder: Path, sae: torch.nn.Module, optimizer: torch.optim.Adam) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(folder / CHECKPOINT_TENSORS))
        state = json.loads((folder / CHECKPOINT_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatureError(f"no readable checkpoint in {folder} ({exc}); start without --resume") from exc
    missing = [name for name, _ in sae.named_parameters() if name not in tensors]
    if missing:
        raise FeatureError(f"the checkpoint in {folder} lacks {', '.join(missing)} (an older trainer wrote it); "
                           "start again without --resume")
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if tuple(tensors[name].shape) != tuple(param.shape):
                raise FeatureError(f"the checkpoint in {folder} holds {name} of shape {list(tensors[name].shape)}, "
                                   f"this run needs {list(param.shape)}; resume with the same --expansion and --at")
            param.copy_(tensors[name])
            if f"adam.{name}.exp_avg" in tensors:
                optimizer.state[param] = {"step": torch.tensor(state["adam_step"][name]),
                                          "exp_avg": tensors[f"adam.{name}.exp_avg"].clone(),
                                          "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].clone()}
    return state
