"""Shapes and wiring of every denoiser/encoder configuration, and the properties the wiring promises
(causal masks, crops, keypoint locations, shared vs per-camera encoders)."""
import numpy as np
import pytest
import torch

from diffusion_policy_ros.core.config import ActionSpec, EncoderConfig, ObservationSpec, PolicyConfig
from diffusion_policy_ros.core.denoisers import ConditionalUnet1D, TransformerDenoiser
from diffusion_policy_ros.core.encoders import (ImageEncoder, ObservationEncoder, ResNet18GN, SpatialSoftmax,
                                                center_crop, random_crop)
from diffusion_policy_ros.core.normalizer import Normalizer
from diffusion_policy_ros.core.policy import build_policy

IMAGE = (40, 48)  # the smallest useful size: a 2x2 map after the ResNet's 5 halvings
ACTION_DIM = 3


@pytest.fixture(scope='module')
def default_unet():
    torch.manual_seed(0)
    return ConditionalUnet1D(action_dim=7, global_cond_dim=2 * 20).eval()


def test_default_unet_handles_horizons_with_three_levels(default_unet):
    with torch.inference_mode():
        for horizon in (8, 16, 32):
            out = default_unet(torch.randn(2, horizon, 7), torch.tensor([0, 99]), torch.randn(2, 40))
            assert out.shape == (2, horizon, 7) and torch.isfinite(out).all()
        assert default_unet(torch.randn(1, 16, 7), 5, torch.randn(1, 40)).shape == (1, 16, 7)


def test_unet_names_a_horizon_it_cannot_halve(default_unet):
    with pytest.raises(ValueError, match='horizon 10 must be divisible by 4'):
        default_unet(torch.randn(1, 10, 7), 5, torch.randn(1, 40))
    with pytest.raises(ValueError, match=r'global_cond must be \(1, 40\)'):
        default_unet(torch.randn(1, 16, 7), 5, torch.randn(1, 39))


def test_unet_output_depends_on_condition_and_timestep():
    torch.manual_seed(0)
    unet = ConditionalUnet1D(2, 6, (16, 32), 3, 4, 16)
    x, cond = torch.randn(2, 8, 2), torch.randn(2, 6)
    base = unet(x, 10, cond)
    assert not torch.allclose(base, unet(x, 60, cond))
    assert not torch.allclose(base, unet(x, 10, cond + 1))


def test_transformer_is_causal_over_actions_and_observations():
    torch.manual_seed(0)
    net = TransformerDenoiser(ACTION_DIM, 5, horizon=8, n_obs_steps=2, n_layer=2, n_head=2, n_emb=16, p_drop=0.0).eval()
    x, cond = torch.randn(1, 8, ACTION_DIM), torch.randn(1, 2, 5)
    base = net(x, 3, cond)
    later = x.clone()
    later[:, 5:] += 1.0
    changed = net(later, 3, cond)
    assert torch.allclose(changed[:, :5], base[:, :5], atol=1e-6)  # the past does not see the future
    assert not torch.allclose(changed[:, 5:], base[:, 5:])
    newer_obs = cond.clone()
    newer_obs[:, 1] += 1.0
    changed = net(x, 3, newer_obs)
    assert torch.allclose(changed[:, 0], base[:, 0], atol=1e-6)  # action 0 sees only observation 0
    assert not torch.allclose(changed[:, 1:], base[:, 1:])


def test_resnet_and_spatial_softmax_shapes():
    features = ResNet18GN(width=8)(torch.randn(2, 3, 96, 96))
    assert features.shape == (2, 64, 3, 3)
    assert sum(p.numel() for p in ResNet18GN(width=64).parameters()) == pytest.approx(11.17e6, rel=0.01)
    assert SpatialSoftmax(64, num_kp=32)(features).shape == (2, 64)


def test_spatial_softmax_finds_the_hot_pixel():
    softmax = SpatialSoftmax(1, num_kp=1)
    with torch.no_grad():
        softmax.keypoint_conv.weight.fill_(1.0)
        softmax.keypoint_conv.bias.zero_()
    features = torch.zeros(1, 1, 5, 9)
    features[0, 0, 4, 0] = 100.0  # bottom-left corner
    x, y = softmax(features)[0].tolist()
    assert x == pytest.approx(-1.0, abs=1e-4) and y == pytest.approx(1.0, abs=1e-4)


def test_crops_random_in_training_centre_at_inference():
    images = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    assert torch.equal(center_crop(images, (6, 8)), images[..., 2:8, 2:10])
    crops = random_crop(images.repeat(32, 1, 1, 1), (6, 8), torch.Generator().manual_seed(0))
    assert crops.shape == (64, 3, 6, 8)
    corners = {(int(c[0, 0, 0]) % 120 // 12, int(c[0, 0, 0]) % 12) for c in crops}
    assert len(corners) > 5  # windows really move
    for crop in crops[:8]:  # each crop is a contiguous window of its own image
        top, left = int(crop[0, 0, 0]) % 120 // 12, int(crop[0, 0, 0]) % 12
        source = images[0] if crop[0, 0, 0] < 360 else images[1]
        assert torch.equal(crop, source[:, top:top + 6, left:left + 8])
    encoder = ImageEncoder(IMAGE, crop_shape=(36, 44), width=4, num_kp=4, feature_dim=5).eval()
    frames = torch.rand(2, 3, *IMAGE)
    assert torch.equal(encoder(frames), encoder(frames))  # eval: deterministic centre crop
    encoder.train()
    assert not torch.equal(encoder(frames), encoder(frames))  # train: a new random crop every call
    with pytest.raises(ValueError, match=r'crop_shape \(41, 8\) does not fit'):
        ImageEncoder(IMAGE, crop_shape=(41, 8))
    with pytest.raises(ValueError, match=r'gives a \(1, 2\) feature map with 4 ResNet stages; spatial softmax needs >= 2x2'):
        ImageEncoder(IMAGE, crop_shape=(32, 44))


def test_shared_encoder_has_one_trunk_for_all_cameras():
    spec = ObservationSpec(camera_keys=['a', 'b'], image_shape=IMAGE, state_dim=2)
    tiny = dict(resnet_width=4, num_keypoints=4, image_feature_dim=6)
    shared = ObservationEncoder(spec, EncoderConfig(share_encoder=True, **tiny))
    separate = ObservationEncoder(spec, EncoderConfig(share_encoder=False, **tiny))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) == 2 * count(shared)
    obs = {'a': torch.rand(2, 2, 3, *IMAGE), 'b': torch.rand(2, 2, 3, *IMAGE), 'state': torch.randn(2, 2, 2)}
    assert shared(obs).shape == (2, 2, 14) and separate.encode_flat(obs).shape == (2, 28)
    with pytest.raises(KeyError, match="missing camera 'b'"):
        shared({'a': obs['a'], 'state': obs['state']})


def _setup(cameras, with_state, horizon, denoiser, policy='diffusion'):
    obs_spec = ObservationSpec(camera_keys=cameras, image_shape=IMAGE, state_dim=4 if with_state else 0,
                               joint_names=[f'j{i}' for i in range(4)] if with_state else [])
    action_spec = ActionSpec(joint_names=['a', 'b', 'c'], dim=ACTION_DIM)
    rng = np.random.default_rng(0)
    arrays = {'action': rng.normal(size=(20, ACTION_DIM))}
    if with_state:
        arrays['state'] = rng.normal(size=(20, 4))
    normalizer = Normalizer.fit(arrays, image_keys=cameras)
    cfg = PolicyConfig.tiny(policy=policy, denoiser=denoiser, horizon=horizon, n_action_steps=4,
                            encoder=EncoderConfig(resnet_width=4, num_keypoints=4, image_feature_dim=8,
                                                  crop_shape=(36, 44), share_encoder=len(cameras) == 2))
    return build_policy(cfg, obs_spec, action_spec, normalizer), obs_spec


CAMERA_SETS = [([], True), (['wrist'], False), (['wrist'], True), (['wrist', 'front'], False),
               (['wrist', 'front'], True)]


@pytest.mark.parametrize('horizon', [8, 16, 32])
@pytest.mark.parametrize('cameras,with_state', CAMERA_SETS)
@pytest.mark.parametrize('denoiser', ['unet', 'transformer'])
def test_policy_shapes_for_every_configuration(denoiser, cameras, with_state, horizon):
    torch.manual_seed(0)
    policy, obs_spec = _setup(cameras, with_state, horizon, denoiser)
    batch = {key: torch.randint(0, 256, (3, 2, 3, *IMAGE), dtype=torch.uint8) for key in cameras}
    if with_state:
        batch['state'] = torch.randn(3, 2, 4)
    batch['action'] = torch.randn(3, horizon, ACTION_DIM)
    loss = policy.compute_loss(batch)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(p.grad is not None for name, p in policy.named_parameters() if 'null_cond' not in name)
    window = {key: np.random.randint(0, 256, (2, *IMAGE, 3), dtype=np.uint8) for key in cameras}
    if with_state:
        window['state'] = np.zeros((2, 4))
    chunk = policy.predict_action_chunk(window, num_inference_steps=2)
    assert chunk.shape == (horizon, ACTION_DIM) and chunk.dtype == np.float32 and np.isfinite(chunk).all()
    obs_batch = {k: v for k, v in batch.items() if k != 'action'}
    assert policy.predict_action(obs_batch, num_inference_steps=2).shape == (3, horizon, ACTION_DIM)
    assert policy.training  # predict switches to eval for sampling and back


@pytest.mark.parametrize('cameras,with_state', [([], True), (['wrist'], True)])
def test_bc_policy_shapes(cameras, with_state):
    policy, _ = _setup(cameras, with_state, 16, 'unet', policy='bc')
    batch = {key: torch.rand(3, 2, 3, *IMAGE) for key in cameras}
    batch['state'] = torch.randn(3, 2, 4)
    batch['action'] = torch.randn(3, 16, ACTION_DIM)
    assert torch.isfinite(policy.compute_loss(batch))
    window = {key: np.zeros((2, *IMAGE, 3), np.uint8) for key in cameras}
    window['state'] = np.zeros((2, 4))
    assert policy.predict_action_chunk(window).shape == (16, ACTION_DIM)


def test_bad_observation_windows_are_named():
    policy, _ = _setup(['wrist'], True, 8, 'unet')
    good = {'wrist': np.zeros((2, *IMAGE, 3), np.uint8), 'state': np.zeros((2, 4))}
    with pytest.raises(ValueError, match=r"camera 'wrist' window must be \(2, 40, 48, 3\) HWC"):
        policy.predict_action_chunk({**good, 'wrist': np.zeros((2, 3, *IMAGE), np.uint8)})
    with pytest.raises(KeyError, match="missing 'state'"):
        policy.predict_action_chunk({'wrist': good['wrist']})
    with pytest.raises(ValueError, match="'state' window has non-finite"):
        policy.predict_action_chunk({**good, 'state': np.full((2, 4), np.nan)})
    with pytest.raises(ValueError, match=r"'action' must be \(B, 8, 3\)"):
        policy.compute_loss({'wrist': torch.zeros(1, 2, 3, *IMAGE), 'state': torch.zeros(1, 2, 4),
                             'action': torch.zeros(1, 16, 3)})
    assert policy.action_slice == slice(1, 5)


def test_classifier_free_guidance_drops_the_condition_and_costs_a_pass_only_when_on():
    obs_spec = ObservationSpec(camera_keys=['wrist'], image_shape=IMAGE, state_dim=0)
    normalizer = Normalizer.fit({'action': np.random.default_rng(0).normal(size=(20, ACTION_DIM))},
                                image_keys=['wrist'])
    encoder = EncoderConfig(resnet_width=4, num_keypoints=4, image_feature_dim=8)
    policy = build_policy(PolicyConfig.tiny(cfg_dropout=0.999, encoder=encoder), obs_spec,
                          ActionSpec(dim=ACTION_DIM), normalizer)
    batch = {'wrist': torch.rand(4, 2, 3, *IMAGE), 'action': torch.randn(4, 8, ACTION_DIM)}
    policy.compute_loss(batch, generator=torch.Generator().manual_seed(0)).backward()
    image_grads = [p.grad for p in policy.obs_encoder.parameters()]
    assert all(g is None or not g.any() for g in image_grads)  # every condition was replaced ...
    assert policy.null_cond.grad.abs().sum() > 0                 # ... by the learned null condition

    batch_sizes = []
    policy.denoiser.register_forward_hook(lambda module, args, out: batch_sizes.append(args[0].shape[0]))
    obs = {'wrist': batch['wrist']}
    plain = policy.predict_action(obs, num_inference_steps=3, generator=torch.Generator().manual_seed(1))
    assert batch_sizes == [4, 4, 4]  # guidance 1.0: one pass per step, no unconditional pass
    batch_sizes.clear()
    guided = policy.predict_action(obs, num_inference_steps=3, generator=torch.Generator().manual_seed(1),
                                   guidance_scale=3.0)
    assert batch_sizes == [8, 8, 8]  # conditional and unconditional in one batched pass
    assert not torch.allclose(plain, guided)
    with pytest.raises(ValueError, match='cfg_dropout'):
        _setup([], True, 8, 'unet')[0].predict_action({'state': torch.zeros(1, 2, 4)}, guidance_scale=2.0)


@pytest.mark.parametrize('denoiser', ['unet', 'transformer'])
def test_training_works_after_inference_filled_the_caches(denoiser):
    """Caches (keypoint grids, normaliser and sampler tables) made under inference_mode must not be
    inference tensors, or the next backward fails ("Inference tensors cannot be saved for backward")."""
    policy, _ = _setup(['wrist'], True, 8, denoiser)
    policy.predict_action_chunk({'wrist': np.zeros((2, *IMAGE, 3), np.uint8), 'state': np.zeros((2, 4))})
    batch = {'wrist': torch.rand(2, 2, 3, *IMAGE), 'state': torch.randn(2, 2, 4), 'action': torch.randn(2, 8, 3)}
    policy.compute_loss(batch).backward()
    assert policy.obs_encoder.image_encoders['wrist'].keypoints.keypoint_conv.weight.grad.abs().sum() > 0


def test_fewer_resnet_stages_give_a_finer_keypoint_map():
    """64 px images: 2x2 features after 4 stages, 4x4 after 3 (finer keypoints, less compute)."""
    from diffusion_policy_ros.core.encoders import ImageEncoder
    assert ResNet18GN(width=8)(torch.randn(1, 3, 64, 64)).shape == (1, 64, 2, 2)
    assert ResNet18GN(width=8, stages=3)(torch.randn(1, 3, 64, 64)).shape == (1, 32, 4, 4)
    encoder = ImageEncoder((64, 64), (60, 60), width=8, num_kp=4, feature_dim=6, stages=3)
    assert encoder(torch.randn(2, 3, 64, 64)).shape == (2, 6)
    with pytest.raises(ValueError, match='>= 17 px'):
        ImageEncoder((16, 16), None, width=8, stages=3)
    with pytest.raises(ValueError, match='stages must be 1..4'):
        ResNet18GN(width=8, stages=5)
