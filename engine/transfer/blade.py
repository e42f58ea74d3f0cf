"""Blades: trained parts that inject ``gate · map(h_A)`` into model B's residual stream.

A ``Blade`` is the trainable part (a map from A's residual width to B's, and a scalar or
per-dimension gate); a ``BladeInjection`` is the intervention that adds the blade's output at
B's chosen residual point, at the positions of B that pair with positions of A on the same
text. Both models stay frozen: only the blade's parameters ever get gradients.

Inputs are centred and scaled by A's residual RMS and outputs scaled by B's, so one learning
rate suits models whose residuals differ by orders of magnitude (SmolLM2 carries values ~1e3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import InterventionError
from engine.interventions import EditPlan, Intervention, RunMask
from engine.limits import MAX_HIDDEN, check_count
from engine.transfer.pairs import TransferError

__all__ = ["GATE_KINDS", "MAP_KINDS", "Blade", "BladeInjection", "blade_from_stitch", "describe_blade", "inject",
           "plan_blade"]

MAP_KINDS = ("affine", "lowrank", "ae")
GATE_KINDS = ("scalar", "vector")


class Blade(nn.Module):
    """``gate · map(h_A)``: an affine, low-rank affine or ReLU-autoencoder map and a gate.

    ``rotation`` (a fixed orthogonal ``[d_B, d_B]``) turns a trained blade into its random
    control: every injected vector keeps its norm and loses its direction.
    """

    x_mean: Tensor  # buffers, declared so type checkers see tensors, not modules
    x_scale: Tensor
    y_scale: Tensor

    def __init__(self, width_a: int, width_b: int, *, map_kind: str = "affine", gate: str = "scalar",
                 rank: int = 16, hidden: int = 256, seed: int = 0) -> None:
        super().__init__()
        if map_kind not in MAP_KINDS:
            raise TransferError(f"unknown blade map '{map_kind}'; use one of: {', '.join(MAP_KINDS)}")
        if gate not in GATE_KINDS:
            raise TransferError(f"unknown blade gate '{gate}'; use one of: {', '.join(GATE_KINDS)}")
        width_a = check_count(width_a, "model A's residual width", MAX_HIDDEN, minimum=1)
        width_b = check_count(width_b, "model B's residual width", MAX_HIDDEN, minimum=1)
        self.width_a, self.width_b, self.map_kind, self.gate_kind = width_a, width_b, map_kind, gate
        self.rank = check_count(rank, "the blade's rank", min(width_a, width_b), minimum=1) \
            if map_kind == "lowrank" else None
        self.hidden = check_count(hidden, "the blade's hidden width", MAX_HIDDEN, minimum=1) \
            if map_kind == "ae" else None
        generator = torch.Generator().manual_seed(seed)

        def normal(*shape: int, fan_in: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator) / math.sqrt(fan_in))

        if map_kind == "affine":
            self.weight = normal(width_a, width_b, fan_in=width_a)
        elif map_kind == "lowrank":
            assert self.rank is not None
            self.down = normal(width_a, self.rank, fan_in=width_a)
            self.up = normal(self.rank, width_b, fan_in=self.rank)
        else:
            assert self.hidden is not None
            self.enc_weight = normal(width_a, self.hidden, fan_in=width_a)
            self.enc_bias = nn.Parameter(torch.zeros(self.hidden))
            self.dec_weight = normal(self.hidden, width_b, fan_in=self.hidden)
        self.bias = nn.Parameter(torch.zeros(width_b))
        # the gate starts shut: an untrained blade leaves B exactly as it was
        self.gate = nn.Parameter(torch.zeros(1 if gate == "scalar" else width_b))
        self.register_buffer("x_mean", torch.zeros(width_a))
        self.register_buffer("x_scale", torch.ones(()))
        self.register_buffer("y_scale", torch.ones(()))
        self.rotation: Tensor | None = None

    def set_scales(self, x_mean: Tensor, x_scale: float, y_scale: float) -> None:
        """Centre A's rows on ``x_mean`` and measure both sides in units of their residual RMS."""
        self.x_mean.copy_(x_mean.float())
        self.x_scale.fill_(float(x_scale) or 1.0)
        self.y_scale.fill_(float(y_scale) or 1.0)

    def mapped(self, h_a: Tensor) -> Tensor:
        """``map(h_A)`` in B's units, before the gate (float32, ``[..., d_B]``)."""
        x = (h_a.float() - self.x_mean) / self.x_scale
        if self.map_kind == "affine":
            y = x @ self.weight
        elif self.map_kind == "lowrank":
            y = (x @ self.down) @ self.up
        else:
            y = torch.relu(x @ self.enc_weight + self.enc_bias) @ self.dec_weight
        return (y + self.bias) * self.y_scale

    def forward(self, h_a: Tensor) -> Tensor:
        """What the blade adds to B's residual for A's rows ``h_a`` (``[..., d_A]`` → ``[..., d_B]``)."""
        out = self.gate * self.mapped(h_a)
        if self.rotation is not None:
            out = out @ self.rotation.to(out.device)
        return out

    def describe(self) -> str:
        detail = {"lowrank": f" rank {self.rank}", "ae": f" hidden {self.hidden}"}.get(self.map_kind, "")
        return f"{self.map_kind}{detail} map {self.width_a}→{self.width_b}, {self.gate_kind} gate"

    def settings(self) -> dict[str, Any]:
        """What rebuilds this blade's shape (stored with its part)."""
        return {"width_a": self.width_a, "width_b": self.width_b, "map_kind": self.map_kind, "gate": self.gate_kind,
                "rank": self.rank, "hidden": self.hidden}

    def tensors(self) -> dict[str, Tensor]:
        """Parameters and scales by name, for a safetensors file (the control's rotation is never saved)."""
        return {name: value.detach().float().contiguous().clone() for name, value in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, settings: dict[str, Any], tensors: dict[str, Tensor]) -> Blade:
        """Rebuild a blade from ``settings()`` and ``tensors()``; a missing or misshapen tensor is refused."""
        def make() -> Blade:
            return cls(int(settings["width_a"]), int(settings["width_b"]), map_kind=str(settings["map_kind"]),
                       gate=str(settings["gate"]), rank=int(settings.get("rank") or 16),
                       hidden=int(settings.get("hidden") or 256))

        try:
            # shapes first on the meta device: settings from a file must not size a real allocation
            with torch.device("meta"):
                expected = make().state_dict()
        except (KeyError, TypeError, ValueError, TransferError, RuntimeError) as exc:
            raise TransferError(f"the blade's settings cannot be read ({exc}); the part file is damaged: train the "
                                "blade again") from None
        wrong = sorted(set(expected) ^ set(tensors)) or \
            [name for name in expected if tuple(expected[name].shape) != tuple(tensors[name].shape)]
        if wrong:
            raise TransferError(f"the blade's tensors do not match its settings (first: '{wrong[0]}'); "
                                "the part file is damaged: train the blade again")
        blade = make()
        blade.load_state_dict({name: value.float() for name, value in tensors.items()})
        return blade

    def random_control(self, seed: int = 0) -> Blade:
        """A copy whose every injected vector is turned by a seeded random rotation: same norms, no direction."""
        control = Blade.from_tensors(self.settings(), self.tensors())
        generator = torch.Generator().manual_seed(10_007 + seed)
        q, r = torch.linalg.qr(torch.randn(self.width_b, self.width_b, generator=generator, dtype=torch.float64))
        control.rotation = (q * torch.sign(torch.diagonal(r))).float()
        return control.requires_grad_(False)


def blade_from_stitch(stitch: Any, *, x_mean: Tensor, x_scale: float, y_scale: float, gate: str = "scalar",
                      seed: int = 0) -> Blade:
    """A blade whose map starts as a fitted stitch (``engine.transfer.stitch.Stitch``), gate shut.

    Ridge stitches give an affine map, low-rank ones a factored map of the same rank, ``ae`` ones
    the same encoder and decoder (keeping the stitch's own standardisation); an affine stitch is
    re-expressed in the units ``x_mean``/``x_scale``/``y_scale`` the trainer measured, so
    ``blade.mapped(h) == stitch.apply(h)``.
    """
    kind = {"ridge": "affine", "lowrank": "lowrank", "ae": "ae"}.get(stitch.kind)
    if kind is None:
        raise TransferError(f"a blade cannot start from a '{stitch.kind}' stitch; use a ridge, lowrank or ae stitch")
    hidden = stitch.encoder.out_features if stitch.kind == "ae" else 256
    blade = Blade(stitch.width_a, stitch.width_b, map_kind=kind, gate=gate, rank=stitch.rank or 16, hidden=hidden,
                  seed=seed)
    with torch.no_grad():
        if stitch.kind == "ae":
            # stitch: dec(relu(enc((x - xm) / xs))) * ys + ym; blade: (relu(x' W_e + b_e) W_d + b) * y_scale
            blade.set_scales(stitch.x_mean, stitch.x_scale, stitch.y_scale)
            blade.enc_weight.copy_(stitch.encoder.weight.T)
            blade.enc_bias.copy_(stitch.encoder.bias)
            blade.dec_weight.copy_(stitch.decoder.weight.T)
            blade.bias.copy_(stitch.decoder.bias + stitch.y_mean / stitch.y_scale)
            return blade
        blade.set_scales(x_mean, x_scale, y_scale)
        # h @ W + b == ((h - m) / s_x @ W' + b') * s_y  with  W' = W s_x / s_y,  b' = (m @ W + b) / s_y
        weight, bias = stitch.weight.double(), stitch.bias.double()
        s_x, s_y = float(blade.x_scale), float(blade.y_scale)
        matrix = weight * s_x / s_y
        if kind == "affine":
            blade.weight.copy_(matrix.float())
        else:
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            rank = blade.rank or 1
            root = s[:rank].sqrt()
            blade.down.copy_((u[:, :rank] * root).float())
            blade.up.copy_((root[:, None] * vh[:rank]).float())
        blade.bias.copy_(((x_mean.double() @ weight + bias) / s_y).float())
    return blade


@dataclass
class BladeInjection(Intervention):
    """Add ``blade(donor_rows)`` to B's residual at ``address``, row ``i`` at ``(batch_index[i], position_index[i])``.

    The donor rows are A's residual on the same text, already paired with B's positions
    (``engine.transfer.blade_data``); a pass over another text is refused, not silently misaligned.
    """

    blade: Blade | None = None
    donor_rows: Tensor | None = None  # [R, d_A]
    batch_index: Tensor | None = None  # [R] long
    position_index: Tensor | None = None  # [R] long
    part: str | None = None  # the parts-bin name, for descriptions

    def describe(self) -> str:
        what = self.part or (self.blade.describe() if self.blade is not None else "blade")
        return f"blade {what} into {self.address}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "part": self.part,
                "rows": 0 if self.donor_rows is None else int(self.donor_rows.shape[0])}

    def plan_edits(self, anatomy: Any, mask: RunMask | None = None) -> list[EditPlan]:
        """One edit at B's residual point that adds the blade's output at the paired positions."""
        from engine.addresses import resolve_point
        from engine.sites import site_for

        if self.blade is None or self.donor_rows is None or self.batch_index is None or self.position_index is None:
            raise InterventionError(f"the blade at '{self.address}' needs a blade and A's paired rows")
        target = resolve_point(anatomy, self.address)
        if target.part.kind != "layer" or target.point not in (None, "out", "in"):
            raise InterventionError(f"cannot attach a blade at '{target.address}': use a residual point such as "
                                    "L10 or L10.in")
        hidden = anatomy.root.info.get("hidden_size")
        if hidden is not None and hidden != self.blade.width_b:
            raise InterventionError(f"the blade writes {self.blade.width_b} values per token but "
                                    f"'{target.address}' has {hidden}; attach it to the model it was trained for")
        return [EditPlan(site_for(anatomy, target), self._edit)]

    def _edit(self, value: Tensor) -> Tensor:
        assert self.blade is not None and self.donor_rows is not None
        assert self.batch_index is not None and self.position_index is not None
        batch, length = value.shape[0], value.shape[1]
        if self.donor_rows.shape[0] == 0:
            return value
        if int(self.batch_index.max()) >= batch or int(self.position_index.max()) >= length:
            raise InterventionError(
                f"the blade at '{self.address}' was prepared for a longer text (position "
                f"{int(self.position_index.max())}) than this pass has ({length} tokens); prepare it for this text")
        device = value.device
        blade = self.blade.to(device)
        added = blade(self.donor_rows.to(device)).to(value.dtype)
        index = (self.batch_index.to(device), self.position_index.to(device))
        return value.index_put(index, added, accumulate=True)  # out of place: autograd sees it


def inject(blade: Blade, address: str, donor_rows: Tensor, batch_index: Tensor, position_index: Tensor, *,
           part: str | None = None) -> BladeInjection:
    """The intervention that adds ``blade`` at B's ``address`` (see ``BladeInjection``)."""
    return BladeInjection("blade", address, blade=blade, donor_rows=donor_rows, batch_index=batch_index.long(),
                          position_index=position_index.long(), part=part)


def describe_blade(item: Intervention) -> str:
    """The registry's description of a blade intervention."""
    return item.describe() if isinstance(item, BladeInjection) else f"blade into {item.address}"


def plan_blade(anatomy: Any, item: Intervention, mask: RunMask | None) -> list[EditPlan]:
    """The registry's planner: a blade plans its own edit (``BladeInjection.plan_edits``)."""
    if not isinstance(item, BladeInjection):
        raise InterventionError(f"a blade at '{item.address}' must be made with engine.transfer.blade.inject")
    return item.plan_edits(anatomy, mask)
