"""Episode dataset (zarr, Chi et al.'s replay-buffer layout) -> training windows.

The whole dataset is loaded into memory once: demonstration sets for one task are small (a
hundred 96x96 episodes is a few hundred MB), and numpy fancy indexing from RAM keeps the loader
far ahead of the model, where lazy zarr reads would decompress a chunk per window. Train and
validation `SequenceDataset`s can share one `EpisodeData` without copying it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset
from ..errors import UserError

LOW_DIM_KEYS = ('state', 'action')


class DatasetError(UserError, ValueError):
    """A dataset that is missing arrays or has inconsistent lengths; the message names the key/file."""


@dataclass
class EpisodeData:
    """All arrays of a dataset in memory, frames of every episode back to back."""
    arrays: dict[str, np.ndarray]  # key -> (N, ...)
    episode_ends: np.ndarray  # (E,) int64, exclusive end index of each episode
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = '<arrays>'

    def __post_init__(self) -> None:
        self.episode_ends = np.asarray(self.episode_ends, dtype=np.int64)
        n_frames = int(self.episode_ends[-1]) if self.episode_ends.size else 0
        if self.episode_ends.size and (np.any(np.diff(self.episode_ends) < 0) or self.episode_ends[0] < 0):
            raise DatasetError(f'{self.source}: meta/episode_ends must be non-decreasing, got {self.episode_ends}')
        for key, array in self.arrays.items():
            if len(array) != n_frames:
                raise DatasetError(f'{self.source}: data/{key} has {len(array)} frames, '
                                   f'meta/episode_ends says {n_frames}')

    @property
    def n_episodes(self) -> int:
        return int(self.episode_ends.size)

    def episode_bounds(self, episode: int) -> tuple[int, int]:
        start = int(self.episode_ends[episode - 1]) if episode > 0 else 0
        return start, int(self.episode_ends[episode])

    def episode_frames(self, episodes: Sequence[int]) -> np.ndarray:
        """Frame indices of the given episodes, concatenated."""
        ranges = [np.arange(*self.episode_bounds(int(e))) for e in episodes]
        return np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)


def load_episode_dataset(path: str | Path) -> EpisodeData:
    """Read a zarr dataset written by `dp-ros dataset` (or Chi et al.'s ReplayBuffer) into memory."""
    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode='r')
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a missing/odd store
        raise DatasetError(f'{path}: not a zarr dataset ({type(exc).__name__}: {exc})') from exc
    for required in ('data', 'meta/episode_ends'):
        if required not in root:
            raise DatasetError(f'{path}: missing {required!r} (expected Chi et al. replay-buffer layout)')
    data = root['data']
    arrays = {key: data[key][:] for key in sorted(data.array_keys())}
    return EpisodeData(arrays=arrays, episode_ends=root['meta/episode_ends'][:], attrs=dict(root.attrs),
                       source=str(path))


def window_indices(episode_ends: np.ndarray, episodes: Sequence[int], horizon: int, pad_before: int,
                   pad_after: int) -> np.ndarray:
    """(n_windows, horizon) frame indices of every window, edge-padded as Chi et al.'s SequenceSampler.

    A window may start up to ``pad_before`` frames before its episode and end up to ``pad_after``
    frames after it; the out-of-episode positions repeat the first/last frame, which is exactly
    clipping the index to the episode. Precomputing all indices makes `__getitem__` one gather.
    """
    windows = []
    for episode in episodes:
        start = int(episode_ends[episode - 1]) if episode > 0 else 0
        length = int(episode_ends[episode]) - start
        first, last = -pad_before, length - horizon + pad_after
        if length == 0 or last < first:
            continue
        offsets = np.arange(first, last + 1)[:, None] + np.arange(horizon)[None, :]
        windows.append(start + np.clip(offsets, 0, length - 1))
    return np.concatenate(windows).astype(np.int64) if windows else np.zeros((0, horizon), dtype=np.int64)


class SequenceDataset(Dataset):
    """Windows of ``n_obs_steps`` observations and ``horizon`` actions, as the policy trains on.

    Item: ``{camera_key: (n_obs, 3, h, w) uint8, 'state': (n_obs, J) float32, 'action': (horizon, J)
    float32}``. Observations are the first ``n_obs_steps`` frames of the window, so the action
    chunk starts at the oldest observation (Chi et al.). Padding: ``pad_before = n_obs_steps - 1``,
    ``pad_after = n_action_steps - 1`` (``n_action_steps`` defaults to ``horizon - n_obs_steps + 1``,
    every action after the newest observation).
    """

    def __init__(self, path_or_arrays: str | Path | EpisodeData, n_obs_steps: int, horizon: int,
                 camera_keys: Sequence[str] | None = None, episode_indices: Sequence[int] | None = None,
                 *, n_action_steps: int | None = None) -> None:
        data = path_or_arrays if isinstance(path_or_arrays, EpisodeData) else load_episode_dataset(path_or_arrays)
        if n_action_steps is None:
            n_action_steps = horizon - n_obs_steps + 1
        if not 1 <= n_obs_steps <= horizon or not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ValueError(f'need 1 <= n_obs_steps ({n_obs_steps}) <= horizon ({horizon}) and '
                             f'1 <= n_action_steps ({n_action_steps}) <= horizon - n_obs_steps + 1')
        keys = list(camera_keys if camera_keys is not None else data.attrs.get('camera_keys', []))
        for key in [*keys, *LOW_DIM_KEYS]:
            if key not in data.arrays:
                raise DatasetError(f'{data.source}: no data/{key} (has {sorted(data.arrays)})')
        episodes = list(range(data.n_episodes)) if episode_indices is None else [int(e) for e in episode_indices]
        if bad := [e for e in episodes if not 0 <= e < data.n_episodes]:
            raise DatasetError(f'{data.source}: episode indices {bad} out of range (0..{data.n_episodes - 1})')
        self.data, self.camera_keys, self.episodes = data, keys, episodes
        self.n_obs_steps, self.horizon, self.n_action_steps = n_obs_steps, horizon, n_action_steps
        self.indices = window_indices(data.episode_ends, episodes, horizon, n_obs_steps - 1, n_action_steps - 1)
        # channels-first once, here, instead of a transpose per sample in the loader workers
        self._images = {key: torch.from_numpy(np.ascontiguousarray(data.arrays[key].transpose(0, 3, 1, 2)))
                        for key in keys}
        self._state = torch.from_numpy(data.arrays['state'].astype(np.float32, copy=False))
        self._action = torch.from_numpy(data.arrays['action'].astype(np.float32, copy=False))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frames = torch.from_numpy(self.indices[index])
        obs_frames = frames[: self.n_obs_steps]
        item = {key: images[obs_frames] for key, images in self._images.items()}
        item['state'] = self._state[obs_frames]
        item['action'] = self._action[frames]
        return item


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) episode indices, sorted; whole episodes only, so validation frames are never
    near-duplicates of training frames. Keeps at least one training episode, and one validation
    episode whenever ``val_ratio > 0`` and there are two or more episodes."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f'val_ratio must be in [0, 1), got {val_ratio}')
    n_val = 0
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    val = np.sort(np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)).astype(np.int64)
    train = np.setdiff1d(np.arange(n_episodes, dtype=np.int64), val)
    return train, val


def _as_episode_data(data: EpisodeData | Mapping[str, np.ndarray], episode_ends: np.ndarray | None) -> EpisodeData:
    if isinstance(data, EpisodeData):
        return data
    if episode_ends is None:
        raise ValueError('pass episode_ends together with plain arrays')
    return EpisodeData(arrays={k: np.asarray(v) for k, v in data.items()}, episode_ends=episode_ends)


def training_frames(data: EpisodeData | Mapping[str, np.ndarray], train_episodes: Sequence[int],
                    keys: Sequence[str] = LOW_DIM_KEYS,
                    episode_ends: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The frames of ``keys`` in the training episodes only, e.g. for `core.normalizer.Normalizer.fit`."""
    data = _as_episode_data(data, episode_ends)
    frames = data.episode_frames(train_episodes)
    if frames.size == 0:
        raise DatasetError(f'{data.source}: no frames in training episodes {list(train_episodes)}')
    missing = [key for key in keys if key not in data.arrays]
    if missing:
        raise DatasetError(f'{data.source}: no data/{missing[0]} to fit the normaliser on')
    return {key: data.arrays[key][frames] for key in keys}


def fit_normalizer_stats(data: EpisodeData | Mapping[str, np.ndarray], train_episodes: Sequence[int],
                         keys: Sequence[str] = LOW_DIM_KEYS,
                         episode_ends: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per-dimension ``{'min', 'max'}`` (float32) of ``keys`` over the training episodes only, so the
    validation loss stays honest. Images are not fitted: they are scaled by the fixed uint8 range.
    ``data`` is an `EpisodeData`, or a mapping of arrays plus ``episode_ends``.
    """
    frames = training_frames(data, train_episodes, keys, episode_ends)
    return {key: {'min': values.min(axis=0).astype(np.float32), 'max': values.max(axis=0).astype(np.float32)}
            for key, values in frames.items()}
