"""Does data loading starve training? Samples/s of the DataLoader alone vs full training steps.

Builds a synthetic pick_place-shaped dataset (96x96 camera, 8 joints) in a temporary directory,
then with the default `config/train_pick_place.yaml` (on CPU unless --device says otherwise):
  - loader: iterating the training DataLoader (configured workers, and 0 workers as the baseline);
  - step_prefetched: optimisation steps on a batch already in memory (the model's own cost);
  - step_with_loader: optimisation steps pulling each batch from the loader (what `dp-ros train` does).
If step_with_loader ~= step_prefetched, the loader keeps up. Prints one JSON object.

    python benchmarks/train_throughput.py [--steps 10] [--batch-size 64] [--episodes 20] [--device cpu]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_policy_ros.training import adapters  # noqa: E402
from diffusion_policy_ros.training.config import load_train_config  # noqa: E402
from diffusion_policy_ros.training.distributed import DistContext, ResumableSampler, resolve_device  # noqa: E402
from diffusion_policy_ros.training.synthetic import write_synthetic_dataset  # noqa: E402
from diffusion_policy_ros.training.train import LossModule, Optimisation, make_loader  # noqa: E402


def _stats(seconds: list[float], batch_size: int) -> dict[str, float]:
    arr = np.asarray(seconds)
    median = float(np.median(arr))
    return {'median_ms': 1e3 * median, 'p99_ms': 1e3 * float(np.percentile(arr, 99)),
            'samples_per_s': batch_size / median, 'n': len(seconds)}


def _time_loader(loader, n_batches: int) -> list[float]:
    times, done = [], 0
    next(iter(loader))  # worker start-up is not throughput
    while done < n_batches:
        start = time.perf_counter()
        for batch in loader:
            times.append(time.perf_counter() - start)
            done += 1
            if done >= n_batches:
                break
            start = time.perf_counter()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', type=Path, default=ROOT / 'config' / 'train_pick_place.yaml')
    parser.add_argument('--steps', type=int, default=10, help='timed training steps per variant')
    parser.add_argument('--loader-batches', type=int, default=30)
    parser.add_argument('--batch-size', type=int, default=None, help='default: the config\'s')
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--episode-length', type=int, default=120)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()

    cfg = load_train_config(args.config)
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    device = resolve_device(args.device)
    ctx = DistContext(0, 0, 1, device, None)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        camera_keys = cfg.dataset.camera_keys if cfg.dataset.camera_keys is not None else ['camera']
        path = write_synthetic_dataset(Path(tmp) / 'bench.zarr', n_episodes=args.episodes,
                                       episode_length=args.episode_length, n_joints=8,
                                       camera_keys=camera_keys, image_size=(96, 96))
        data = adapters.open_dataset(path, cfg)
        result: dict[str, object] = {
            'config': str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
            'device': str(device), 'torch_threads': torch.get_num_threads(), 'batch_size': cfg.train.batch_size,
            'windows': len(data.train), 'cameras': camera_keys,
        }
        loaders = {}
        for workers in sorted({cfg.train.num_workers, 0}):
            cfg.train.num_workers = workers
            sampler = ResumableSampler(data.train, ctx, seed=0)
            loaders[workers] = make_loader(data.train, cfg, ctx, sampler=sampler, generator=torch.Generator())
            result[f'loader_workers_{workers}'] = _stats(_time_loader(loaders[workers], args.loader_batches),
                                                         cfg.train.batch_size)

        policy = adapters.build_policy_for(cfg, data, device).train()
        result['parameters'] = sum(p.numel() for p in policy.parameters())
        opt = Optimisation.create(cfg, policy, device)
        module = LossModule(policy)
        batch = next(iter(loaders[0]))
        for _ in range(2):  # warm-up (allocator, kernels)
            opt.step(module, batch)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            opt.step(module, batch)
            times.append(time.perf_counter() - start)
        result['step_prefetched'] = _stats(times, cfg.train.batch_size)

        loader = loaders[max(loaders)]
        times, iterator = [], iter(itertools.chain.from_iterable(itertools.repeat(loader)))
        for _ in range(args.steps):
            start = time.perf_counter()
            opt.step(module, next(iterator))
            times.append(time.perf_counter() - start)
        result['step_with_loader'] = _stats(times, cfg.train.batch_size)
        result['loader_headroom'] = (result[f'loader_workers_{max(loaders)}']['samples_per_s']
                                     / result['step_prefetched']['samples_per_s'])
    print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
