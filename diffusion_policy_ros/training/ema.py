"""Exponential moving average of the policy weights, with Chi et al.'s warm-up power schedule.

The EMA copy is what gets deployed: its weights are much smoother than the raw ones, which matters
for a diffusion policy whose samples are sensitive to small weight noise. The decay grows from 0
(plain copy) toward `max_value`, so early training is not frozen on random initial weights.

Written here rather than taken from diffusers' `EMAModel` because we also average the whole module
(buffers, frozen parameters copied) and need the averaged copy as a standalone `nn.Module` to save
with `save_checkpoint`; diffusers' `EMAModel.get_decay` is the test oracle for the schedule.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from diffusion_policy_ros.training.config import EMASection


def ema_decay(optimization_step: int, cfg: EMASection) -> float:
    """Decay used for the update made at `optimization_step` (0-based count of updates so far)."""
    step = max(0, optimization_step - cfg.update_after_step - 1)
    if step <= 0:
        return 0.0
    value = 1.0 - (1.0 + step / cfg.inv_gamma) ** -cfg.power
    return max(cfg.min_value, min(value, cfg.max_value))


class EMA:
    """Holds `averaged`, a frozen eval-mode copy of the model, updated after each optimiser step."""

    def __init__(self, model: nn.Module, cfg: EMASection) -> None:
        self.cfg = cfg
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.optimization_step = 0

    @property
    def current_decay(self) -> float:
        return ema_decay(self.optimization_step, self.cfg)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """ema = decay * ema + (1 - decay) * weights; frozen parameters and buffers are copied."""
        decay = self.current_decay
        averaged_params, source_params = [], []
        for ema_p, p in zip(self.averaged.parameters(), model.parameters(), strict=True):
            if p.requires_grad:
                averaged_params.append(ema_p)
                source_params.append(p.detach().to(ema_p.dtype))
            else:
                ema_p.copy_(p)
        if averaged_params:
            # One fused kernel per dtype/device group instead of one launch per tensor.
            torch._foreach_lerp_(averaged_params, source_params, 1.0 - decay)
        for ema_b, b in zip(self.averaged.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.optimization_step += 1
        return decay

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.averaged.state_dict())

    def load_state(self, tensors: dict[str, torch.Tensor], optimization_step: int) -> None:
        self.averaged.load_state_dict(tensors, strict=True)
        self.optimization_step = int(optimization_step)
