"""Normaliser round trips (constant dimensions included) and config dict validation."""
import json

import numpy as np
import pytest
import torch

from diffusion_policy_ros.core.config import (ActionSpec, EncoderConfig, ObservationSpec, PolicyConfig,
                                              UnetConfig)
from diffusion_policy_ros.core.normalizer import Normalizer


def _data(seed=0):
    rng = np.random.default_rng(seed)
    action = rng.uniform(-3.0, 5.0, size=(50, 16, 4)).astype(np.float32)
    action[..., 2] = 0.785398  # a locked joint: constant dimension
    return action


def test_limits_map_to_unit_range_and_round_trip():
    action = _data()
    normalizer = Normalizer.fit({'action': action})
    x = torch.from_numpy(action)
    y = normalizer.normalize('action', x)
    moving = [0, 1, 3]
    assert torch.allclose(y[..., moving].amin(dim=(0, 1)), torch.tensor(-1.0), atol=1e-6)
    assert torch.allclose(y[..., moving].amax(dim=(0, 1)), torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(normalizer.unnormalize('action', y), x, atol=1e-6)


def test_constant_dimension_is_finite_and_round_trips_exactly():
    action = _data()
    normalizer = Normalizer.fit({'action': action})
    x = torch.from_numpy(action)
    y = normalizer.normalize('action', x)
    assert torch.isfinite(y).all()
    assert torch.equal(y[..., 2], torch.zeros_like(y[..., 2]))
    assert torch.equal(normalizer.unnormalize('action', y)[..., 2], x[..., 2])
    # A sampled network output is never exactly 0 there: the constant still comes out exactly,
    # while the other dimensions follow the network.
    noisy = y + 0.3
    out = normalizer.unnormalize('action', noisy)
    assert torch.equal(out[..., 2], x[..., 2])
    assert not torch.allclose(out[..., 0], x[..., 0])


def test_normalizer_dict_is_json_safe_and_identical_after_reload():
    normalizer = Normalizer.fit({'action': _data(), 'state': _data(1)[:, 0]}, image_keys=['wrist'],
                                image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.2, 0.25))
    reloaded = Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    x = torch.from_numpy(_data(2))
    assert torch.equal(reloaded.normalize('action', x), normalizer.normalize('action', x))
    images = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(reloaded.normalize('wrist', images), normalizer.normalize('wrist', images))


def test_images_scale_uint8_to_unit_range_then_optional_mean_std():
    images = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)
    plain = Normalizer.fit({}, image_keys=['cam'])
    assert torch.allclose(plain.normalize('cam', images), images.float() / 255)
    assert torch.allclose(plain.normalize('cam', images.float() / 255), images.float() / 255)
    standardised = Normalizer.fit({}, image_keys=['cam'], image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.5, 1.0))
    y = standardised.normalize('cam', images)
    assert torch.allclose(y[:, :, 1], (images[:, :, 1].float() / 255 - 0.5) / 0.5)
    assert torch.allclose(standardised.unnormalize('cam', y), images.float() / 255, atol=1e-6)


def test_normalizer_errors_name_key_and_problem():
    normalizer = Normalizer.fit({'action': _data()})
    with pytest.raises(KeyError, match="'state'"):
        normalizer.normalize('state', torch.zeros(3))
    with pytest.raises(ValueError, match="'action' has 4 dimensions"):
        normalizer.normalize('action', torch.zeros(2, 5))
    bad = _data()
    bad[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"'action'.*non-finite.*\[1\]"):
        Normalizer.fit({'action': bad})
    with pytest.raises(ValueError, match="'action'.*empty"):
        Normalizer.fit({'action': np.zeros((0, 3))})
    broken = normalizer.to_dict()
    broken['keys']['action']['half_range'] = broken['keys']['action']['half_range'][:2]
    with pytest.raises(ValueError, match="'action'.*'half_range' has 2 values, expected 4"):
        Normalizer.from_dict(broken)


def test_policy_config_round_trips_through_json():
    cfg = PolicyConfig.tiny(denoiser='transformer', cfg_dropout=0.1, guidance_scale=2.0,
                            encoder=EncoderConfig(crop_shape=(84, 84), share_encoder=True))
    again = PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.encoder.crop_shape == (84, 84) and isinstance(again.unet.down_dims, tuple)


def test_config_rejects_unknown_keys_by_name():
    data = PolicyConfig().to_dict()
    data['horizn'] = 16
    with pytest.raises(ValueError, match="PolicyConfig: unknown key.*'horizn'"):
        PolicyConfig.from_dict(data)
    data = PolicyConfig().to_dict()
    data['unet']['down_dim'] = [1, 2]
    with pytest.raises(ValueError, match=r"PolicyConfig: unknown key.*'unet\.down_dim'"):
        PolicyConfig.from_dict(data)
    with pytest.raises(ValueError, match="unknown key.*'joints'"):
        ActionSpec.from_dict({'joints': ['a'], 'dim': 1})


def test_config_rejects_inconsistent_values():
    with pytest.raises(ValueError, match='n_action_steps'):
        PolicyConfig(horizon=8, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match='cfg_dropout'):
        PolicyConfig(guidance_scale=3.0)
    with pytest.raises(ValueError, match='observes nothing'):
        ObservationSpec()
    with pytest.raises(ValueError, match='joint_names'):
        ActionSpec(joint_names=['a', 'b'], dim=3)
    assert PolicyConfig.tiny(unet=UnetConfig(down_dims=(8, 16), n_groups=4)).unet.down_dims == (8, 16)
