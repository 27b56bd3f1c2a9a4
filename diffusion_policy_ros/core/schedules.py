"""Noise schedules (betas) of the forward diffusion process.

The numbers are the same as diffusers' `DDPMScheduler`/`DDIMScheduler` (float32, same formulas), so a
model trained here can be sampled by diffusers and the other way round; the tests check it.
"""
from __future__ import annotations

import math

import torch

BETA_SCHEDULES = ('linear', 'scaled_linear', 'squaredcos_cap_v2')


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule ('squaredcos_cap_v2'), beta capped at `max_beta`.

    Computed in Python floats (double) and rounded once to float32, exactly like diffusers.
    """
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
             for i in range(num_train_timesteps)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(name: str, num_train_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """Betas (float32, shape (num_train_timesteps,)) of schedule `name`.

    'linear': linspace(beta_start, beta_end); 'scaled_linear' (quadratic): linspace of the square roots,
    squared; 'squaredcos_cap_v2': cosine alpha-bar (ignores beta_start/beta_end).
    """
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f'num_train_timesteps must be a positive int, got {num_train_timesteps!r}')
    if name == 'linear':
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if name == 'scaled_linear':
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if name == 'squaredcos_cap_v2':
        return _cosine_betas(num_train_timesteps)
    raise ValueError(f'unknown beta schedule {name!r}; expected one of {BETA_SCHEDULES}')


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """Cumulative product of (1 - beta) in float32, the same rounding diffusers uses."""
    return torch.cumprod(1.0 - betas.to(torch.float32), dim=0)
