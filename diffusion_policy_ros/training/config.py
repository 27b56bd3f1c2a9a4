"""Training configuration: one YAML file, one dataclass tree, unknown keys rejected by name.

The `policy:` section is the core `PolicyConfig` itself (so a checkpoint's config and the training
config cannot drift apart); the other sections only steer the optimisation.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffusion_policy_ros.config_loader import ConfigError, from_mapping
from diffusion_policy_ros.core.config import PolicyConfig
from ..errors import UserError

AMP_MODES = ('bf16', 'fp16', 'none')
DEVICES = ('auto', 'cpu', 'cuda')
LR_SCHEDULES = ('cosine', 'constant', 'linear')


class TrainConfigError(UserError, ConfigError):
    """A training config that cannot be used; the message names the file and the key."""


@dataclass
class DatasetSection:
    """Which data the policy sees. n_obs_steps and horizon come from the policy section."""

    camera_keys: list[str] | None = None  # None: every camera the dataset has; []: state only
    val_ratio: float = 0.1  # fraction of EPISODES held out (never windows of a training episode)
    seed: int = 0  # seed of the episode split, independent of the training seed


@dataclass
class OptimSection:
    """AdamW, with Chi et al.'s defaults."""

    lr: float = 1.0e-4
    weight_decay: float = 1.0e-6
    betas: tuple[float, float] = (0.95, 0.999)
    eps: float = 1.0e-8


@dataclass
class LRScheduleSection:
    """Linear warm-up then `name` decay (diffusers' schedules, as Chi et al.)."""

    name: str = 'cosine'
    warmup_steps: int = 500


@dataclass
class EMASection:
    """Chi et al.'s EMAModel power schedule: decay = 1 - (1 + step / inv_gamma) ** -power, clamped."""

    enabled: bool = True
    update_after_step: int = 0
    inv_gamma: float = 1.0
    power: float = 0.75
    min_value: float = 0.0
    max_value: float = 0.9999


@dataclass
class TrainSection:
    """Loop settings. `amp` only applies on CUDA; CPU always trains in float32."""

    steps: int = 10000
    batch_size: int = 64
    num_workers: int = 2
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    val_every: int = 500
    val_batches: int = 8  # cap on validation batches so validation stays cheap on big datasets
    checkpoint_every: int = 2000
    log_every: int = 50
    amp: str = 'bf16'
    device: str = 'auto'
    seed: int = 0


@dataclass
class TrainConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    optim: OptimSection = field(default_factory=OptimSection)
    lr_schedule: LRScheduleSection = field(default_factory=LRScheduleSection)
    ema: EMASection = field(default_factory=EMASection)
    train: TrainSection = field(default_factory=TrainSection)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = '<dict>') -> 'TrainConfig':
        if isinstance(data, dict):  # an empty section (`ema:`) is None in YAML: the defaults
            data = {key: {} if value is None else value for key, value in data.items()}
        try:
            cfg = from_mapping(cls, data, f'train config {source}')
        except ConfigError as exc:
            raise TrainConfigError(str(exc)) from None
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe dict that `from_dict` reads back to an equal config."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, 'to_dict') else dataclasses.asdict(value)
        return _jsonable(out)

    def validate(self, source: str = '<config>') -> None:
        def bad(key: str, why: str) -> TrainConfigError:
            return TrainConfigError(f'train config {source}: {key}: {why}')

        t = self.train
        if t.amp not in AMP_MODES:
            raise bad('train.amp', f'{t.amp!r} is not one of {AMP_MODES}')
        if t.device not in DEVICES and not str(t.device).startswith('cuda:'):
            raise bad('train.device', f'{t.device!r} is not one of {DEVICES} (or cuda:N)')
        for key in ('steps', 'batch_size', 'val_every', 'checkpoint_every', 'log_every', 'val_batches'):
            if getattr(t, key) < 1:
                raise bad(f'train.{key}', f'must be >= 1, got {getattr(t, key)}')
        if t.num_workers < 0:
            raise bad('train.num_workers', f'must be >= 0, got {t.num_workers}')
        if t.grad_clip < 0:
            raise bad('train.grad_clip', f'must be >= 0, got {t.grad_clip}')
        if not 0.0 <= self.dataset.val_ratio < 1.0:
            raise bad('dataset.val_ratio', f'must be in [0, 1), got {self.dataset.val_ratio}')
        if self.lr_schedule.name not in LR_SCHEDULES:
            raise bad('lr_schedule.name', f'{self.lr_schedule.name!r} is not one of {LR_SCHEDULES}')
        if self.lr_schedule.warmup_steps < 0:
            raise bad('lr_schedule.warmup_steps', f'must be >= 0, got {self.lr_schedule.warmup_steps}')
        if self.optim.lr <= 0:
            raise bad('optim.lr', f'must be > 0, got {self.optim.lr}')
        if len(self.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.optim.betas):
            raise bad('optim.betas', f'must be two numbers in [0, 1), got {self.optim.betas}')
        e = self.ema
        if not 0.0 <= e.min_value <= e.max_value <= 1.0:
            raise bad('ema', f'need 0 <= min_value <= max_value <= 1, got {e.min_value}, {e.max_value}')
        if e.inv_gamma <= 0 or e.power <= 0:
            raise bad('ema', f'inv_gamma and power must be > 0, got {e.inv_gamma}, {e.power}')


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.2) instead of PyYAML's string."""


_Yaml12Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TrainConfigError(f'train config {path}: cannot read ({exc.strerror or exc})') from exc
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as exc:
        raise TrainConfigError(f'train config {path}: invalid YAML: {exc}') from exc


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a train_*.yaml; every error names the file and the offending key."""
    return TrainConfig.from_dict(load_yaml(path) or {}, source=str(path))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
