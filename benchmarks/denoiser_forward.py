"""Speed of the default denoiser and of a full DDIM chunk: the project's table sampler vs diffusers.

Prints one JSON object: median / p99 milliseconds of
- one forward of the default ConditionalUnet1D (down_dims 256/512/1024, horizon 16, batch 1),
- a DDIM-10 chunk with the project's DDIMSampler,
- the same chunk with diffusers' DDIMScheduler stepping the same network (baseline, same run),
and the max abs difference between the two chunks (same initial noise) as a sanity check.

    python benchmarks/denoiser_forward.py [--repeats 50] [--threads N] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from diffusion_policy_ros.core.denoisers import ConditionalUnet1D
from diffusion_policy_ros.core.config import SamplerSettings
from diffusion_policy_ros.core.samplers import DDIMSampler


def _timed(fn, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return {'median_ms': float(np.median(times)), 'p99_ms': float(np.percentile(times, 99)), 'n': repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=50)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--steps', type=int, default=10, help='DDIM inference steps')
    args = parser.parse_args()
    from diffusers import DDIMScheduler  # the baseline only; the project never imports it at runtime

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    action_dim, horizon, n_obs, obs_features = 7, 16, 2, 64 + 7
    net = ConditionalUnet1D(action_dim, n_obs * obs_features).to(device).eval()
    cond = torch.randn(1, n_obs * obs_features, device=device)
    x = torch.randn(1, horizon, action_dim, device=device)
    t = torch.tensor([50], device=device)

    settings = dict(num_train_timesteps=100, beta_schedule='squaredcos_cap_v2', prediction_type='epsilon',
                    clip_sample=True)
    ours = DDIMSampler(SamplerSettings(kind='ddim', num_inference_steps=args.steps, **settings))
    reference = DDIMScheduler(**settings)

    def model_fn(sample: torch.Tensor, t_batch: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return net(sample, t_batch, c)

    def chunk_ours() -> torch.Tensor:
        return ours.sample(model_fn, (1, horizon, action_dim), cond, noise=x)

    def chunk_diffusers() -> torch.Tensor:
        reference.set_timesteps(args.steps)
        sample = x
        for step_t in reference.timesteps:
            out = net(sample, step_t.to(device).expand(1), cond)
            sample = reference.step(out, step_t, sample).prev_sample
        return sample

    with torch.inference_mode():
        forward = _timed(lambda: net(x, t, cond), args.repeats, args.warmup, device)
        sampler_only_ours = _timed(lambda: ours.sample(lambda s, tb, c: s, (1, horizon, action_dim), cond, noise=x),
                                   args.repeats, args.warmup, device)

        def diffusers_steps_only() -> None:
            reference.set_timesteps(args.steps)
            sample = x
            for step_t in reference.timesteps:
                sample = reference.step(sample, step_t, sample).prev_sample

        sampler_only_diffusers = _timed(diffusers_steps_only, args.repeats, args.warmup, device)
        full_ours = _timed(chunk_ours, args.repeats, args.warmup, device)
        full_diffusers = _timed(chunk_diffusers, args.repeats, args.warmup, device)
        max_abs_diff = float((chunk_ours() - chunk_diffusers()).abs().max())

    print(json.dumps({
        'benchmark': 'denoiser_forward',
        'device': str(device) if device.type != 'cpu' else f'cpu ({platform.processor() or platform.machine()})',
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'params_millions': round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
        'unet_forward_b1_h16': forward,
        f'ddim{args.steps}_chunk_project_sampler': full_ours,
        f'ddim{args.steps}_chunk_diffusers_baseline': full_diffusers,
        f'ddim{args.steps}_sampler_overhead_only_project': sampler_only_ours,
        f'ddim{args.steps}_sampler_overhead_only_diffusers': sampler_only_diffusers,
        'chunk_max_abs_diff_project_vs_diffusers': max_abs_diff,
    }, indent=2))


if __name__ == '__main__':
    main()
