"""The project's DDPM/DDIM samplers agree with diffusers (the oracle) step by step, with the same noise."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusion_policy_ros.core.config import SamplerSettings
from diffusion_policy_ros.core.samplers import DDIMSampler, DDPMSampler, build_sampler
from diffusion_policy_ros.core.schedules import make_betas

SHAPE = (3, 16, 7)
TOL = 1e-5


def fake_model(prediction_type: str, alphas_cumprod: torch.Tensor):
    """A deterministic stand-in for a trained denoiser whose trajectories stay bounded.

    Epsilon: the exact noise for data at 0 plus a sin() perturbation scaled by sqrt(a_t), so that
    the implied x0 is O(1) at every t (a random epsilon blows x0 up by 1/sqrt(a_t) ~ 1e3 and makes
    float32 round-off the only thing compared). Sample: tanh(x) * 1.3 overshoots [-1, 1] so that
    clipping matters; its slope stays <= 1.3 because a steeper map makes the 100-step chain chaotic
    (diffusers in float32 then differs from itself in float64 by 7e-5).
    """
    def model(x: torch.Tensor, t: int) -> torch.Tensor:
        if prediction_type == 'sample':
            return torch.tanh(x + 0.01 * t) * 1.3
        a = alphas_cumprod[t]
        return (1 - a) ** 0.5 * x + 0.6 * a ** 0.5 * torch.sin(3 * x + 0.1 * t)
    return model


def _noise(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('name', ['linear', 'scaled_linear', 'squaredcos_cap_v2'])
def test_betas_equal_diffusers(name):
    ref = DDPMScheduler(num_train_timesteps=100, beta_schedule=name)
    assert torch.equal(make_betas(name, 100), ref.betas)


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="'cosine_typo'"):
        make_betas('cosine_typo', 100)


@pytest.mark.parametrize('variance_type', ['fixed_small', 'fixed_large'])
@pytest.mark.parametrize('clip_sample', [True, False])
@pytest.mark.parametrize('prediction_type', ['epsilon', 'sample'])
@pytest.mark.parametrize('num_inference_steps', [100, 10])
def test_ddpm_trajectory_matches_diffusers(prediction_type, clip_sample, variance_type, num_inference_steps):
    settings = dict(num_train_timesteps=100, beta_schedule='squaredcos_cap_v2', prediction_type=prediction_type,
                    clip_sample=clip_sample, variance_type=variance_type)
    ref = DDPMScheduler(**settings)
    ours = DDPMSampler(SamplerSettings(kind='ddpm', **settings))
    ref.set_timesteps(num_inference_steps)
    timesteps = ours.timesteps(num_inference_steps)
    assert timesteps.tolist() == ref.timesteps.tolist()
    model = fake_model(prediction_type, ours.alphas_cumprod)
    x_ref = x_ours = _noise(0)
    worst = 0.0
    for t in timesteps.tolist():
        # diffusers' DDPM step only takes a generator: give both the same seeded stream
        x_ref = ref.step(model(x_ref, t), t, x_ref, generator=torch.Generator().manual_seed(t + 1)).prev_sample
        x_ours = ours.step(model(x_ours, t), t, x_ours, noise=_noise(t + 1) if t > 0 else None)
        worst = max(worst, (x_ref - x_ours).abs().max().item())
    assert worst <= TOL
    assert x_ref.abs().max() > 0.1  # the comparison is not between two collapsed zeros


@pytest.mark.parametrize('eta', [0.0, 0.5])
@pytest.mark.parametrize('prediction_type', ['epsilon', 'sample'])
@pytest.mark.parametrize('clip_sample', [True, False])
@pytest.mark.parametrize('num_inference_steps', [1, 10, 100])
def test_ddim_trajectory_matches_diffusers(num_inference_steps, clip_sample, prediction_type, eta):
    settings = dict(num_train_timesteps=100, beta_schedule='squaredcos_cap_v2', prediction_type=prediction_type,
                    clip_sample=clip_sample)
    ref = DDIMScheduler(**settings)
    ours = DDIMSampler(SamplerSettings(kind='ddim', eta=eta, **settings))
    ref.set_timesteps(num_inference_steps)
    timesteps = ours.timesteps(num_inference_steps)
    assert timesteps.tolist() == ref.timesteps.tolist()
    model = fake_model(prediction_type, ours.alphas_cumprod)
    x_ref = x_ours = _noise(0)
    worst = 0.0
    for t in timesteps.tolist():
        noise = _noise(t + 1)
        x_ref = ref.step(model(x_ref, t), t, x_ref, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
        x_ours = ours.step(model(x_ours, t), t, x_ours, noise=noise)
        worst = max(worst, (x_ref - x_ours).abs().max().item())
    assert worst <= TOL
    assert x_ref.abs().max() > 0.1


@pytest.mark.parametrize('schedule', ['linear', 'scaled_linear'])
@pytest.mark.parametrize('kind', ['ddpm', 'ddim'])
def test_other_schedules_and_offsets_match_diffusers(kind, schedule):
    settings = dict(num_train_timesteps=100, beta_schedule=schedule, steps_offset=1)
    if kind == 'ddpm':
        ref, ours, extra = DDPMScheduler(**settings), DDPMSampler(SamplerSettings(kind='ddpm', **settings)), {}
    else:
        ref = DDIMScheduler(set_alpha_to_one=False, **settings)
        ours, extra = DDIMSampler(SamplerSettings(kind='ddim', eta=1.0, set_alpha_to_one=False, **settings)), {'eta': 1.0}
    ref.set_timesteps(10)
    timesteps = ours.timesteps(10)
    assert timesteps.tolist() == ref.timesteps.tolist() and timesteps[-1] == 1
    model = fake_model('epsilon', ours.alphas_cumprod)
    x_ref = x_ours = _noise(0)
    for t in timesteps.tolist():
        x_ref = ref.step(model(x_ref, t), t, x_ref, generator=torch.Generator().manual_seed(t), **extra).prev_sample
        x_ours = ours.step(model(x_ours, t), t, x_ours, noise=_noise(t))
    assert (x_ref - x_ours).abs().max() <= TOL


def test_clipping_changes_the_trajectory():
    """Guards the equality tests above: clip on/off must actually exercise different code."""
    outs = []
    for clip in (True, False):
        sampler = DDIMSampler(SamplerSettings(kind='ddim', prediction_type='sample', clip_sample=clip))
        model = fake_model('sample', sampler.alphas_cumprod)
        outs.append(sampler.sample(lambda x, t, c: model(x, int(t[0])), SHAPE, None, noise=_noise(0)))
    assert (outs[0] - outs[1]).abs().max() > 0.05
    assert outs[0].abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize('kind', ['ddpm', 'ddim'])
def test_sample_loop_with_generator_matches_a_diffusers_loop(kind):
    """sample() draws random numbers in diffusers' order: same seed, same chunk."""
    if kind == 'ddpm':
        ref, n, kwargs = DDPMScheduler(num_train_timesteps=100, beta_schedule='squaredcos_cap_v2'), 20, {}
    else:
        ref, n, kwargs = DDIMScheduler(num_train_timesteps=100, beta_schedule='squaredcos_cap_v2'), 10, {'eta': 0.7}
    ours = build_sampler(SamplerSettings(kind=kind, num_train_timesteps=100, **kwargs))
    model = fake_model('epsilon', ours.alphas_cumprod)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(SHAPE, generator=generator)
    ref.set_timesteps(n)
    for t in ref.timesteps.tolist():
        x = ref.step(model(x, t), t, x, generator=generator, **kwargs).prev_sample
    seen_t = []
    ours_x, intermediates = ours.sample(lambda x_t, t, cond: model(x_t, int(t[0])), SHAPE, None,
                                        generator=torch.Generator().manual_seed(7), num_inference_steps=n,
                                        return_intermediates=True,
                                        callback=lambda i, t, x_prev, x0: seen_t.append(t))
    assert (ours_x - x).abs().max() <= TOL
    assert len(intermediates) == n + 1 and torch.equal(intermediates[-1], ours_x)
    assert seen_t == ref.timesteps.tolist()


def test_add_noise_matches_diffusers():
    ref = DDPMScheduler(num_train_timesteps=100, beta_schedule='squaredcos_cap_v2')
    ours = DDPMSampler()
    x0, noise = _noise(1), _noise(2)
    t = torch.tensor([0, 50, 99])
    assert (ours.add_noise(x0, noise, t) - ref.add_noise(x0, noise, t)).abs().max() <= 1e-6


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match='num_inference_steps'):
        DDIMSampler().timesteps(101)
    with pytest.raises(ValueError, match="'v_prediction'"):
        DDIMSampler(SamplerSettings(kind='ddim', prediction_type='v_prediction'))
    with pytest.raises(ValueError, match='timestep 5 is not in'):
        sampler = DDIMSampler()
        sampler.timesteps(10)
        sampler.step(torch.zeros(SHAPE), 5, torch.zeros(SHAPE))
    with pytest.raises(ValueError, match="unknown key.*'not_a_setting'"):
        build_sampler(SamplerSettings.from_dict({'kind': 'ddim', 'not_a_setting': 1}))
    with pytest.raises(ValueError, match='steps_offset 1 puts the 100-step chain 100..1 outside'):
        DDIMSampler(SamplerSettings(kind='ddim', steps_offset=1)).timesteps(100)


@pytest.mark.parametrize('prediction_type', ['epsilon', 'sample'])
@pytest.mark.parametrize('num_inference_steps', [1, 2, 3, 10])
def test_trailing_ddim_matches_diffusers_and_starts_at_the_noisiest_step(prediction_type, num_inference_steps):
    """The few-step students' chain: a 1-step chain is t = 99, not the leading spacing's t = 0."""
    settings = dict(num_train_timesteps=100, beta_schedule='squaredcos_cap_v2', prediction_type=prediction_type,
                    timestep_spacing='trailing')
    ref = DDIMScheduler(set_alpha_to_one=True, **settings)
    ours = DDIMSampler(SamplerSettings(kind='ddim', **settings))
    ref.set_timesteps(num_inference_steps)
    timesteps = ours.timesteps(num_inference_steps)
    assert timesteps.tolist() == ref.timesteps.tolist() and timesteps[0] == 99
    model = fake_model(prediction_type, ours.alphas_cumprod)
    x_ref = x_ours = _noise(0)
    for t in timesteps.tolist():
        x_ref = ref.step(model(x_ref, t), t, x_ref).prev_sample
        x_ours = ours.step(model(x_ours, t), t, x_ours)
    assert (x_ref - x_ours).abs().max().item() <= TOL


def test_trailing_spacing_is_ddim_only():
    with pytest.raises(ValueError, match='timestep_spacing'):
        DDPMSampler(SamplerSettings(kind='ddpm', timestep_spacing='trailing'))
