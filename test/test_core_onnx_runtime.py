"""The ONNX Runtime chunk sampler gives the eager policy's chunk (same noise) for teachers and students."""
import numpy as np
import pytest
import torch

from diffusion_policy_ros.core.config import ActionSpec, ObservationSpec, PolicyConfig
from diffusion_policy_ros.core.normalizer import Normalizer
from diffusion_policy_ros.core.onnx_runtime import OnnxChunkSampler
from diffusion_policy_ros.core.policy import build_policy

pytest.importorskip('onnxruntime')


def tiny_policy(**sampler):
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 0.5, (64, 8))
    normalizer = Normalizer.fit({'state': samples, 'action': samples}, image_keys=['camera'])
    cfg = PolicyConfig.tiny()
    cfg.sampler = type(cfg.sampler)(**{**cfg.sampler.to_dict(), **sampler})
    torch.manual_seed(0)
    return build_policy(cfg, ObservationSpec(camera_keys=['camera'], image_shape=(40, 40), joint_names=[],
                                             state_dim=8), ActionSpec(dim=8), normalizer)


@pytest.mark.parametrize('sampler', [dict(), dict(prediction_type='sample', timestep_spacing='trailing',
                                                  num_inference_steps=1)], ids=['teacher_ddim10', 'student_1step'])
def test_the_onnx_chunk_matches_the_eager_chunk(sampler):
    policy = tiny_policy(**sampler)
    runner = OnnxChunkSampler(policy)
    rng = np.random.default_rng(1)
    window = {'camera': rng.integers(0, 255, (2, 40, 40, 3), dtype=np.uint8),
              'state': rng.normal(0, 0.5, (2, 8)).astype(np.float32)}
    eager = policy.predict_action_chunk(window, generator=torch.Generator().manual_seed(3))
    exported = runner.predict_action_chunk(window, generator=torch.Generator().manual_seed(3))
    assert exported.shape == eager.shape == (policy.cfg.horizon, 8)
    assert np.abs(exported - eager).max() <= 1e-4


def test_stochastic_samplers_are_refused():
    with pytest.raises(ValueError, match='deterministic'):
        OnnxChunkSampler(tiny_policy(eta=1.0))
