"""The one place where training meets the core policy API and the data API.

Keeping these calls together means a change of signature in `core` or `data` is fixed here, not
spread through the loop.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from diffusion_policy_ros.core.config import ActionSpec, ObservationSpec, PolicyConfig
from diffusion_policy_ros.core.normalizer import Normalizer
from diffusion_policy_ros.core.policy import build_policy
from diffusion_policy_ros.data.episodes import (
    DatasetError, EpisodeData, SequenceDataset, load_episode_dataset, split_episodes, training_frames)
from diffusion_policy_ros.training.config import TrainConfig
from ..errors import UserError


class DataSetupError(UserError, ValueError):
    """The dataset cannot feed this config (missing camera key, too few episodes...)."""


@dataclass
class TrainingData:
    train: Dataset
    val: Dataset | None
    train_episodes: list[int]
    val_episodes: list[int]
    obs_spec: ObservationSpec
    action_spec: ActionSpec
    normalizer: Normalizer  # fitted on the TRAIN episodes only
    control_rate_hz: float | None = None  # the rate the dataset was resampled at (attrs), None if unknown


def open_dataset(path: Path, cfg: TrainConfig) -> TrainingData:
    """Load the zarr dataset, split it by episode, and fit the normaliser on the training split."""
    try:
        episodes = load_episode_dataset(path)
    except DatasetError as exc:
        raise DataSetupError(str(exc)) from exc
    return split_training_data(episodes, cfg)


def split_training_data(episodes: EpisodeData, cfg: TrainConfig) -> TrainingData:
    source = episodes.source
    if episodes.n_episodes == 0:
        raise DataSetupError(f'{source}: the dataset has no episodes')
    available = list(episodes.attrs.get('camera_keys', []))
    camera_keys = available if cfg.dataset.camera_keys is None else list(cfg.dataset.camera_keys)
    missing = [k for k in camera_keys if k not in episodes.arrays]
    if missing:
        raise DataSetupError(f'{source}: dataset.camera_keys {missing} not in the dataset '
                             f'(it has cameras {available}, arrays {sorted(episodes.arrays)})')
    for key in ('state', 'action'):
        if key not in episodes.arrays:
            raise DataSetupError(f'{source}: no data/{key} (has {sorted(episodes.arrays)})')
    train_idx, val_idx = split_episodes(episodes.n_episodes, cfg.dataset.val_ratio, cfg.dataset.seed)
    p = cfg.policy

    def windows(indices: np.ndarray) -> SequenceDataset:
        return SequenceDataset(episodes, p.n_obs_steps, p.horizon, camera_keys, episode_indices=indices,
                               n_action_steps=p.n_action_steps)

    train = windows(train_idx)
    if len(train) == 0:
        raise DataSetupError(f'{source}: the training episodes {train_idx.tolist()} give no windows of horizon '
                             f'{p.horizon}')
    val = windows(val_idx) if len(val_idx) else None
    state_dim, action_dim = episodes.arrays['state'].shape[1], episodes.arrays['action'].shape[1]
    joint_names = [str(n) for n in episodes.attrs.get('joint_names', [])]
    if joint_names and len(joint_names) != action_dim:
        raise DataSetupError(f'{source}: attrs joint_names has {len(joint_names)} names but data/action has '
                             f'{action_dim} columns')
    if camera_keys:
        image_shape = tuple(int(s) for s in episodes.arrays[camera_keys[0]].shape[1:3])
        for key in camera_keys:
            if episodes.arrays[key].ndim != 4 or episodes.arrays[key].shape[-1] != 3:
                raise DataSetupError(f'{source}: data/{key} must be (N, H, W, 3) uint8, '
                                     f'got {episodes.arrays[key].shape}')
            if tuple(episodes.arrays[key].shape[1:3]) != image_shape:
                raise DataSetupError(f'{source}: cameras differ in size: data/{key} is '
                                     f'{episodes.arrays[key].shape[1:3]}, {camera_keys[0]} is {image_shape}')
    else:
        image_shape = tuple(episodes.attrs.get('image_size') or (96, 96))
    obs_spec = ObservationSpec(camera_keys=camera_keys, image_shape=image_shape, joint_names=joint_names,
                               state_dim=state_dim)
    action_spec = ActionSpec(joint_names=joint_names, dim=action_dim)
    try:
        frames = training_frames(episodes, train_idx)
        normalizer = Normalizer.fit(frames, image_keys=camera_keys)
    except (DatasetError, ValueError) as exc:
        raise DataSetupError(f'{source}: cannot fit the normaliser on the training episodes: {exc}') from exc
    rate = episodes.attrs.get('control_rate_hz')
    return TrainingData(train=train, val=val, train_episodes=train_idx.tolist(), val_episodes=val_idx.tolist(),
                        obs_spec=obs_spec, action_spec=action_spec, normalizer=normalizer,
                        control_rate_hz=float(rate) if rate else None)


def build_policy_for(cfg: TrainConfig, data: TrainingData, device: torch.device) -> nn.Module:
    """The policy of `cfg` for this dataset; its chunk rows are the dataset's control period apart, so
    that period goes into the checkpoint (PolicyConfig.execution) whatever the config says."""
    policy_cfg = cfg.policy
    if data.control_rate_hz is not None:
        policy_cfg = dataclasses.replace(policy_cfg, execution=dataclasses.replace(
            policy_cfg.execution, control_period_s=1.0 / data.control_rate_hz))
    try:
        return build_policy(policy_cfg, data.obs_spec, data.action_spec, data.normalizer, device=device)
    except ValueError as exc:  # e.g. images too small for the encoder, a crop larger than the image
        raise DataSetupError(f'policy config does not fit the dataset ({data.obs_spec}): {exc}') from exc


def load_policy(checkpoint: Path, device: torch.device) -> nn.Module:
    from diffusion_policy_ros.core.checkpoint import load_checkpoint
    return load_checkpoint(checkpoint, device=device)


def save_policy_checkpoint(policy: nn.Module, directory: Path, provenance: dict[str, Any]) -> Path:
    from diffusion_policy_ros.core.checkpoint import save_checkpoint
    return save_checkpoint(policy, directory, provenance)


def policy_config_dict(cfg: PolicyConfig) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, 'to_dict') else dataclasses.asdict(cfg)
