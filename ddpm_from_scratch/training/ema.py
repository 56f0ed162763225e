"""Exponential moving average of the weights (the paper samples from EMA weights, decay 0.9999).

After each optimizer update k = 1, 2, ...:  ema <- decay_k * ema + (1 - decay_k) * theta, with the
warmup decay_k = clip(1 - (1 + (k - 1) / inv_gamma)^-power, min_decay, max_decay). The first update
copies theta (decay 0), so the average never carries the random init for long; with power 3/4 the
decay reaches 0.999 after ~10k updates, with 2/3 it reaches 0.9999 after ~1M (a full-length run).

The average is a full copy of the model in float32 (mixed precision keeps float32 master weights),
so it can be sampled from and saved like any model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class ExponentialMovingAverage:
    def __init__(
        self,
        model: torch.nn.Module,
        max_decay: float = 0.9999,
        min_decay: float = 0.0,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
    ):
        self.averaged_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay, self.min_decay, self.inv_gamma, self.power = max_decay, min_decay, inv_gamma, power
        self.num_updates = 0

    def decay(self, update: int) -> float:
        """Decay used at the `update`-th update (1-based)."""
        warmup = 1.0 - (1.0 + (update - 1) / self.inv_gamma) ** -self.power
        return min(max(warmup, self.min_decay), self.max_decay)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> float:
        """Move the average towards `model` (the unwrapped training model); returns the decay used."""
        self.num_updates += 1
        decay = self.decay(self.num_updates)
        averaged = list(self.averaged_model.parameters())
        current = [param.detach() for param in model.parameters()]
        # ema += (1 - decay) * (theta - ema), one fused kernel over all tensors
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for averaged_buffer, buffer in zip(self.averaged_model.buffers(), model.buffers()):
            averaged_buffer.copy_(buffer)
        return decay

    def to(self, device: torch.device) -> "ExponentialMovingAverage":
        self.averaged_model.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "averaged_model": self.averaged_model.state_dict(),
            "num_updates": self.num_updates,
            "settings": {"max_decay": self.max_decay, "min_decay": self.min_decay,
                         "inv_gamma": self.inv_gamma, "power": self.power},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged_model.load_state_dict(state["averaged_model"])
        self.num_updates = int(state["num_updates"])
