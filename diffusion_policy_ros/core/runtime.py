"""How a loaded policy runs: eager PyTorch, torch.compile, CUDA graphs or ONNX Runtime.

`make_predictor` returns an object with the policy's `predict_action_chunk(window, num_inference_steps,
generator)`, so the node, the evaluator and the benchmarks choose a runtime by name and call it alike.
"""
from __future__ import annotations

from typing import Any

ACCELERATIONS = ('none', 'torch_compile', 'cuda_graphs', 'onnxruntime')


def pick_device(requested: str) -> str:
    """'auto' -> cuda when there is one, else cpu; an explicit cuda without CUDA is an error."""
    import torch
    if requested == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if requested not in ('cpu', 'cuda') and not requested.startswith('cuda:'):
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    if requested.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'device {requested!r} requested but CUDA is not available')
    return requested


def make_predictor(policy: Any, how: str, device: str = 'cpu', num_inference_steps: int | None = None,
                   threads: int = 1) -> Any:
    """`policy` itself (eager, or its denoiser compiled) or an ONNX Runtime sampler of it.

    torch_compile: inductor on the denoiser (CPU or GPU); cuda_graphs: torch.compile's reduce-overhead
    mode, the denoiser step replayed as a CUDA graph (device cuda); onnxruntime: the whole chunk sampling
    as one ONNX graph on the CPU (core.onnx_runtime), built here, in memory."""
    if how not in ACCELERATIONS:
        raise ValueError(f'accelerate must be one of {ACCELERATIONS}, got {how!r}')
    if how == 'none':
        return policy
    if not hasattr(policy, 'denoiser'):
        raise ValueError(f'accelerate {how} applies to diffusion policies; this checkpoint is {policy.cfg.policy}')
    if how == 'onnxruntime':
        if str(device) != 'cpu':
            raise ValueError(f'accelerate onnxruntime runs on the CPU; device is {device}')
        from .onnx_runtime import OnnxChunkSampler
        return OnnxChunkSampler(policy, num_inference_steps, threads)
    import torch
    if how == 'cuda_graphs' and not str(device).startswith('cuda'):
        raise ValueError('accelerate cuda_graphs needs device cuda')
    policy.denoiser = torch.compile(policy.denoiser, mode='reduce-overhead' if how == 'cuda_graphs' else 'default',
                                    dynamic=False)
    return policy
