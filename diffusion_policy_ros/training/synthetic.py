"""Small synthetic episode datasets in the `dp-ros dataset` zarr layout, for tests and benchmarks.

The data are learnable on purpose: each episode moves the joints along a smooth curve from a random
start, the action is the next state, and the camera shows a bright square whose position follows
the first two joints, so a working training loop visibly drives the loss down.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import zarr


def synthetic_episodes(n_episodes: int, episode_length: int, n_joints: int, camera_keys: Sequence[str],
                       image_size: tuple[int, int], seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(arrays, episode_ends) with data/<camera> (N,H,W,3) uint8, state/action (N,J) float32, timestamp."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    states, actions, stamps, images = [], [], [], {k: [] for k in camera_keys}
    t = np.arange(episode_length + 1) / 10.0
    for _ in range(n_episodes):
        start = rng.uniform(-1.0, 1.0, n_joints)
        rate = rng.uniform(0.2, 0.6, n_joints) * rng.choice([-1.0, 1.0], n_joints)
        path = (start[None, :] + np.sin(rate[None, :] * t[:, None] * 3.0)).astype(np.float32)
        states.append(path[:-1])
        actions.append(path[1:])
        stamps.append(t[:-1])
        for key in camera_keys:
            frames = np.zeros((episode_length, height, width, 3), dtype=np.uint8)
            rows = ((np.tanh(path[:-1, 0]) + 1) / 2 * (height - 4)).astype(int)
            cols = ((np.tanh(path[:-1, 1 % n_joints]) + 1) / 2 * (width - 4)).astype(int)
            for i, (r, c) in enumerate(zip(rows, cols)):
                frames[i, r:r + 4, c:c + 4] = 255
            images[key].append(frames)
    arrays = {'state': np.concatenate(states), 'action': np.concatenate(actions),
              'timestamp': np.concatenate(stamps).astype(np.float64)}
    arrays.update({k: np.concatenate(v) for k, v in images.items()})
    episode_ends = np.cumsum([episode_length] * n_episodes).astype(np.int64)
    return arrays, episode_ends


def write_synthetic_dataset(path: str | Path, *, n_episodes: int = 4, episode_length: int = 30,
                            n_joints: int = 8, camera_keys: Sequence[str] = ('camera',),
                            image_size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """Write a zarr v2 dataset with the same layout and attrs as `dp-ros dataset` produces."""
    path = Path(path)
    arrays, episode_ends = synthetic_episodes(n_episodes, episode_length, n_joints, camera_keys, image_size, seed)
    root = zarr.open_group(str(path), mode='w', zarr_format=2)
    data = root.require_group('data')
    for key, values in arrays.items():
        chunk = (min(len(values), 256), *values.shape[1:])
        data.create_array(key, shape=values.shape, dtype=values.dtype, chunks=chunk)[:] = values
    root.require_group('meta').create_array('episode_ends', shape=episode_ends.shape, dtype='int64',
                                            chunks=episode_ends.shape)[:] = episode_ends
    joint_names = [f'panda_joint{i + 1}' for i in range(n_joints)]
    root.attrs.update({'joint_names': joint_names, 'camera_keys': list(camera_keys), 'control_rate_hz': 10.0,
                       'image_size': list(image_size), 'source_bags': [], 'skipped': []})
    return path
