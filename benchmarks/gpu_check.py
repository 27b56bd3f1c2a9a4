"""Every GPU path of the package in one process: CUDA inference, CUDA graphs, autocast training, NCCL.

None of these paths can run on the 2-core CI machine; this is what a session with a lent GPU runs first
(through benchmarks/gpu_check.sh). Each check prints one line `ok NAME ...` or `FAIL NAME: why`, and
the whole prints one JSON object at the end; the exit status is the number of failed checks.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--rounds 300]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_policy_ros.core.checkpoint import load_checkpoint  # noqa: E402
from diffusion_policy_ros.core.runtime import make_predictor  # noqa: E402
from policy_latency import example_window  # noqa: E402  (benchmarks/, beside this script)

TEACHER = ROOT / 'models' / 'pick_place'
STUDENT = ROOT / 'models' / 'pick_place_fast'


def latency(fn: Callable[[], object], rounds: int) -> dict[str, float]:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return {'median_ms': round(float(np.median(samples)), 3), 'p99_ms': round(float(np.percentile(samples, 99)), 3)}


def chunk(policy, window, steps=None) -> np.ndarray:
    return np.asarray(policy.predict_action_chunk(window, steps, torch.Generator(device=policy.device).manual_seed(0)))


def check_inference(rounds: int) -> dict:
    """The shipped checkpoints on CUDA give the CPU's chunk (same noise) and how fast."""
    out = {}
    for path in (TEACHER, STUDENT):
        if not (path / 'config.json').is_file():
            continue
        window = example_window(load_checkpoint(path), np.random.default_rng(0))
        cpu = load_checkpoint(path, device='cpu')
        gpu = load_checkpoint(path, device='cuda')
        # The noise is drawn on each device's generator, so compare the deterministic part: one shared noise.
        noise = torch.randn((1, cpu.cfg.horizon, cpu.action_spec.dim), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            a = cpu.sampler.sample(cpu.denoiser, noise.shape, cpu._condition(cpu.encode_observations(
                cpu._window_to_batch(window))), noise=noise)
            b = gpu.sampler.sample(gpu.denoiser, noise.shape, gpu._condition(gpu.encode_observations(
                gpu._window_to_batch(window))), noise=noise.cuda())
        diff = float((a - b.cpu()).abs().max())
        if diff > 1e-3:
            raise AssertionError(f'{path.name}: CUDA chunk differs from the CPU one by {diff:.2e} (> 1e-3)')
        out[path.name] = {'max_abs_diff_vs_cpu': diff, 'eager': latency(lambda: chunk(gpu, window), rounds)}
    return out


def check_cuda_graphs(rounds: int) -> dict:
    """accelerate: cuda_graphs (torch.compile reduce-overhead) matches eager CUDA and is timed."""
    out = {}
    for path in (STUDENT, TEACHER):
        if not (path / 'config.json').is_file():
            continue
        eager = load_checkpoint(path, device='cuda')
        window = example_window(eager, np.random.default_rng(0))
        graphs = make_predictor(load_checkpoint(path, device='cuda'), 'cuda_graphs', device='cuda')
        diff = float(np.abs(chunk(graphs, window) - chunk(eager, window)).max())
        if diff > 1e-3:
            raise AssertionError(f'{path.name}: cuda_graphs chunk differs from eager by {diff:.2e} (> 1e-3)')
        out[path.name] = {'max_abs_diff_vs_eager': diff, 'cuda_graphs': latency(lambda: chunk(graphs, window), rounds)}
    if STUDENT.name in out:
        out['student_p99_within_2_ms'] = out[STUDENT.name]['cuda_graphs']['p99_ms'] <= 2.0
    return out


def synthetic_batch(policy, batch_size: int = 8) -> dict[str, torch.Tensor]:
    spec, n_obs = policy.obs_spec, policy.cfg.n_obs_steps
    batch = {key: torch.randint(0, 255, (batch_size, n_obs, 3, *spec.image_shape), dtype=torch.uint8)
             for key in spec.camera_keys}
    batch['state'] = torch.rand(batch_size, n_obs, spec.state_dim)
    batch['action'] = torch.rand(batch_size, policy.cfg.horizon, policy.action_spec.dim)
    return batch


def check_training(distributed: bool) -> dict:
    """One bf16-autocast optimiser step (the training loop's own Optimisation), plain or DDP over NCCL."""
    from diffusion_policy_ros.training.config import TrainConfig
    from diffusion_policy_ros.training.distributed import DistContext, all_reduce_mean
    from diffusion_policy_ros.training.train import LossModule, Optimisation
    policy = load_checkpoint(TEACHER, device='cuda').train()
    cfg = TrainConfig.from_dict({'policy': policy.cfg.to_dict(), 'train': {'amp': 'bf16', 'steps': 10}})
    step = Optimisation.create(cfg, policy, torch.device('cuda'))
    module: torch.nn.Module = LossModule(policy)
    if distributed:
        import torch.distributed as dist
        os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
        os.environ.setdefault('MASTER_PORT', '29531')
        dist.init_process_group('nccl', rank=0, world_size=1, device_id=torch.device('cuda', 0))
        module = torch.nn.parallel.DistributedDataParallel(module, device_ids=[0])
    try:
        before = next(policy.denoiser.parameters()).detach().clone()
        loss = step.step(module, synthetic_batch(policy))
        changed = float((next(policy.denoiser.parameters()) - before).abs().max())
        if not np.isfinite(loss) or changed == 0.0:
            raise AssertionError(f'bf16 step: loss {loss}, largest parameter change {changed}')
        result = {'loss': loss, 'amp_dtype': str(step.amp_dtype)}
        if distributed:
            ctx = DistContext(0, 0, 1, torch.device('cuda', 0), 'nccl')
            result['all_reduce_mean'] = all_reduce_mean(ctx, 3.0)
            if result['all_reduce_mean'] != 3.0:
                raise AssertionError(f"NCCL all_reduce of 3.0 over one rank gave {result['all_reduce_mean']}")
        return result
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=300)
    parser.add_argument('--out', type=Path)
    args = parser.parse_args()
    results: dict[str, object] = {'torch': torch.__version__, 'cuda': torch.version.cuda}
    if not torch.cuda.is_available():
        print('FAIL cuda: torch sees no CUDA device', file=sys.stderr)
        return 1
    results['gpu'] = torch.cuda.get_device_name()
    failures = 0
    checks = {'cuda_inference': lambda: check_inference(args.rounds),
              'cuda_graphs': lambda: check_cuda_graphs(args.rounds),
              'autocast_bf16_training_step': lambda: check_training(False),
              'nccl_ddp_training_step': lambda: check_training(True)}
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            results[name] = check()
            print(f'ok {name} ({time.perf_counter() - start:.1f} s): {json.dumps(results[name])}', flush=True)
        except Exception as exc:
            failures += 1
            results[name] = {'error': f'{type(exc).__name__}: {exc}'}
            print(f'FAIL {name}: {type(exc).__name__}: {exc}', flush=True)
            traceback.print_exc()
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + '\n')
    print(text)
    return failures


if __name__ == '__main__':
    sys.exit(main())
