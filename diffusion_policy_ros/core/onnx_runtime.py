"""A diffusion policy's whole chunk sampling as one ONNX Runtime graph, built in memory at configure.

Why: at batch 1 on a CPU the network is small and PyTorch spends most of a forward pass in Python and
per-operator dispatch; the same U-Net forward took 15 ms in ONNX Runtime against 39 ms eager here
(benchmarks/policy_latency.py has the figures). The graph holds everything a chunk needs - image and
state normalisation, the observation encoder, every denoising step of the sampler (unrolled: the step
coefficients are constants) and the unnormalisation - so one `run` call, which releases the GIL for
its whole duration, replaces the Python loop. The initial noise is an input, so a seeded generator
gives the eager chunk exactly (within float rounding). The graph is exported from the loaded
checkpoint with torch.onnx and never written to disk or unpickled.
"""
from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn


class _ChunkGraph(nn.Module):
    """(camera frames uint8 (1, T, 3, H, W) each, state (1, T, D), noise (1, horizon, A)) -> chunk."""

    def __init__(self, policy: nn.Module, num_inference_steps: int) -> None:
        super().__init__()
        self.policy = policy
        self.steps = num_inference_steps
        self.camera_keys = list(policy.obs_spec.camera_keys)
        self.has_state = bool(policy.obs_spec.state_dim)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        policy = self.policy
        names = self.camera_keys + (['state'] if self.has_state else [])
        batch = dict(zip(names, inputs[:-1]))
        cond = policy._condition(policy.encode_observations(batch))
        sampler = policy.sampler
        table = sampler.table(self.steps)
        x = inputs[-1]
        for index, t in enumerate(table.timesteps):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long)
            x, _ = sampler.step_by_index(policy.denoiser(x, t_batch, cond), index, x, None, len(table.timesteps))
        return policy.normalizer.unnormalize('action', x)


class OnnxChunkSampler:
    """`predict_action_chunk` of a DiffusionPolicy through ONNX Runtime (CPU), same inputs and outputs."""

    def __init__(self, policy: nn.Module, num_inference_steps: int | None = None, threads: int = 1) -> None:
        import onnxruntime as ort
        if not hasattr(policy, 'denoiser'):
            raise ValueError(f'onnxruntime runs diffusion policies; this checkpoint is {policy.cfg.policy}')
        sampler_cfg = policy.cfg.sampler
        if sampler_cfg.kind == 'ddim' and sampler_cfg.eta > 0 or sampler_cfg.kind == 'ddpm':
            raise ValueError('onnxruntime needs a deterministic sampler (DDIM with eta 0): the graph has no '
                             'noise input for stochastic steps')
        if policy.guidance_scale != 1.0:
            raise ValueError('onnxruntime does not run classifier-free guidance (guidance_scale != 1)')
        self.policy = policy
        self.steps = num_inference_steps or sampler_cfg.num_inference_steps
        self.names = list(policy.obs_spec.camera_keys) + (['state'] if policy.obs_spec.state_dim else [])
        example = self._inputs(self._example_window(), np.zeros(self._noise_shape(), np.float32))
        graph = _ChunkGraph(policy.to('cpu').eval(), self.steps)
        buffer = io.BytesIO()
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every Python-level shape check in the modules: at batch 1 with fixed
            # shapes each of them is constant, which is what the graph records.
            warnings.simplefilter('ignore')
            torch.onnx.export(graph, tuple(torch.from_numpy(v) for v in example.values()), buffer, dynamo=False,
                              input_names=list(example), output_names=['actions'])
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=['CPUExecutionProvider'])

    def _noise_shape(self) -> tuple[int, int, int]:
        return (1, self.policy.cfg.horizon, self.policy.action_spec.dim)

    def _example_window(self) -> dict[str, np.ndarray]:
        n_obs, (h, w) = self.policy.cfg.n_obs_steps, self.policy.obs_spec.image_shape
        window = {key: np.zeros((n_obs, h, w, 3), np.uint8) for key in self.policy.obs_spec.camera_keys}
        if self.policy.obs_spec.state_dim:
            window['state'] = np.zeros((n_obs, self.policy.obs_spec.state_dim), np.float32)
        return window

    def _inputs(self, window: dict[str, Any], noise: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.policy._window_to_batch(window)  # the eager path's checks and layout
        inputs = {name: batch[name].cpu().numpy() for name in self.names}
        inputs['noise'] = noise.astype(np.float32)
        return inputs

    def predict_action_chunk(self, obs_window: dict[str, Any], num_inference_steps: int | None = None,
                             generator: torch.Generator | None = None) -> np.ndarray:
        """(horizon, action_dim) float32 chunk in robot units; the noise is drawn as the eager sampler
        draws it (`torch.randn` of the chunk's shape with `generator`), so both give the same chunk."""
        if num_inference_steps not in (None, self.steps):
            raise ValueError(f'this ONNX graph samples in {self.steps} steps, not {num_inference_steps}')
        draw = torch.randn(self._noise_shape(), generator=generator).numpy()
        return self.session.run(None, self._inputs(obs_window, draw))[0][0].astype(np.float32)
