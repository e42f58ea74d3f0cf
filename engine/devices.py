"""Where a module of a split or offloaded model really runs, and its offloaded weights.

accelerate's ``device_map`` leaves a disk-offloaded module's parameters on the meta device and
runs it on its hook's execution device, reading the weights back from the offload folder at
each call. Interventions follow the module they hook; extraction reads offloaded weights back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _hooks(module: nn.Module) -> list:
    hook = getattr(module, "_hf_hook", None)
    return [] if hook is None else list(getattr(hook, "hooks", None) or [hook])


def execution_device(module: nn.Module) -> torch.device | None:
    """The device ``module`` computes on: accelerate's execution device, else its first weight's."""
    for hook in _hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device)
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return None


def offloaded_tensor(model: nn.Module, name: str) -> Tensor | None:
    """The real value of parameter ``name`` whose module accelerate offloaded (None if it is not)."""
    module_path, _, leaf = name.rpartition(".")
    path = module_path.split(".") if module_path else []
    # the hook holding the weights may sit on the module itself or on an ancestor block
    for depth in range(len(path), -1, -1):
        owner = model.get_submodule(".".join(path[:depth])) if depth else model
        key = ".".join([*path[depth:], leaf])
        for hook in _hooks(owner):
            weights = getattr(hook, "weights_map", None)
            if weights is not None and key in weights:
                return weights[key]
    return None
