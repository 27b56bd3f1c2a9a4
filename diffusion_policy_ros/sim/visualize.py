"""`dp-ros viz-denoise`: an action chunk going from noise to actions, DDPM beside DDIM.

One observation window is taken from the simulator (the scripted expert drives the arm up to
`at_time`, so the window is a real on-distribution observation), then the policy's denoiser is run
with two samplers built from the checkpoint's own schedule: DDPM with 100 steps and DDIM with 20,
from the SAME initial noise, so the picture shows only what the sampler changes. The samplers'
`return_intermediates` gives every x_t; they are unnormalised to robot units (rad) for plotting.
Outputs a PNG grid (joints x samplers, colour = denoising progress) and a GIF (progress over time).
matplotlib and imageio are imported only when drawing.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..jsonio import write_json

DEFAULT_JOINTS: tuple[int, ...] = (0, 1, 2)
GIF_FRAMES = 26  # progress 0, 1/25, ..., 1 for both samplers at once


@dataclass
class DenoisingTrace:
    """x_T ... x_0 of one sampler run, in robot units: `chain[k]` is the chunk after k steps."""

    label: str
    steps: int
    chain: np.ndarray  # (steps + 1, horizon, action_dim)

    def at_progress(self, fraction: float) -> np.ndarray:
        """The chunk after round(fraction * steps) steps (fraction in [0, 1])."""
        return self.chain[int(round(min(max(fraction, 0.0), 1.0) * self.steps))]


def observation_from_sim(policy: Any, task: str, seed: int, at_time: float | None = None,
                         camera_map: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """The window the policy would see at sim time `at_time` (default: as soon as the window is full)
    of episode `seed`, with the scripted expert driving the arm until then."""
    from ..control.observation import ObservationHistory, ObservationWindow
    from ..data.image_codec import prepare_model_image
    from .arm import SimArm
    from .evaluate import _camera_map, default_sim_config
    from .experts import ScriptedExpert
    from .rollout import rollout

    n_obs = _cfg(policy).n_obs_steps
    spec = policy.obs_spec
    cameras = _camera_map(spec.camera_keys, camera_map)
    joints = spec.joint_names or policy.action_spec.joint_names
    with SimArm(default_sim_config(task, policy, camera_map)) as arm:
        period = 1.0 / arm.cfg.control_hz
        earliest = (n_obs - 1) * period
        t = earliest if at_time is None else max(float(at_time), earliest)
        if t >= arm.cfg.time_limit:
            raise ValueError(f'at_time {t} s is past the {task} time limit {arm.cfg.time_limit} s')
        arm.reset(task=task, seed=seed)
        expert = ScriptedExpert(arm)
        history = ObservationHistory(list(spec.camera_keys), list(joints), capacity=4096)

        def on_image(stamp_ns: int, camera: str, rgb: np.ndarray) -> None:
            for key, sim_camera in cameras.items():
                if sim_camera == camera:
                    history.push_image(key, stamp_ns / 1e9, prepare_model_image(rgb, spec.image_shape))

        rollout(arm, expert.act, on_joint_state=lambda ns, names, q, v: history.push_joint_state(ns / 1e9, names, q),
                on_image=on_image if cameras else None, cameras=tuple(sorted(set(cameras.values()))),
                max_seconds=t)
        window = history.build_window(t, n_obs, period)
    if not isinstance(window, ObservationWindow):
        raise RuntimeError(f'no observation window at t={t} s of {task} seed {seed}: {window}')
    return window.as_policy_input()


def denoising_traces(policy: Any, obs_window: dict[str, np.ndarray], *, ddpm_steps: int = 100,
                     ddim_steps: int = 20, seed: int = 0) -> list[DenoisingTrace]:
    """Run DDPM (`ddpm_steps`) and DDIM (`ddim_steps`) from the same initial noise on one window.

    The samplers use the checkpoint's schedule and prediction type; the policy's own sampler is put
    back afterwards (the swap lets `predict_action` keep its guidance and normalisation logic).
    """
    from ..core.samplers import build_sampler

    if getattr(_cfg(policy), 'policy', None) != 'diffusion' or not hasattr(policy, 'sampler'):
        raise ValueError(f'viz-denoise needs a diffusion policy; this one is {getattr(_cfg(policy), "policy", "?")!r} '
                         f'(a BC policy regresses the chunk in one step: there is no denoising to show)')
    settings = _cfg(policy).sampler
    runs = [(f'DDPM, {ddpm_steps} steps', ddpm_steps, build_sampler(replace(
                settings, kind='ddpm', timestep_spacing='leading', num_inference_steps=ddpm_steps))),
            (f'DDIM, {ddim_steps} steps', ddim_steps, build_sampler(replace(
                settings, kind='ddim', num_inference_steps=ddim_steps)))]
    batch = policy._window_to_batch(obs_window)
    original = policy.sampler
    traces = []
    try:
        for label, steps, sampler in runs:
            policy.sampler = sampler
            generator = torch.Generator(device='cpu').manual_seed(seed)  # same x_T for both samplers
            _, chain = policy.predict_action(batch, num_inference_steps=steps, generator=generator,
                                             return_intermediates=True)
            with torch.inference_mode():
                actions = policy.normalizer.unnormalize('action', torch.stack([x[0] for x in chain]))
            traces.append(DenoisingTrace(label, steps, actions.detach().cpu().numpy().astype(np.float64)))
    finally:
        policy.sampler = original
    return traces


def _cfg(policy: Any) -> Any:
    """The policy's PolicyConfig (`.config` where a policy offers it, core's `.cfg` otherwise)."""
    return getattr(policy, 'config', None) or policy.cfg


# ----------------------------------------------------------------------------------------- drawing
def _time_axis(policy: Any, dt: float) -> np.ndarray:
    """Seconds of each chunk row relative to the newest observation (row n_obs_steps - 1 is 0)."""
    return (np.arange(_cfg(policy).horizon) - (_cfg(policy).n_obs_steps - 1)) * dt


def _limits(traces: Sequence[DenoisingTrace], joints: Sequence[int]) -> list[tuple[float, float]]:
    out = []
    for j in joints:
        values = np.concatenate([t.chain[:, :, j].ravel() for t in traces])
        lo, hi = np.percentile(values, [1, 99])
        pad = 0.05 * max(hi - lo, 1e-3)
        out.append((lo - pad, hi + pad))
    return out


def plot_grid(policy: Any, traces: Sequence[DenoisingTrace], path: Path, joints: Sequence[int],
              dt: float = 0.1, curves: int = 12) -> None:
    """Rows = joints, columns = samplers; `curves` snapshots coloured from noise (light) to actions (dark)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = policy.action_spec.joint_names or [f'joint {j}' for j in range(policy.action_spec.dim)]
    time_axis = _time_axis(policy, dt)
    executed = (0.0, (_cfg(policy).n_action_steps - 1) * dt)
    figure = Figure(figsize=(4.2 * len(traces), 2.4 * len(joints)))
    FigureCanvasAgg(figure)
    axes = np.atleast_2d(figure.subplots(len(joints), len(traces), sharex=True, squeeze=False))
    colours = colormaps['viridis_r']
    limits = _limits(traces, joints)
    for col, trace in enumerate(traces):
        picks = np.unique(np.linspace(0, trace.steps, min(curves, trace.steps + 1)).round().astype(int))
        for row, j in enumerate(joints):
            axis = axes[row, col]
            axis.axvspan(*executed, color='0.9', zorder=0)
            for k in picks[:-1]:
                axis.plot(time_axis, trace.chain[k, :, j], color=colours(k / trace.steps), lw=0.9, alpha=0.8)
            axis.plot(time_axis, trace.chain[-1, :, j], color='black', lw=2.0, label='final')
            axis.set_ylim(*limits[row])
            axis.grid(alpha=0.3)
            if row == 0:
                axis.set_title(trace.label)
            if col == 0:
                axis.set_ylabel(f'{names[j]} (rad)')
            if row == len(joints) - 1:
                axis.set_xlabel('time from newest observation (s); grey: executed')
    figure.suptitle('action chunk from noise (light) to actions (black)')
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def write_denoising_gif(policy: Any, traces: Sequence[DenoisingTrace], path: Path, joints: Sequence[int],
                        dt: float = 0.1, frames: int = GIF_FRAMES) -> None:
    """Both samplers side by side, the chosen joints over the horizon, denoising progress over time."""
    if frames < 2:
        raise ValueError(f'write_denoising_gif: frames must be >= 2 (noise and actions), got {frames}')
    from diffusion_policy_ros.gif import write_gif
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = policy.action_spec.joint_names or [f'joint {j}' for j in range(policy.action_spec.dim)]
    time_axis = _time_axis(policy, dt)
    limits = _limits(traces, joints)
    low, high = min(lo for lo, _ in limits), max(hi for _, hi in limits)
    # One figure, lines updated in place: re-laying out a figure per frame costs ~0.5 s on a busy CPU.
    figure = Figure(figsize=(4.0 * len(traces), 3.0), dpi=80)
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(traces), squeeze=False)[0]
    lines = []
    for axis, trace in zip(axes, traces):
        start = trace.at_progress(0.0)
        lines.append([axis.plot(time_axis, start[:, j], marker='.', label=names[j])[0] for j in joints])
        axis.set(ylim=(low, high), xlabel='time from newest observation (s)', title=f'{trace.label}: 0/{trace.steps}')
        axis.grid(alpha=0.3)
    axes[0].set_ylabel('joint position (rad)')
    axes[-1].legend(loc='upper right', fontsize='small')
    figure.tight_layout()
    images = []
    for frame in range(frames):
        progress = frame / (frames - 1)
        for axis, trace, trace_lines in zip(axes, traces, lines):
            chunk = trace.at_progress(progress)
            for line, j in zip(trace_lines, joints):
                line.set_ydata(chunk[:, j])
            axis.set_title(f'{trace.label}: {int(round(progress * trace.steps))}/{trace.steps}')
        canvas.draw()
        images.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    periods_s = [0.12] * (frames - 1) + [1.5]  # hold the final actions
    write_gif(path, images, periods_s)


def visualize_denoising(checkpoint_or_policy: Any, out_dir: str | Path, *, task: str = 'reach_around',
                        seed: int = 1000, at_time: float | None = None, ddpm_steps: int = 100,
                        ddim_steps: int = 20, joints: Sequence[int] = DEFAULT_JOINTS, device: str = 'cpu',
                        noise_seed: int = 0, camera_map: Mapping[str, str] | None = None,
                        gif_frames: int = GIF_FRAMES) -> tuple[dict[str, str], dict[str, Any]]:
    """Write `out_dir`/denoise.png, denoise.gif and denoise.json (the final chunks); returns their paths
    and what denoise.json holds."""
    from .evaluate import load_policy

    policy, label = load_policy(checkpoint_or_policy, device)
    dim = policy.action_spec.dim
    bad = [j for j in joints if not 0 <= int(j) < dim]
    if bad or not joints:
        raise ValueError(f'joints must be indices in [0, {dim}) of {policy.action_spec.joint_names}, '
                         f'got {list(joints)}')
    window = observation_from_sim(policy, task, seed, at_time, camera_map)
    traces = denoising_traces(policy, window, ddpm_steps=ddpm_steps, ddim_steps=ddim_steps, seed=noise_seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {'png': str(out / 'denoise.png'), 'gif': str(out / 'denoise.gif'), 'json': str(out / 'denoise.json')}
    plot_grid(policy, traces, Path(files['png']), joints)
    write_denoising_gif(policy, traces, Path(files['gif']), joints, frames=gif_frames)
    summary = {'policy': label, 'task': task, 'seed': seed, 'noise_seed': noise_seed,
               'joint_names': list(policy.action_spec.joint_names),
               'state': np.asarray(window['state'], dtype=float).tolist(),
               'final_chunks': {t.label: t.chain[-1].tolist() for t in traces},
               # How far apart the two samplers land from the same noise (rad, max over the chunk).
               'ddpm_vs_ddim_max_abs_diff': float(np.max(np.abs(traces[0].chain[-1] - traces[1].chain[-1])))}
    write_json(files['json'], summary)
    return files, summary


# ----------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True, type=Path, help='checkpoint directory or run folder')
    parser.add_argument('--out', required=True, type=Path, help='folder for the plots and the GIF')
    parser.add_argument('--task', default='reach_around', choices=('reach_around', 'pick_place'),
                        help='sim task the observation comes from')
    parser.add_argument('--seed', type=int, default=1000, help='episode seed of the observation')
    parser.add_argument('--at-time', type=float, default=None,
                        help='sim seconds the scripted expert drives before the window is taken')
    parser.add_argument('--ddpm-steps', type=int, default=100, help='steps of the DDPM trace')
    parser.add_argument('--ddim-steps', type=int, default=20, help='steps of the DDIM trace')
    parser.add_argument('--joints', type=int, nargs='+', default=list(DEFAULT_JOINTS), help='action indices to plot')
    parser.add_argument('--noise-seed', type=int, default=0, help='seed of the starting noise (both traces share it)')
    parser.add_argument('--gif-frames', type=int, default=GIF_FRAMES, help='frames from noise to actions')
    parser.add_argument('--device', default='cpu', help='torch device: cpu | cuda | cuda:N')


def run(args: argparse.Namespace) -> int:
    files, summary = visualize_denoising(args.checkpoint, args.out, task=args.task, seed=args.seed,
                                         at_time=args.at_time, ddpm_steps=args.ddpm_steps, ddim_steps=args.ddim_steps,
                                         joints=args.joints, device=args.device, noise_seed=args.noise_seed,
                                         gif_frames=args.gif_frames)
    print(f'[viz-denoise] DDPM {args.ddpm_steps} and DDIM {args.ddim_steps} steps from the same noise end '
          f'{summary["ddpm_vs_ddim_max_abs_diff"]:.3f} rad apart (max over the chunk); '
          f'wrote {", ".join(files.values())}')
    return 0
