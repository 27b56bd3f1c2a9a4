"""Observation windows a policy saw in closed loop, kept for on-policy distillation.

`dp-ros eval --save-windows FILE` writes them; `dp-ros distill` with `distill.rollout_windows: [FILE]`
has the teacher label them. A student trained only on the demonstrations' windows drifts to states the
demonstrations never show and is wrong there (pick_place, 1-step student: error to the teacher's chunk
0.0007 on held-out demonstration windows, 0.0065 on the windows of its own episodes); labelling the
states it visits is DAgger (Ross et al. 2011) with the teacher as the expert.

Format: safetensors, one stacked array per observation key (`camera`: (N, n_obs, H, W, 3) uint8,
`state`: (N, n_obs, D) float32), the same layout `predict_action_chunk` takes, never a pickle.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from diffusion_policy_ros.errors import UserError


class WindowsError(UserError, ValueError):
    """A windows file that cannot be read or does not fit the policy."""


def save_windows(path: str | Path, windows: Sequence[Mapping[str, np.ndarray]], meta: Mapping[str, str]) -> Path:
    from safetensors.numpy import save_file
    if not windows:
        raise WindowsError(f'{path}: no observation windows to save')
    keys = sorted(windows[0])
    stacked = {key: np.ascontiguousarray(np.stack([np.asarray(w[key]) for w in windows])) for key in keys}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(stacked, str(path), metadata={str(k): str(v) for k, v in meta.items()})
    return path


def load_windows(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The stacked windows and the file's metadata."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if not path.is_file():
        raise WindowsError(f'{path}: no such windows file (write one with dp-ros eval --save-windows)')
    try:
        with safe_open(str(path), framework='np') as stored:
            arrays = {key: stored.get_tensor(key) for key in stored.keys()}
            meta = dict(stored.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise WindowsError(f'{path}: not a readable windows file: {exc}') from None
    lengths = {key: len(value) for key, value in arrays.items()}
    if not arrays or len(set(lengths.values())) != 1:
        raise WindowsError(f'{path}: expected arrays with one window count, got {lengths}')
    return arrays, meta
