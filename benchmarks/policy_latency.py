"""Observation -> action chunk latency of the shipped models, DDIM {5, 10, 16} steps.

For each model in models/ this times what the policy node does per inference: decode a 640x480 rgb8
camera frame per camera and resize it with the dataset's own function, then sample a chunk with the
project's DDIM sampler (precomputed tables). The reference path runs the same network stepped by
diffusers' DDIMScheduler (no precomputation), measured in the same run. Prints one JSON object.

    python benchmarks/policy_latency.py [--repeats 30] [--threads 1] [--device cpu] [--models models/reach_around]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_policy_ros.core.checkpoint import load_checkpoint
from diffusion_policy_ros.data.image_codec import decode_image, encode_rgb8, prepare_model_image, to_rgb8

ROOT = Path(__file__).resolve().parents[1]


class _RawImage:
    """A sensor_msgs/Image-shaped object, as the node receives it."""

    def __init__(self, rgb: np.ndarray):
        for key, value in encode_rgb8(rgb).items():
            setattr(self, key, value)


def observation(policy, raw_frames: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    spec = policy.obs_spec
    obs = {key: np.stack([prepare_model_image(to_rgb8(decode_image(raw_frames[key]), 'rgb8'), spec.image_shape)
                          for _ in range(policy.cfg.n_obs_steps)]) for key in spec.camera_keys}
    low, high = policy.normalizer.stats('state')['min'], policy.normalizer.stats('state')['max']
    obs['state'] = rng.uniform(low, high, (policy.cfg.n_obs_steps, len(low))).astype(np.float32)
    return obs


def diffusers_chunk(policy, obs: dict[str, np.ndarray], steps: int, generator: torch.Generator) -> torch.Tensor:
    """The reference path: the same encoder and denoiser, stepped by diffusers' DDIMScheduler."""
    from diffusers import DDIMScheduler
    s = policy.cfg.sampler
    scheduler = DDIMScheduler(num_train_timesteps=s.num_train_timesteps, beta_schedule=s.beta_schedule,
                              prediction_type=s.prediction_type, clip_sample=s.clip_sample,
                              clip_sample_range=s.clip_sample_range, set_alpha_to_one=True, steps_offset=0)
    scheduler.set_timesteps(steps)
    with torch.inference_mode():
        batch = policy._window_to_batch(obs)
        cond = policy._condition(policy.encode_observations(batch))
        x = torch.randn((1, policy.cfg.horizon, policy.action_spec.dim), generator=generator, device=policy.device)
        for t in scheduler.timesteps:
            out = policy.denoiser(x, t.to(policy.device).expand(1), cond)
            x = scheduler.step(out, t, x, eta=s.eta).prev_sample
        return policy.normalizer.unnormalize('action', x)


def timed(fn, repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return {'median_ms': round(float(np.median(samples)), 3), 'p99_ms': round(float(np.percentile(samples, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='*', default=None, help='checkpoint dirs (default: every models/*)')
    parser.add_argument('--steps', type=int, nargs='*', default=[5, 10, 16])
    parser.add_argument('--repeats', type=int, default=30)
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads (the node default on the sim: 1)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--compile', action='store_true',
                        help="also time the project path with the denoiser under torch.compile (policy_node's "
                             "accelerate: torch_compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = [Path(p) for p in args.models] if args.models else sorted(
        p for p in (ROOT / 'models').iterdir() if (p / 'config.json').is_file())
    rng = np.random.default_rng(0)
    results = {}
    for path in paths:
        policy = load_checkpoint(path, device=args.device)
        raw = {key: _RawImage(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for key in policy.obs_spec.camera_keys}
        rows = {}
        for steps in args.steps:
            generator = torch.Generator(device=args.device).manual_seed(0)
            ours = timed(lambda: policy.predict_action_chunk(observation(policy, raw, rng), steps, generator),
                         args.repeats)
            reference = timed(lambda: diffusers_chunk(policy, observation(policy, raw, rng), steps, generator),
                              args.repeats)
            rows[f'ddim_{steps}'] = {'project': ours, 'diffusers_reference': reference,
                                     'speedup_median': round(reference['median_ms'] / ours['median_ms'], 3)}
        if args.compile and hasattr(policy, 'denoiser'):
            eager = policy.denoiser
            policy.denoiser = torch.compile(eager, dynamic=False)
            for steps in args.steps:
                generator = torch.Generator(device=args.device).manual_seed(0)
                rows[f'ddim_{steps}']['project_torch_compile'] = timed(
                    lambda: policy.predict_action_chunk(observation(policy, raw, rng), steps, generator), args.repeats)
            policy.denoiser = eager
        results[path.name] = {'parameters': sum(p.numel() for p in policy.parameters()),
                              'cameras': policy.obs_spec.camera_keys, 'image_shape': policy.obs_spec.image_shape,
                              'latency': rows}
    print(json.dumps({'benchmark': 'policy_latency', 'device': args.device, 'threads': args.threads,
                      'cpu': platform.processor() or platform.machine(), 'repeats': args.repeats,
                      'target': 'obs -> chunk p99 <= 40 ms at 10 steps (default model, 2-core CPU)',
                      'models': results}, indent=2))


if __name__ == '__main__':
    main()
