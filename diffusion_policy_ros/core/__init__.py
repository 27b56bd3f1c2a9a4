"""The diffusion policy itself (PyTorch, no ROS): schedules, samplers, denoisers, encoders,
normaliser, policies and checkpoints."""
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from .config import (ActionSpec, EncoderConfig, ObservationSpec, PolicyConfig, SamplerSettings, TransformerConfig,
                     UnetConfig)
from .denoisers import ConditionalUnet1D, TransformerDenoiser, build_denoiser
from .encoders import ImageEncoder, ObservationEncoder, ResNet18GN, SpatialSoftmax, StateEncoder
from .normalizer import Normalizer
from .policy import BCPolicy, DiffusionPolicy, Policy, build_policy
from .samplers import DDIMSampler, DDIMSamplerConfig, DDPMSampler, DDPMSamplerConfig, build_sampler
from .schedules import make_betas

__all__ = [
    'ActionSpec', 'BCPolicy', 'CheckpointError', 'ConditionalUnet1D', 'DDIMSampler', 'DDIMSamplerConfig',
    'DDPMSampler', 'DDPMSamplerConfig', 'DiffusionPolicy', 'EncoderConfig', 'ImageEncoder', 'Normalizer',
    'ObservationEncoder', 'ObservationSpec', 'Policy', 'PolicyConfig', 'ResNet18GN', 'SamplerSettings',
    'SpatialSoftmax', 'StateEncoder', 'TransformerConfig', 'TransformerDenoiser', 'UnetConfig', 'build_denoiser',
    'build_policy', 'build_sampler', 'load_checkpoint', 'make_betas', 'read_checkpoint_config', 'save_checkpoint',
]
