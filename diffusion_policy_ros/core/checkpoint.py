"""Checkpoints: `model.safetensors` (weights) + `config.json` (everything needed to rebuild and run).

Never a pickle: torch.load of an untrusted file runs code, and a checkpoint is something people copy
between robots. config.json holds the format version, the policy config (network and sampler
settings), observation and action specs (camera keys, image size, joint names), the normaliser
statistics and free-form provenance (dataset, commit, training steps...).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ActionSpec, ObservationSpec, PolicyConfig
from .normalizer import Normalizer
from .policy import Policy, build_policy
from ..errors import UserError

FORMAT_VERSION = 1
WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
REQUIRED_KEYS = ('format_version', 'policy_config', 'observation_spec', 'action_spec', 'normalizer')


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be used; the message names the file and what is wrong."""


# Storage precisions a checkpoint may hold its floating-point weights in; they load back as float32.
STORAGE_DTYPES: dict[str, torch.dtype] = {'float32': torch.float32, 'float16': torch.float16,
                                          'bfloat16': torch.bfloat16}


def save_checkpoint(policy: Policy, directory: str | os.PathLike, provenance: dict[str, Any] | None = None,
                    storage_dtype: str = 'float32') -> Path:
    """Write `directory`/model.safetensors and `directory`/config.json; returns the directory.

    `storage_dtype` 'float16' halves the file (for checkpoints kept in git); the weights load back as
    float32. Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f'storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}')
    dtype = STORAGE_DTYPES[storage_dtype]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        'format_version': FORMAT_VERSION,
        'policy_config': policy.cfg.to_dict(),
        'observation_spec': policy.obs_spec.to_dict(),
        'action_spec': policy.action_spec.to_dict(),
        'normalizer': policy.normalizer.to_dict(),
        'provenance': dict(provenance or {}),
    }
    try:
        config_text = json.dumps(config, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'checkpoint provenance must be JSON-serialisable (str, numbers, lists, dicts): '
                         f'{exc}') from None
    tensors = {name: tensor.detach().to('cpu', dtype=dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
               for name, tensor in policy.state_dict().items()}
    _atomic_write(directory / WEIGHTS_FILE, lambda path: save_file(tensors, str(path), metadata={'format': 'pt'}))
    _atomic_write(directory / CONFIG_FILE, lambda path: Path(path).write_text(config_text + '\n'))
    return directory


def _atomic_write(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# A training run folder keeps its newest checkpoint here (training/train.py writes it).
RUN_LATEST = Path('checkpoints') / 'latest'


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(config.json, model.safetensors) for a checkpoint directory, either of its files, or a training
    run folder (its checkpoints/latest, as `train --resume` takes it)."""
    path = Path(path)
    if path.is_dir() and not (path / CONFIG_FILE).exists() and (path / RUN_LATEST).is_dir():
        directory = path / RUN_LATEST
    elif path.is_dir():
        directory = path
    elif path.name in (WEIGHTS_FILE, CONFIG_FILE):
        directory = path.parent
    elif path.exists():
        raise CheckpointError(f'{path}: not a checkpoint; give the directory, {CONFIG_FILE} or {WEIGHTS_FILE}')
    else:
        raise CheckpointError(f'{path}: no such checkpoint directory or file')
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for file in (config_path, weights_path):
        if not file.is_file():
            raise CheckpointError(f'{file}: missing file (a checkpoint is a directory with {CONFIG_FILE} and '
                                  f'{WEIGHTS_FILE}, or a run folder with {RUN_LATEST}/)')
    return config_path, weights_path


def fit_camera_topics(camera_topics: Sequence[str], camera_keys: Sequence[str],
                      checkpoint: Any) -> tuple[list[str], str]:
    """The camera topics that feed a checkpoint's cameras (in order), and a note when some are dropped:
    a camera-less checkpoint ignores the topics; any other count mismatch is a ValueError."""
    topics = [t for t in camera_topics if t]  # [''] (old params files' "none") is empty
    if topics and not camera_keys:
        return [], f'checkpoint {checkpoint} observes no camera: camera_topics {topics} unused'
    if len(topics) != len(camera_keys):
        raise ValueError(f'camera_topics {topics} has {len(topics)} topic(s) but the checkpoint {checkpoint} '
                         f'expects {len(camera_keys)} camera(s) {list(camera_keys)}')
    return topics, ''


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The validated config.json of a checkpoint (without loading any weights)."""
    config_path, _ = resolve_checkpoint(path)
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f'{config_path}: bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}') from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f'{config_path}: cannot read: {exc}') from None
    if not isinstance(config, dict):
        raise CheckpointError(f'{config_path}: expected a JSON object at the top level')
    if 'format_version' in config and config['format_version'] != FORMAT_VERSION:
        raise CheckpointError(f'{config_path}: unsupported format_version {config["format_version"]!r} '
                              f'(this code reads version {FORMAT_VERSION})')
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise CheckpointError(f'{config_path}: missing key(s) {", ".join(map(repr, missing))}')
    return config


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = 'cpu') -> Policy:
    """Rebuild the policy from a checkpoint (directory or either file), weights loaded, in eval mode."""
    config_path, weights_path = resolve_checkpoint(path)
    config = read_checkpoint_config(config_path)
    try:
        policy_cfg = PolicyConfig.from_dict(config['policy_config'])
        obs_spec = ObservationSpec.from_dict(config['observation_spec'])
        action_spec = ActionSpec.from_dict(config['action_spec'])
        normalizer = Normalizer.from_dict(config['normalizer'])
        policy = build_policy(policy_cfg, obs_spec, action_spec, normalizer, device='cpu')
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f'{config_path}: invalid configuration: {exc}') from None
    expected = policy.state_dict()
    tensors = _read_weights(weights_path)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f'{weights_path}: weights do not match {config_path.name}: '
                              f'missing tensor(s) {_short_list(missing)}, '
                              f'unexpected tensor(s) {_short_list(unexpected)}')
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f'{weights_path}: tensor {name!r} has shape {tuple(tensor.shape)} but '
                                  f'{config_path.name} expects {tuple(expected[name].shape)}')
        if tensor.dtype != expected[name].dtype and not _is_storage_precision(tensor, expected[name]):
            raise CheckpointError(f'{weights_path}: tensor {name!r} has dtype {tensor.dtype}, '
                                  f'expected {expected[name].dtype}')
    policy.load_state_dict({name: tensor.to(expected[name].dtype) for name, tensor in tensors.items()}, strict=True)
    return policy.to(device).eval()


def _is_storage_precision(stored: torch.Tensor, expected: torch.Tensor) -> bool:
    """A float tensor saved at a lower storage precision (see `save_checkpoint`) is fine to upcast."""
    return expected.is_floating_point() and stored.dtype in STORAGE_DTYPES.values()


def _read_weights(weights_path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(weights_path), framework='pt', device='cpu') as file:
            return {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        size = weights_path.stat().st_size if weights_path.exists() else 0
        raise CheckpointError(f'{weights_path}: truncated or corrupt safetensors file ({size} bytes): {exc}') from None


def _short_list(names: list[str], limit: int = 5) -> str:
    if not names:
        return '(none)'
    shown = ', '.join(map(repr, names[:limit]))
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')
