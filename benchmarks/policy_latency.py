"""Observation window -> action chunk latency of the default policy: reference, teacher, student, runtimes.

One run times, alternating call by call so that every path sees the same machine state:

- `reference`: the teacher's encoder and network stepped by diffusers' `DDIMScheduler` (10 steps), the
  path of Chi et al.'s reference code;
- `teacher_ddim10`: the project's sampler on the teacher (precomputed step tables), eager PyTorch;
- `student_eager`: the distilled student (its own number of evaluations), eager PyTorch;
- `student_torch_compile`: the student's denoiser under torch.compile (inductor);
- `student_onnxruntime`: the student's whole chunk as one ONNX Runtime graph (core/onnx_runtime.py);
- `teacher_onnxruntime`: the teacher's 10 steps on the same runtime;
- on CUDA, `student_cuda_graphs` (accelerate: cuda_graphs) instead of the ONNX Runtime paths.

for 1 and 2 intra-op threads, quiet and with a CPU hog process (`while True: pass`) beside it. Ratios are
the reference's median / p99 over the path's, from the same run. Prints one JSON object.

    python benchmarks/policy_latency.py [--teacher models/pick_place] [--student models/pick_place_fast] \\
        [--rounds 200] [--threads 1 2] [--loads quiet hog] [--out latency.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from diffusion_policy_ros.core.checkpoint import load_checkpoint
from diffusion_policy_ros.core.runtime import make_predictor

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = 'reference'
TARGETS = {'student_p99_ms_1_thread_quiet': 10.0, 'student_p99_ms_1_thread_hog': 25.0,
           'speedup_vs_reference_median': 6.0, 'stretch_student_p99_ms_1_thread_quiet': 5.0}


def example_window(policy, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A model-ready observation window: uint8 frames at the model's size and states within the data's range."""
    spec, n_obs = policy.obs_spec, policy.cfg.n_obs_steps
    window = {key: rng.integers(0, 255, (n_obs, *spec.image_shape, 3), dtype=np.uint8) for key in spec.camera_keys}
    stats = policy.normalizer.stats('state')
    window['state'] = rng.uniform(stats['min'], stats['max'], (n_obs, len(stats['min']))).astype(np.float32)
    return window


def diffusers_chunk(policy, window: dict[str, np.ndarray], steps: int, generator: torch.Generator) -> torch.Tensor:
    """The reference path: the same encoder and denoiser, stepped by diffusers' DDIMScheduler."""
    from diffusers import DDIMScheduler
    s = policy.cfg.sampler
    scheduler = DDIMScheduler(num_train_timesteps=s.num_train_timesteps, beta_schedule=s.beta_schedule,
                              prediction_type=s.prediction_type, clip_sample=s.clip_sample,
                              clip_sample_range=s.clip_sample_range, set_alpha_to_one=True, steps_offset=0)
    scheduler.set_timesteps(steps)
    with torch.inference_mode():
        batch = policy._window_to_batch(window)
        cond = policy._condition(policy.encode_observations(batch))
        x = torch.randn((1, policy.cfg.horizon, policy.action_spec.dim), generator=generator, device=policy.device)
        for t in scheduler.timesteps:
            out = policy.denoiser(x, t.to(policy.device).expand(1), cond)
            x = scheduler.step(out, t, x, eta=s.eta).prev_sample
        return policy.normalizer.unnormalize('action', x)


def summary(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {'median_ms': round(float(np.median(values)), 3), 'p99_ms': round(float(np.percentile(values, 99)), 3),
            'max_ms': round(float(values.max()), 3), 'samples': int(values.size)}


def alternate(paths: dict[str, Callable[[], object]], rounds: int, warmup: int, sync: Callable[[], None]
              ) -> dict[str, dict[str, float]]:
    """Every path once per round, in a rotating order, so that a disturbance hits them all alike."""
    names = list(paths)
    for _ in range(warmup):
        for name in names:
            paths[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            paths[name]()
            sync()
            samples[name].append((time.perf_counter() - start) * 1e3)
    rows = {name: summary(values) for name, values in samples.items()}
    reference = rows.get(REFERENCE)
    if reference is not None:
        for name, row in rows.items():
            row['speedup_median'] = round(reference['median_ms'] / row['median_ms'], 2)
            row['speedup_p99'] = round(reference['p99_ms'] / row['p99_ms'], 2)
    return rows


class CpuHog:
    """A busy-looping process beside the measurement, as a training job or another node would be."""

    def __enter__(self) -> 'CpuHog':
        self.process = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


def build_paths(teacher, student, student_path: Path, steps: int, threads: int, device: str, compiled
                ) -> dict[str, Callable]:
    rng = np.random.default_rng(0)
    window = example_window(teacher, rng)
    generator = torch.Generator(device=device).manual_seed(0)
    paths: dict[str, Callable] = {
        REFERENCE: lambda: diffusers_chunk(teacher, window, steps, generator),
        'teacher_ddim10': lambda: teacher.predict_action_chunk(window, steps, generator),
    }
    if student is not None:
        paths['student_eager'] = lambda: student.predict_action_chunk(window, None, generator)
        if compiled is not None:
            paths['student_torch_compile'] = lambda: compiled.predict_action_chunk(window, None, generator)
    if device.startswith('cuda') and student is not None:
        graphs = make_predictor(load_checkpoint(student_path, device=device), 'cuda_graphs', device=device)
        paths['student_cuda_graphs'] = lambda: graphs.predict_action_chunk(window, None, generator)
    if device == 'cpu':
        if student is not None:
            student_ort = make_predictor(student, 'onnxruntime', threads=threads)
            paths['student_onnxruntime'] = lambda: student_ort.predict_action_chunk(window, None, generator)
        teacher_ort = make_predictor(teacher, 'onnxruntime', num_inference_steps=steps, threads=threads)
        paths['teacher_onnxruntime'] = lambda: teacher_ort.predict_action_chunk(window, None, generator)
    return paths


def check_targets(conditions: dict[str, dict]) -> dict[str, object]:
    """The issue's targets, read off this run (the student on its fastest runtime)."""
    def fastest(rows: dict) -> tuple[str, dict] | None:
        students = {k: v for k, v in rows.items() if k.startswith('student_')}
        return min(students.items(), key=lambda kv: kv[1]['p99_ms']) if students else None
    out: dict[str, object] = {}
    for load in ('quiet', 'hog'):
        rows = conditions.get(f'1_thread_{load}')
        best = fastest(rows) if rows else None
        if best is None:
            continue
        name, row = best
        out[f'student_fastest_1_thread_{load}'] = {'path': name, 'p99_ms': row['p99_ms'],
                                                   'speedup_median': row.get('speedup_median')}
        bound = TARGETS[f'student_p99_ms_1_thread_{load}']
        out[f'p99_within_{bound:g}_ms_1_thread_{load}'] = row['p99_ms'] <= bound
        if load == 'quiet':
            out['speedup_at_least_6x'] = (row.get('speedup_median') or 0) >= TARGETS['speedup_vs_reference_median']
            out['stretch_p99_within_5_ms'] = row['p99_ms'] <= TARGETS['stretch_student_p99_ms_1_thread_quiet']
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--teacher', type=Path, default=ROOT / 'models' / 'pick_place')
    parser.add_argument('--student', type=Path, default=ROOT / 'models' / 'pick_place_fast',
                        help='distilled checkpoint (skipped when absent)')
    parser.add_argument('--steps', type=int, default=10, help="the teacher's and the reference's DDIM steps")
    parser.add_argument('--rounds', type=int, default=200, help='timed calls per path and condition')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--loads', nargs='+', choices=('quiet', 'hog'), default=['quiet', 'hog'])
    parser.add_argument('--no-compile', action='store_true', help='skip the torch.compile path')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', type=Path, help='also write the JSON here')
    args = parser.parse_args()

    teacher = load_checkpoint(args.teacher, device=args.device)
    student = load_checkpoint(args.student, device=args.device) if (args.student / 'config.json').is_file() else None
    compiled, compile_error = None, None
    if student is not None and not args.no_compile:
        try:
            compiled = make_predictor(load_checkpoint(args.student, device=args.device), 'torch_compile',
                                      device=args.device)
            compiled.predict_action_chunk(example_window(student, np.random.default_rng(1)), None, None)
        except Exception as exc:  # inductor needs a C compiler; report instead of failing the benchmark
            compiled, compile_error = None, f'{type(exc).__name__}: {exc}'.splitlines()[0][:300]
    sync = torch.cuda.synchronize if args.device.startswith('cuda') else (lambda: None)
    conditions: dict[str, dict] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        paths = build_paths(teacher, student, args.student, args.steps, threads, args.device, compiled)
        for load in args.loads:
            label = f'{threads}_thread{"s" if threads > 1 else ""}_{load}'
            if load == 'hog':
                with CpuHog():
                    conditions[label] = alternate(paths, args.rounds, args.warmup, sync)
            else:
                conditions[label] = alternate(paths, args.rounds, args.warmup, sync)
            print(f'[policy_latency] {label}: ' + ', '.join(
                f"{name} {row['median_ms']:.1f}/{row['p99_ms']:.1f} ms" for name, row in conditions[label].items()),
                file=sys.stderr)
    result = {
        'benchmark': 'policy_latency', 'device': args.device, 'cpu': platform.processor() or platform.machine(),
        'torch': torch.__version__, 'rounds': args.rounds,
        'teacher': {'path': str(args.teacher), 'parameters': sum(p.numel() for p in teacher.parameters()),
                    'steps': args.steps},
        'student': None if student is None else {
            'path': str(args.student), 'sampler': student.cfg.sampler.kind,
            'network_evaluations': student.cfg.sampler.num_inference_steps},
        'torch_compile_error': compile_error,
        'conditions': conditions,
        'targets': check_targets(conditions),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
