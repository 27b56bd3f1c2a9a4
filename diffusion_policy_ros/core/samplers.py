"""DDPM and DDIM samplers with precomputed per-step coefficient tables.

Why not diffusers' schedulers at inference: they recompute scalar coefficients, look up indices and
branch in Python at every step. Here every (sampler, num_inference_steps) pair gets one table of six
coefficients per step, computed once; a step is then a few fused tensor ops:

    x0     = clamp((x_t - Q * model_output) / P)         (epsilon; x0 = clamp(model_output) for sample)
    x_prev = A * x_t + B * x0 + D * model_output + S * noise

which covers DDPM and DDIM with epsilon or sample prediction. diffusers is the numerical oracle in
the tests (max abs difference <= 1e-5 over full trajectories with the same noise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch

from .config import SamplerSettings
from .schedules import alphas_cumprod, make_betas

PredictionType = Literal['epsilon', 'sample']
ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class StepTable:
    """Per-step coefficients for one number of inference steps (see the module docstring)."""

    timesteps: tuple[int, ...]
    coefficients: np.ndarray       # (num_steps, 6): P, Q, A, B, D, S (float32 values held in float64)
    draws_noise: tuple[bool, ...]  # whether step i consumes a fresh N(0, I) draw (diffusers' order)


_P, _Q, _A, _B, _D, _S = range(6)


class _Sampler:
    """Shared machinery: schedule, tables, forward noising, stepping and the sampling loop."""

    config: SamplerSettings
    spacings: tuple[str, ...] = ('leading',)

    def __init__(self, config: SamplerSettings) -> None:
        if config.prediction_type not in ('epsilon', 'sample'):
            raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {config.prediction_type!r}")
        spacings = self.spacings
        if config.timestep_spacing not in spacings:
            raise ValueError(f'timestep_spacing must be one of {spacings} for this sampler, '
                             f'got {config.timestep_spacing!r}')
        if config.clip_sample_range <= 0:
            raise ValueError(f'clip_sample_range must be > 0, got {config.clip_sample_range}')
        self.config = config
        self.betas = make_betas(config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end)
        self.alphas_cumprod = alphas_cumprod(self.betas)
        self._tables: dict[int, StepTable] = {}
        self._device_tables: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self._noise_scales: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._active_steps = self._check_steps(config.num_inference_steps)

    # ---- schedule -------------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def _check_steps(self, num_inference_steps: int) -> int:
        n = int(num_inference_steps)
        if not 1 <= n <= self.num_train_timesteps:
            raise ValueError(f'num_inference_steps must be in [1, {self.num_train_timesteps}], '
                             f'got {num_inference_steps}')
        return n

    def _chain_timesteps(self, n: int) -> list[int]:
        if self.config.timestep_spacing == 'trailing':  # diffusers' trailing spacing
            t = self.num_train_timesteps
            steps = [int(v) - 1 + self.config.steps_offset for v in np.round(np.arange(t, 0, -t / n))]
        else:
            ratio = self.num_train_timesteps // n
            steps = [i * ratio + self.config.steps_offset for i in range(n - 1, -1, -1)]
        if steps[0] >= self.num_train_timesteps or steps[-1] < 0:
            raise ValueError(f'steps_offset {self.config.steps_offset} puts the {n}-step chain {steps[0]}..{steps[-1]} '
                             f'outside the trained timesteps 0..{self.num_train_timesteps - 1}')
        return steps

    def table(self, num_inference_steps: int | None = None) -> StepTable:
        """The (cached) coefficient table for `num_inference_steps` (default: the config's)."""
        n = self._check_steps(num_inference_steps or self.config.num_inference_steps)
        if n not in self._tables:
            self._tables[n] = self._build_table(n)
        return self._tables[n]

    def timesteps(self, num_inference_steps: int | None = None) -> torch.Tensor:
        """Descending timesteps of a chain; also selects the chain `step` uses (like set_timesteps)."""
        table = self.table(num_inference_steps)
        self._active_steps = len(table.timesteps)
        return torch.tensor(table.timesteps, dtype=torch.long)

    def _build_table(self, n: int) -> StepTable:
        raise NotImplementedError

    def _x0_coefficients(self, a_t: torch.Tensor) -> tuple[float, float]:
        """P, Q of x0 = (x_t - Q out) / P for epsilon prediction (unused for sample prediction).

        Subtract first, divide last, as diffusers does: P * x_t - (Q / P) * out would cancel two numbers
        of size 1 / sqrt(a_t) ~ 1e3 at the noisiest steps and lose 1e-5 of float32 precision.
        """
        if self.config.prediction_type == 'epsilon':
            return float(a_t ** 0.5), float((1 - a_t) ** 0.5)
        return 1.0, 0.0

    def _coefficients_on(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (n, device, dtype)
        if key not in self._device_tables:
            with torch.inference_mode(False):  # made during inference, still usable in training
                self._device_tables[key] = torch.as_tensor(self.table(n).coefficients, dtype=dtype, device=device)
        return self._device_tables[key]

    # ---- training -------------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) for a batch of integer timesteps t (shape (B,))."""
        key = (x0.device, x0.dtype)
        if key not in self._noise_scales:
            with torch.inference_mode(False):
                ac = self.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)
                self._noise_scales[key] = (ac ** 0.5, (1 - ac) ** 0.5)
        sqrt_ac, sqrt_one_minus_ac = self._noise_scales[key]
        t = torch.as_tensor(t, device=x0.device).long().reshape(-1)
        view = (-1,) + (1,) * (x0.dim() - 1)
        return sqrt_ac[t].view(view) * x0 + sqrt_one_minus_ac[t].view(view) * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output for the configured prediction type."""
        return noise if self.config.prediction_type == 'epsilon' else x0

    def sample_train_timesteps(self, batch_size: int, device: torch.device | str = 'cpu',
                               generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform integer timesteps in [0, num_train_timesteps) for a training batch."""
        draw_device = generator.device if generator is not None else device
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator,
                             device=draw_device).to(device)

    # ---- stepping ------------------------------------------------------------------------------
    def step_by_index(self, model_output: torch.Tensor, index: int, x_t: torch.Tensor,
                      noise: torch.Tensor | None = None, num_inference_steps: int | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step at chain position `index`; returns (x_prev, predicted x0)."""
        table = self.table(num_inference_steps or self._active_steps)
        row = table.coefficients[index]
        p, q, a, b, d, s = self._coefficients_on(len(table.timesteps), x_t.device, x_t.dtype)[index]
        x0 = (x_t - model_output * q) / p if self.config.prediction_type == 'epsilon' else model_output
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        x_prev = x0 * b
        if row[_A] != 0.0:
            x_prev = x_prev.add_(x_t * a)
        if row[_D] != 0.0:
            x_prev = x_prev.add_(model_output * d)
        if table.draws_noise[index]:
            if noise is None:
                noise = _randn(tuple(x_t.shape), generator, x_t.device, x_t.dtype)
            if row[_S] != 0.0:
                x_prev = x_prev.add_(noise * s)
        return x_prev, x0

    def step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor, noise: torch.Tensor | None = None,
             num_inference_steps: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """x at the next (smaller) timestep from x_t and the model output at timestep t.

        The chain is the one last chosen by `timesteps()` (or `num_inference_steps`). `noise` is the
        N(0, I) draw for the stochastic part (DDPM when t > 0, DDIM when eta > 0); drawn from
        `generator` when not given.
        """
        table = self.table(num_inference_steps or self._active_steps)
        try:
            index = table.timesteps.index(int(t))
        except ValueError:
            raise ValueError(f'timestep {int(t)} is not in the {len(table.timesteps)}-step chain '
                             f'{list(table.timesteps)}') from None
        return self.step_by_index(model_output, index, x_t, noise, len(table.timesteps), generator)[0]

    # ---- sampling loop ---------------------------------------------------------------------------
    def sample(self, model_fn: ModelFn, shape: tuple[int, ...], cond: Any,
               generator: torch.Generator | None = None, num_inference_steps: int | None = None,
               noise: torch.Tensor | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, return_intermediates: bool = False,
               callback: StepCallback | None = None) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Denoise from N(0, I) (or the given initial `noise`) to a sample of `shape`.

        model_fn(x_t, t_batch (B,) long, cond) returns the model output. Random draws happen in the
        same order as a diffusers loop (initial noise, then one per stochastic step), so with the same
        generator seed both give the same trajectory. `callback(index, t, x_prev, x0_pred)` runs after
        every step; `return_intermediates` also returns [x_T, x after step 1, ...] for visualisation.
        """
        if device is None:
            if noise is not None:
                device = noise.device
            else:
                device = cond.device if isinstance(cond, torch.Tensor) else 'cpu'
        device = torch.device(device)
        table = self.table(num_inference_steps)
        n = len(table.timesteps)
        if noise is None:
            x = _randn(tuple(shape), generator, device, dtype)
        else:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f'initial noise has shape {tuple(noise.shape)}, expected {tuple(shape)}')
            x = noise.to(device=device, dtype=dtype)
        intermediates = [x] if return_intermediates else []
        for index, t in enumerate(table.timesteps):
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
            x, x0 = self.step_by_index(model_fn(x, t_batch, cond), index, x, None, n, generator)
            if return_intermediates:
                intermediates.append(x)
            if callback is not None:
                callback(index, t, x, x0)
        return (x, intermediates) if return_intermediates else x


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
           dtype: torch.dtype) -> torch.Tensor:
    """N(0, I) drawn on the generator's device and moved, as diffusers' randn_tensor does."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


class DDPMSampler(_Sampler):
    """Ancestral DDPM sampling with the posterior variance ('fixed_small') or beta_t ('fixed_large')."""

    def __init__(self, config: SamplerSettings | None = None) -> None:
        config = config or SamplerSettings(kind='ddpm', num_inference_steps=100)
        if config.variance_type not in ('fixed_small', 'fixed_large'):
            raise ValueError(f"variance_type must be 'fixed_small' or 'fixed_large', got {config.variance_type!r}")
        super().__init__(config)

    def _build_table(self, n: int) -> StepTable:
        # float32 scalar arithmetic in diffusers' order on purpose: 1 - a_t / a_prev cancels badly in
        # float32 (beta ~1e-4), and matching diffusers to 1e-5 means making the same rounding.
        ac = self.alphas_cumprod
        one = torch.tensor(1.0)
        steps = self._chain_timesteps(n)
        rows, draws = [], []
        for i, t in enumerate(steps):
            prev_t = steps[i + 1] if i + 1 < n else -1
            a_t = ac[t]
            a_prev = ac[prev_t] if prev_t >= 0 else one
            beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
            alpha_t = a_t / a_prev
            beta_t = 1 - alpha_t
            p, q = self._x0_coefficients(a_t)
            b = float((a_prev ** 0.5 * beta_t) / beta_prod_t)         # coefficient of x0 (Ho et al. eq. 7)
            a = float(alpha_t ** 0.5 * beta_prod_prev / beta_prod_t)  # coefficient of x_t
            if self.config.variance_type == 'fixed_small':
                variance = torch.clamp(beta_prod_prev / beta_prod_t * beta_t, min=1e-20)
            else:
                variance = beta_t
            stochastic = t > 0  # diffusers draws and adds noise for every t > 0
            rows.append((p, q, a, b, 0.0, float(variance ** 0.5) if stochastic else 0.0))
            draws.append(stochastic)
        return StepTable(tuple(steps), np.asarray(rows, dtype=np.float64), tuple(draws))


class DDIMSampler(_Sampler):
    """DDIM (Song et al.) with any number of steps; eta = 0 deterministic, eta = 1 DDPM-like noise."""

    spacings = ('leading', 'trailing')

    def __init__(self, config: SamplerSettings | None = None) -> None:
        config = config or SamplerSettings(kind='ddim')
        if config.eta < 0:
            raise ValueError(f'eta must be >= 0, got {config.eta}')
        super().__init__(config)

    def _build_table(self, n: int) -> StepTable:
        # float32 scalar arithmetic in diffusers' order, see DDPMSampler._build_table.
        ac = self.alphas_cumprod
        final = torch.tensor(1.0) if self.config.set_alpha_to_one else ac[0]
        ratio = self.num_train_timesteps // n
        steps = self._chain_timesteps(n)
        eta = float(self.config.eta)
        rows = []
        for t in steps:
            prev_t = t - ratio
            a_t = ac[t]
            a_prev = ac[prev_t] if prev_t >= 0 else final
            beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
            variance = (beta_prod_prev / beta_prod_t) * (1 - a_t / a_prev)
            std = eta * variance ** 0.5
            direction = (1 - a_prev - std ** 2) ** 0.5  # coefficient of the predicted epsilon
            p, q = self._x0_coefficients(a_t)
            if self.config.prediction_type == 'epsilon':
                a, d = 0.0, float(direction)
            else:  # epsilon is recovered from the UNclipped model output, as diffusers does
                a = float(direction / beta_prod_t ** 0.5)
                d = float(-direction * a_t ** 0.5 / beta_prod_t ** 0.5)
            rows.append((p, q, a, float(a_prev ** 0.5), d, float(std)))
        return StepTable(tuple(steps), np.asarray(rows, dtype=np.float64), tuple([eta > 0] * n))


def build_sampler(settings: SamplerSettings) -> DDPMSampler | DDIMSampler:
    """The sampler `settings.kind` names ('ddpm' or 'ddim'), with those settings."""
    if settings.kind == 'ddpm':
        return DDPMSampler(settings)
    if settings.kind == 'ddim':
        return DDIMSampler(settings)
    raise ValueError(f"sampler kind must be 'ddpm' or 'ddim', got {settings.kind!r}")
