"""The policies: observation history in, action chunk out, in robot units.

Timing convention (Chi et al.): an observation window holds the `n_obs_steps` newest frames,
oldest first. The predicted chunk has `horizon` rows at the control period; row `n_obs_steps - 1`
is the action for the time of the NEWEST observation, rows before it lie in the past (they are
predicted for temporal consistency and normally not executed), and the executor runs rows
`n_obs_steps - 1 ... n_obs_steps - 2 + n_action_steps` (`policy.action_slice`).

Batches use the training layout {camera_key: (B, T, 3, H, W) uint8 or float in [0, 1],
'state': (B, T, D), 'action': (B, horizon, A)} in robot units; the policy normalises internally,
so the normaliser travels with the weights in the checkpoint.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ActionSpec, ObservationSpec, PolicyConfig
from .denoisers import build_denoiser
from .encoders import ObservationEncoder
from .normalizer import Normalizer
from .samplers import DDIMSampler, DDPMSampler, build_sampler


class _ObservationPolicy(nn.Module):
    """Shared parts: specs, normaliser, observation encoder and input checking."""

    def __init__(self, cfg: PolicyConfig, obs_spec: ObservationSpec, action_spec: ActionSpec,
                 normalizer: Normalizer) -> None:
        super().__init__()
        _check_normalizer(normalizer, obs_spec, action_spec)
        self.cfg, self.obs_spec, self.action_spec, self.normalizer = cfg, obs_spec, action_spec, normalizer
        self.obs_encoder = ObservationEncoder(obs_spec, cfg.encoder)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def action_slice(self) -> slice:
        """Rows of a chunk to execute: from the newest observation's time, `n_action_steps` long."""
        start = self.cfg.n_obs_steps - 1
        return slice(start, start + self.cfg.n_action_steps)

    def encode_observations(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_obs_steps, F) features of the first `n_obs_steps` frames of a robot-unit batch."""
        n_obs = self.cfg.n_obs_steps
        normalized = {}
        for key in self.obs_spec.camera_keys + (['state'] if self.obs_spec.state_dim else []):
            if key not in obs:
                raise KeyError(f'observation batch is missing {key!r} (has {sorted(obs)})')
            value = torch.as_tensor(obs[key], device=self.device)
            if value.dim() < 3 or value.shape[1] < n_obs:
                raise ValueError(f'{key!r} must be (B, T >= n_obs_steps={n_obs}, ...), got {tuple(value.shape)}')
            normalized[key] = self.normalizer.normalize(key, value[:, :n_obs])
        return self.obs_encoder(normalized)

    def _window_to_batch(self, obs_window: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One observation window (numpy, images HWC uint8 as the codec gives them) -> a batch of 1."""
        n_obs, (h, w) = self.cfg.n_obs_steps, self.obs_spec.image_shape
        batch = {}
        for key in self.obs_spec.camera_keys:
            if key not in obs_window:
                raise KeyError(f'observation window is missing camera {key!r} (has {sorted(obs_window)})')
            images = np.asarray(obs_window[key])
            if images.shape != (n_obs, h, w, 3):
                raise ValueError(f'camera {key!r} window must be ({n_obs}, {h}, {w}, 3) HWC, got {images.shape}')
            batch[key] = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)[None]
        if self.obs_spec.state_dim:
            if 'state' not in obs_window:
                raise KeyError(f"observation window is missing 'state' (has {sorted(obs_window)})")
            state = np.asarray(obs_window['state'], dtype=np.float32)
            if state.shape != (n_obs, self.obs_spec.state_dim):
                raise ValueError(f"'state' window must be ({n_obs}, {self.obs_spec.state_dim}), got {state.shape}")
            if not np.isfinite(state).all():
                raise ValueError("'state' window has non-finite values")
            batch['state'] = torch.from_numpy(state).to(self.device)[None]
        return batch

    def _normalized_actions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if 'action' not in batch:
            raise KeyError(f"training batch is missing 'action' (has {sorted(batch)})")
        actions = torch.as_tensor(batch['action'], device=self.device, dtype=torch.float32)
        expected = (self.cfg.horizon, self.action_spec.dim)
        if actions.dim() != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(f"'action' must be (B, {expected[0]}, {expected[1]}), got {tuple(actions.shape)}")
        return self.normalizer.normalize('action', actions)

    def predict_action(self, obs_batch: dict[str, torch.Tensor], num_inference_steps: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def predict_action_chunk(self, obs_window: dict[str, Any], num_inference_steps: int | None = None,
                             generator: torch.Generator | None = None) -> np.ndarray:
        """(horizon, action_dim) float32 chunk in robot units for one observation window.

        obs_window = {camera_key: uint8 (n_obs, H, W, 3), 'state': (n_obs, D)}, oldest frame first.
        """
        chunk = self.predict_action(self._window_to_batch(obs_window), num_inference_steps, generator)
        return chunk[0].detach().cpu().numpy().astype(np.float32)


class DiffusionPolicy(_ObservationPolicy):
    """Denoises an action chunk conditioned on the encoded observation history (Chi et al. 2023)."""

    def __init__(self, cfg: PolicyConfig, obs_spec: ObservationSpec, action_spec: ActionSpec,
                 normalizer: Normalizer) -> None:
        super().__init__(cfg, obs_spec, action_spec, normalizer)
        self.denoiser = build_denoiser(cfg, action_spec.dim, self.obs_encoder.output_dim)
        self.sampler: DDIMSampler | DDPMSampler = build_sampler(cfg.sampler)
        # Learned "no observation" condition for classifier-free guidance.
        self.null_cond = (nn.Parameter(torch.zeros(cfg.n_obs_steps, self.obs_encoder.output_dim))
                          if cfg.cfg_dropout > 0 else None)
        self.guidance_scale = cfg.guidance_scale

    def _condition(self, features: torch.Tensor) -> torch.Tensor:
        """Per-step features in the layout the denoiser wants: flat for the U-Net, a sequence otherwise."""
        return features.reshape(features.shape[0], -1) if self.denoiser.cond_layout == 'flat' else features

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising loss (MSE to the noise or the clean chunk) of one robot-unit batch."""
        features = self.encode_observations(batch)
        actions = self._normalized_actions(batch)
        if actions.shape[0] != features.shape[0]:
            raise ValueError(f"'action' batch size {actions.shape[0]} != observation batch size {features.shape[0]}")
        batch_size, device = actions.shape[0], actions.device
        if self.null_cond is not None and self.training:
            drop = _rand((batch_size,), generator, device) < self.cfg.cfg_dropout
            features = torch.where(drop[:, None, None], self.null_cond.to(features.dtype), features)
        noise = _randn(tuple(actions.shape), generator, device)
        t = self.sampler.sample_train_timesteps(batch_size, device, generator)
        prediction = self.denoiser(self.sampler.add_noise(actions, noise, t), t, self._condition(features))
        return F.mse_loss(prediction, self.sampler.training_target(actions, noise))

    def predict_action(self, obs_batch: dict[str, torch.Tensor], num_inference_steps: int | None = None,
                       generator: torch.Generator | None = None, guidance_scale: float | None = None,
                       return_intermediates: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, horizon, action_dim) chunks in robot units, sampled in eval mode under inference_mode.

        `return_intermediates` also gives the (normalised) denoising trajectory for visualisation.
        """
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        if scale != 1.0 and self.null_cond is None:
            raise ValueError('guidance_scale != 1 needs a policy trained with cfg_dropout > 0 (no null condition)')
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                cond = self._condition(self.encode_observations(obs_batch))
                if scale != 1.0:
                    null = self._condition(self.null_cond.to(cond.dtype).expand(cond.shape[0], -1, -1))
                    both = torch.cat([cond, null])

                    def model_fn(x: torch.Tensor, t: torch.Tensor, _: Any) -> torch.Tensor:
                        conditional, unconditional = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
                        return unconditional + scale * (conditional - unconditional)
                else:
                    def model_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
                        return self.denoiser(x, t, c)
                shape = (cond.shape[0], self.cfg.horizon, self.action_spec.dim)
                result = self.sampler.sample(model_fn, shape, cond, generator=generator,
                                             num_inference_steps=num_inference_steps, device=cond.device,
                                             return_intermediates=return_intermediates)
                if return_intermediates:
                    sample, intermediates = result
                    return self.normalizer.unnormalize('action', sample), intermediates
                return self.normalizer.unnormalize('action', result)
        finally:
            self.train(was_training)


class BCPolicy(_ObservationPolicy):
    """Same encoder, an MLP regressing the whole chunk (MSE): the unimodal baseline."""

    def __init__(self, cfg: PolicyConfig, obs_spec: ObservationSpec, action_spec: ActionSpec,
                 normalizer: Normalizer) -> None:
        super().__init__(cfg, obs_spec, action_spec, normalizer)
        dims = [cfg.n_obs_steps * self.obs_encoder.output_dim, *cfg.bc_hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.Mish()]
        layers.append(nn.Linear(dims[-1], cfg.horizon * action_spec.dim))
        self.head = nn.Sequential(*layers)

    def _regress(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        features = self.encode_observations(obs)
        return self.head(features.reshape(features.shape[0], -1)).reshape(-1, self.cfg.horizon, self.action_spec.dim)

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        actions = self._normalized_actions(batch)
        return F.mse_loss(self._regress(batch), actions)

    def predict_action(self, obs_batch: dict[str, torch.Tensor], num_inference_steps: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, horizon, action_dim) in robot units; the sampling arguments are accepted and ignored."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return self.normalizer.unnormalize('action', self._regress(obs_batch))
        finally:
            self.train(was_training)


Policy = DiffusionPolicy | BCPolicy


def build_policy(policy_cfg: PolicyConfig, obs_spec: ObservationSpec, action_spec: ActionSpec,
                 normalizer: Normalizer, device: torch.device | str = 'cpu') -> Policy:
    """The policy named by `policy_cfg.policy` ('diffusion' or 'bc') on `device`."""
    cls = {'diffusion': DiffusionPolicy, 'bc': BCPolicy}.get(policy_cfg.policy)
    if cls is None:
        raise ValueError(f"policy must be 'diffusion' or 'bc', got {policy_cfg.policy!r}")
    return cls(policy_cfg, obs_spec, action_spec, normalizer).to(device)


def _check_normalizer(normalizer: Normalizer, obs_spec: ObservationSpec, action_spec: ActionSpec) -> None:
    """The normaliser must know every key the specs use, with matching dimensions."""
    if 'action' not in normalizer:
        raise ValueError("normaliser has no 'action' statistics")
    if normalizer.kind('action') != 'limits' or normalizer.dim('action') != action_spec.dim:
        raise ValueError(f"normaliser 'action' must be {action_spec.dim}-dimensional limits "
                         f'(action_spec.dim), found {normalizer.stats("action")["kind"]} '
                         f'of dim {len(normalizer.stats("action").get("center") or [])}')
    if obs_spec.state_dim:
        if 'state' not in normalizer or normalizer.kind('state') != 'limits':
            raise ValueError("normaliser has no 'state' limits but obs_spec.state_dim > 0")
        if normalizer.dim('state') != obs_spec.state_dim:
            raise ValueError(f"normaliser 'state' has {normalizer.dim('state')} dims, obs_spec.state_dim is "
                             f'{obs_spec.state_dim}')
    for key in obs_spec.camera_keys:
        if key not in normalizer or normalizer.kind(key) != 'image':
            raise ValueError(f'normaliser has no image entry for camera {key!r} (use Normalizer.fit(image_keys=...))')


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device).to(device)
