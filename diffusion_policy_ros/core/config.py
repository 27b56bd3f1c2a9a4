"""Dataclass configs of the policy and of what it observes and commands.

One source of truth: training configs, checkpoints (config.json) and the node all go through
`to_dict()` / `from_dict()` (`config_loader.from_mapping`: unknown keys and wrong types are errors
naming the key, so a typo in a YAML file fails loudly instead of silently training the default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from diffusion_policy_ros.config_loader import from_mapping

T = TypeVar('T')


class _DictMixin:
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Inverse of `to_dict`; unknown keys raise ValueError naming them."""
        return from_mapping(cls, data, cls.__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class ObservationSpec(_DictMixin):
    """What the policy sees: cameras (stored/preprocessed image size) and joint-state features."""

    camera_keys: list[str] = field(default_factory=list)
    image_shape: tuple[int, int] = (96, 96)  # (H, W) of the stored, preprocessed image
    joint_names: list[str] = field(default_factory=list)
    state_dim: int = 0

    def __post_init__(self) -> None:
        self.camera_keys = list(self.camera_keys)
        self.joint_names = list(self.joint_names)
        self.image_shape = tuple(int(s) for s in self.image_shape)  # type: ignore[assignment]
        if len(set(self.camera_keys)) != len(self.camera_keys):
            raise ValueError(f'ObservationSpec.camera_keys has duplicates: {self.camera_keys}')
        if 'state' in self.camera_keys or 'action' in self.camera_keys:
            raise ValueError(f"ObservationSpec.camera_keys may not use the reserved names 'state'/'action': "
                             f'{self.camera_keys}')
        if len(self.image_shape) != 2 or min(self.image_shape) < 1:
            raise ValueError(f'ObservationSpec.image_shape must be (H, W) > 0, got {self.image_shape}')
        if self.state_dim < 0:
            raise ValueError(f'ObservationSpec.state_dim must be >= 0, got {self.state_dim}')
        if not self.camera_keys and self.state_dim == 0:
            raise ValueError('ObservationSpec observes nothing: no camera_keys and state_dim 0')


@dataclass
class ActionSpec(_DictMixin):
    """What the policy commands: one value per joint, in robot units."""

    joint_names: list[str] = field(default_factory=list)
    dim: int = 0
    kind: Literal['joint_position'] = 'joint_position'

    def __post_init__(self) -> None:
        self.joint_names = list(self.joint_names)
        if self.dim < 1:
            raise ValueError(f'ActionSpec.dim must be >= 1, got {self.dim}')
        if self.joint_names and len(self.joint_names) != self.dim:
            raise ValueError(f'ActionSpec has {len(self.joint_names)} joint_names but dim {self.dim}')
        if self.kind != 'joint_position':
            raise ValueError(f"ActionSpec.kind {self.kind!r} is not supported (only 'joint_position')")


@dataclass
class UnetConfig(_DictMixin):
    """ConditionalUnet1D settings (Chi et al. defaults)."""

    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128


@dataclass
class TransformerConfig(_DictMixin):
    """TransformerDenoiser settings (Chi et al.'s image-based defaults)."""

    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.3
    causal_attn: bool = True
    n_cond_layers: int = 0


@dataclass
class EncoderConfig(_DictMixin):
    """Observation encoder settings.

    resnet_width 64 is ResNet-18; smaller widths give small, fast models. resnet_stages < 4 ends the
    trunk early, for a finer keypoint map on small images (see ResNet18GN). crop_shape None means no
    crop (random crop in training / centre crop at inference otherwise). state_mlp_dims () keeps the
    state as it is (identity), otherwise a Mish MLP with those hidden/output sizes.
    """

    resnet_width: int = 64
    resnet_stages: int = 4
    crop_shape: tuple[int, int] | None = None
    num_keypoints: int = 32
    image_feature_dim: int = 64
    share_encoder: bool = False
    state_mlp_dims: tuple[int, ...] = ()


@dataclass
class SamplerSettings(_DictMixin):
    """Diffusion schedule (training) and sampler (inference) settings: what `core.samplers` builds the
    DDPM or DDIM sampler from (names and defaults follow diffusers' schedulers where shared)."""

    kind: Literal['ddim', 'ddpm'] = 'ddim'
    num_train_timesteps: int = 100
    beta_schedule: str = 'squaredcos_cap_v2'
    prediction_type: Literal['epsilon', 'sample'] = 'epsilon'
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    num_inference_steps: int = 10
    eta: float = 0.0  # DDIM only
    variance_type: Literal['fixed_small', 'fixed_large'] = 'fixed_small'  # DDPM only
    # DDIM: 'leading' (diffusers' default: a 1-step chain is t = 0) or 'trailing' (a 1-step chain starts
    # from the noisiest step, t = T - 1, as few-step students need: Lin et al. 2024, "Common diffusion
    # noise schedules and sample steps are flawed"). DDPM: leading only.
    timestep_spacing: Literal['leading', 'trailing'] = 'leading'
    beta_start: float = 1e-4  # linear and scaled_linear beta schedules only
    beta_end: float = 0.02
    set_alpha_to_one: bool = True  # DDIM: the last step lands on alpha 1 (diffusers' default)
    steps_offset: int = 0  # diffusers' steps_offset: added to every timestep of the chain


BLENDING_MODES: tuple[str, ...] = ('none', 'temporal_ensemble', 'crossfade')
REPLAN_MODES: tuple[str, ...] = ('auto', 'chunk_end', 'every_tick')


@dataclass
class ExecutionSettings(_DictMixin):
    """How chunks are executed on the robot, saved with the policy: the period its data was recorded
    at, and the blending it was evaluated with. With `PolicyConfig.n_action_steps` and
    `sampler.num_inference_steps` they make the `ExecutionConfig` every consumer starts from."""

    control_period_s: float = 0.1  # seconds between chunk rows: the dataset's control period
    # 'crossfade' with chunk-end replanning keeps a multimodal policy on one mode per chunk (temporal
    # ensembling averages the modes: 20 % vs 95 % success on reach_around).
    blending: str = 'crossfade'
    crossfade_steps: int = 3  # periods over which an old chunk fades into the new one
    ensemble_decay: float = 0.01  # ACT's weight decay for temporal_ensemble
    replan: str = 'auto'  # auto | chunk_end | every_tick (see control.controller.ControllerConfig)

    def __post_init__(self) -> None:
        if not (isinstance(self.control_period_s, (int, float)) and 0 < self.control_period_s < 10):
            raise ValueError(f'execution.control_period_s must be in (0, 10) seconds, got {self.control_period_s}')
        if self.blending not in BLENDING_MODES:
            raise ValueError(f'execution.blending must be one of {BLENDING_MODES}, got {self.blending!r}')
        if self.replan not in REPLAN_MODES:
            raise ValueError(f'execution.replan must be one of {REPLAN_MODES}, got {self.replan!r}')
        if self.crossfade_steps < 0:
            raise ValueError(f'execution.crossfade_steps must be >= 0, got {self.crossfade_steps}')


@dataclass(frozen=True)
class ExecutionConfig:
    """Everything that decides how a policy runs, resolved once from its checkpoint (plus explicit
    overrides): the node, eval, sweep, replay and demo all take it from `execution_config`."""

    control_period_s: float
    num_inference_steps: int | None  # None for policies that do not sample (BC)
    n_action_steps: int
    blending: str
    crossfade_steps: int
    ensemble_decay: float
    replan: str

    def changed_from(self, other: ExecutionConfig) -> dict[str, tuple[Any, Any]]:
        """{field: (other's, this one's)} where they differ, for logging overrides."""
        return {f.name: (getattr(other, f.name), getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(other, f.name) != getattr(self, f.name)}


@dataclass
class PolicyConfig(_DictMixin):
    """Everything that shapes the network and its sampling (saved in every checkpoint)."""

    policy: Literal['diffusion', 'bc'] = 'diffusion'
    denoiser: Literal['unet', 'transformer'] = 'unet'
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    unet: UnetConfig = field(default_factory=UnetConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    bc_hidden_dims: tuple[int, ...] = (512, 512)
    cfg_dropout: float = 0.0     # probability of replacing the condition by the learned null condition
    guidance_scale: float = 1.0  # classifier-free guidance at inference; 1.0 = off, one forward pass
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)

    def __post_init__(self) -> None:
        if self.policy not in ('diffusion', 'bc'):
            raise ValueError(f"PolicyConfig.policy must be 'diffusion' or 'bc', got {self.policy!r}")
        if self.denoiser not in ('unet', 'transformer'):
            raise ValueError(f"PolicyConfig.denoiser must be 'unet' or 'transformer', got {self.denoiser!r}")
        if not 1 <= self.n_obs_steps <= self.horizon:
            raise ValueError(f'PolicyConfig: n_obs_steps {self.n_obs_steps} must be in [1, horizon {self.horizon}]')
        if not 1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1:
            raise ValueError(f'PolicyConfig: n_action_steps {self.n_action_steps} must be in '
                             f'[1, horizon - n_obs_steps + 1 = {self.horizon - self.n_obs_steps + 1}]')
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f'PolicyConfig.cfg_dropout must be in [0, 1), got {self.cfg_dropout}')
        if self.guidance_scale != 1.0 and self.cfg_dropout == 0.0:
            raise ValueError('PolicyConfig.guidance_scale != 1 needs a null condition trained with cfg_dropout > 0')

    def execution_config(self, **overrides: Any) -> ExecutionConfig:
        """The checkpoint's execution settings with the `overrides` that are not None applied and checked
        (num_inference_steps, n_action_steps, control_period_s, blending, crossfade_steps, ensemble_decay,
        replan). The one place a consumer turns a policy config into how it runs."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ExecutionConfig)})
        if unknown:
            raise ValueError(f'unknown execution setting(s) {unknown}')
        base = dict(dataclasses.asdict(self.execution),
                    num_inference_steps=self.sampler.num_inference_steps if self.policy == 'diffusion' else None,
                    n_action_steps=self.n_action_steps)
        base.update({k: v for k, v in overrides.items() if v is not None})
        if self.policy != 'diffusion':
            base['num_inference_steps'] = None
        max_actions = self.horizon - self.n_obs_steps + 1
        if not 1 <= int(base['n_action_steps']) <= max_actions:
            raise ValueError(f'n_action_steps {base["n_action_steps"]} must be in [1, horizon - n_obs_steps + 1 '
                             f'= {max_actions}]')
        steps = base['num_inference_steps']
        if steps is not None and not 1 <= int(steps) <= self.sampler.num_train_timesteps:
            raise ValueError(f'num_inference_steps {steps} must be in [1, {self.sampler.num_train_timesteps}]')
        ExecutionSettings(**{f.name: base[f.name] for f in dataclasses.fields(ExecutionSettings)})  # checks
        return ExecutionConfig(**base)

    def deployed_execution(self, control_rate_hz: float | None = None, allow_rate_mismatch: bool = False,
                           where: str = 'the checkpoint', **overrides: Any) -> ExecutionConfig:
        """How a node runs this policy: `execution_config` with the rate and overrides that are set.

        A rate other than the one the policy was trained at would run every action at the wrong time, so
        it is refused (naming both rates) unless `allow_rate_mismatch`."""
        if control_rate_hz is not None and not control_rate_hz > 0:
            raise ValueError(f'control_rate_hz must be > 0, got {control_rate_hz}')
        trained = self.execution.control_period_s
        period = trained if control_rate_hz is None else 1.0 / control_rate_hz
        if abs(period - trained) > 1e-9 and not allow_rate_mismatch:
            raise ValueError(f'control_rate_hz {control_rate_hz:g} Hz differs from the {1 / trained:g} Hz {where} '
                             'was trained at: every action would run at the wrong time. Leave control_rate_hz '
                             'unset, or set allow_rate_mismatch to run it anyway')
        return self.execution_config(control_period_s=period, **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> PolicyConfig:
        """A small model that builds in milliseconds and trains on CPU (tests, demos)."""
        base = cls(
            horizon=8, n_obs_steps=2, n_action_steps=4,
            unet=UnetConfig(down_dims=(32, 64), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16),
            transformer=TransformerConfig(n_layer=2, n_head=2, n_emb=32, p_drop_attn=0.0),
            encoder=EncoderConfig(resnet_width=8, num_keypoints=8, image_feature_dim=16, state_mlp_dims=()),
            bc_hidden_dims=(64, 64),
        )
        return dataclasses.replace(base, **overrides)
