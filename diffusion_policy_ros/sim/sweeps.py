"""`dp-ros sweep`: one setting varied, everything else fixed, closed-loop in the simulator.

- `ddim_steps`: sampler steps {1, 2, 5, 10, 20, 50, 100} vs success and inference latency. With the
  default (measured) latency each setting also runs with its own latency, as the robot would: a slow
  setting loses actions to latency compensation. `--latency-s` fixes it to isolate sample quality.
- `action_horizon`: executed actions per chunk {4, 8, 16, 32} vs success and smoothness (mean squared
  jerk of the measured joint path). Values above what the checkpoint allows
  (horizon - n_obs_steps + 1) are clipped to that maximum, and the table says so.

Every setting uses the same seeds (held out, see `evaluate`) and one simulator. Output: a CSV, a
markdown table, a JSON with the full per-setting reports, and a PNG.
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..control.chunks import BLENDING_MODES
from .arm import SimArm, SimConfig
from .evaluate import (DEFAULT_EVAL_SEED, EvalReport, default_sim_config, evaluate, load_policy,
                       policy_config)
from .model import TASKS
from ..jsonio import json_safe, write_json
from ..errors import UserError

DDIM_STEPS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
ACTION_HORIZONS: tuple[int, ...] = (4, 8, 16, 32)
SWEEPS = ('ddim_steps', 'action_horizon')


@dataclass
class SweepRow:
    value: int  # the setting used
    requested: list[int]  # the requested value(s) it stands for (several when clipped together)
    successes: int
    episodes: int
    success_rate: float
    success_ci95: tuple[float, float]
    latency_p50_ms: float
    latency_p99_ms: float
    mean_squared_jerk: float
    latency_s: float  # sim-time latency applied
    note: str = ''


@dataclass
class SweepResult:
    what: str
    task: str
    policy: str
    seeds: list[int]
    rows: list[SweepRow]
    notes: list[str] = field(default_factory=list)
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)  # value -> full EvalReport dict
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def sweep_values(what: str, policy: Any,
                 values: Sequence[int] | None = None) -> tuple[list[tuple[int, list[int]]], list[str]]:
    """[(value used, requested values)], notes: the settings a sweep runs for this policy."""
    cfg = policy_config(policy)
    notes: list[str] = []
    if what == 'ddim_steps':
        if getattr(cfg, 'policy', 'diffusion') != 'diffusion':
            raise ValueError(f'sweep ddim_steps needs a diffusion policy; this one is {cfg.policy!r} (no sampler)')
        requested = list(values or DDIM_STEPS)
        limit = cfg.sampler.num_train_timesteps
        kind = cfg.sampler.kind
        if kind != 'ddim':
            notes.append(f'the checkpoint samples with {kind.upper()}: the sweep varies its step count')
        label = f'num_train_timesteps {limit}'
    elif what == 'action_horizon':
        requested = list(values or ACTION_HORIZONS)
        limit = cfg.horizon - cfg.n_obs_steps + 1
        label = f'horizon {cfg.horizon} - n_obs_steps {cfg.n_obs_steps} + 1'
    else:
        raise ValueError(f'sweep: unknown --what {what!r}; expected one of {SWEEPS}')
    bad = [v for v in requested if int(v) < 1]
    if bad:
        raise ValueError(f'sweep {what}: values must be >= 1, got {bad}')
    used: dict[int, list[int]] = {}
    for value in requested:
        used.setdefault(min(int(value), limit), []).append(int(value))
    clipped = [v for v in requested if v > limit]
    if clipped:
        notes.append(f'{what} {clipped} clipped to {limit} (the most this checkpoint allows: {label})')
    return sorted(used.items()), notes


def sweep(checkpoint_or_policy: Any, task: str, what: str, episodes: int, seed: int = DEFAULT_EVAL_SEED,
          out_dir: str | Path | None = None, *, values: Sequence[int] | None = None, latency_s: float | None = None,
          device: str = 'cpu', blending: str | None = None, episode_seconds: float | None = None,
          sim_config: SimConfig | None = None, arm: SimArm | None = None, progress: bool = False) -> SweepResult:
    """Evaluate `episodes` episodes per setting of `what` (see module doc); write files to `out_dir`.

    One simulator serves every setting: `arm` if given, else one built from `sim_config` (default: the
    policy's camera size).
    """
    if task not in TASKS:
        raise ValueError(f'sweep: unknown task {task!r}; expected one of {TASKS}')
    policy, label = load_policy(checkpoint_or_policy, device)
    settings, notes = sweep_values(what, policy, values)
    if what == 'ddim_steps' and latency_s is None:
        notes.append('latency: measured per setting and rounded up to control periods (slow settings also '
                     'lose actions to latency); pass --latency-s to fix it')
    result = SweepResult(what=what, task=task, policy=label, seeds=list(range(seed, seed + episodes)), rows=[],
                         notes=notes)
    own_arm = arm is None
    if own_arm:
        arm = SimArm(sim_config or default_sim_config(task, policy))
    try:
        for value, requested in settings:
            kwargs = {'num_inference_steps': value} if what == 'ddim_steps' else {'n_action_steps': value}
            report: EvalReport = evaluate(policy, task, episodes, seed, latency_s=latency_s, device=device,
                                          blending=blending, arm=arm, episode_seconds=episode_seconds,
                                          progress=progress, **kwargs)
            latency = report.inference_latency_s
            note = '' if requested == [value] else f'requested {requested}'
            result.rows.append(SweepRow(
                value=value, requested=requested, successes=report.successes, episodes=len(report.seeds),
                success_rate=report.success_rate, success_ci95=report.success_ci95,
                latency_p50_ms=1e3 * latency['p50'], latency_p99_ms=1e3 * latency['p99'],
                mean_squared_jerk=report.mean_squared_jerk, latency_s=report.latency_s, note=note))
            result.reports[value] = report.to_dict()
    finally:
        if own_arm:
            arm.close()
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


# ----------------------------------------------------------------------------------------- outputs
_COLUMNS = ('value', 'success_rate', 'ci95_low', 'ci95_high', 'successes', 'episodes', 'latency_p50_ms',
            'latency_p99_ms', 'mean_squared_jerk', 'latency_s', 'note')


def _row_values(row: SweepRow) -> list[Any]:
    return [row.value, row.success_rate, row.success_ci95[0], row.success_ci95[1], row.successes, row.episodes,
            row.latency_p50_ms, row.latency_p99_ms, row.mean_squared_jerk, row.latency_s, row.note]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return 'n/a' if not math.isfinite(value) else f'{value:.4g}'
    return str(value)


def write_outputs(result: SweepResult, out_dir: Path) -> dict[str, str]:
    """sweep_<what>.csv / .md / .json / .png under `out_dir`; returns {kind: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f'sweep_{result.what}'
    files = {'csv': f'{stem}.csv', 'markdown': f'{stem}.md', 'png': f'{stem}.png', 'json': f'{stem}.json'}
    with open(files['csv'], 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(_COLUMNS)
        for row in result.rows:
            writer.writerow(_row_values(row))
    lines = [f'# {result.what} sweep: {result.task}, {result.policy}', '',
             f'Seeds {result.seeds[0]}..{result.seeds[-1]} ({len(result.seeds)} episodes per setting); '
             f'success with its 95 % Wilson interval; latency is wall clock per policy call.', '']
    lines += [f'- {note}' for note in result.notes] + ([''] if result.notes else [])
    header = ['value', 'success', '95 % CI', 'latency p50 ms', 'latency p99 ms', 'mean sq. jerk', 'sim latency s',
              'note']
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in result.rows:
        ci = f'[{row.success_ci95[0]:.2f}, {row.success_ci95[1]:.2f}]'
        lines.append('| ' + ' | '.join([str(row.value), f'{row.successes}/{row.episodes} ({row.success_rate:.0%})', ci,
                                         _fmt(row.latency_p50_ms), _fmt(row.latency_p99_ms),
                                         _fmt(row.mean_squared_jerk), _fmt(row.latency_s), row.note]) + ' |')
    Path(files['markdown']).write_text('\n'.join(lines) + '\n')
    plot_sweep(result, Path(files['png']))
    result.files = files
    write_json(files['json'], result.to_dict())
    return files


def plot_sweep(result: SweepResult, path: Path) -> None:
    """Success (with Wilson error bars) beside latency (ddim_steps) or jerk (action_horizon)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = [row.value for row in result.rows]
    rate = [row.success_rate for row in result.rows]
    # Wilson bounds at 0 % or 100 % equal the rate up to rounding: clip, matplotlib rejects -1e-17.
    low = [max(0.0, row.success_rate - row.success_ci95[0]) for row in result.rows]
    high = [max(0.0, row.success_ci95[1] - row.success_rate) for row in result.rows]
    figure = Figure(figsize=(9, 3.6), layout='constrained')
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    xlabel = 'DDIM steps' if result.what == 'ddim_steps' else 'executed actions per chunk (n_action_steps)'
    left.errorbar(x, rate, yerr=[low, high], marker='o', capsize=4)
    left.set(xlabel=xlabel, ylabel='success rate', ylim=(-0.05, 1.05), title=f'{result.task}: success (95 % Wilson)')
    if result.what == 'ddim_steps':
        right.plot(x, [row.latency_p50_ms for row in result.rows], marker='o', label='p50')
        right.plot(x, [row.latency_p99_ms for row in result.rows], marker='s', linestyle='--', label='p99')
        right.set(xlabel=xlabel, ylabel='inference latency (ms)', title='latency (wall clock)')
        right.legend()
        for axis in (left, right):
            axis.set_xscale('log')
    else:
        right.plot(x, [row.mean_squared_jerk for row in result.rows], marker='o')
        right.set(xlabel=xlabel, ylabel='mean squared jerk (rad²/s⁶)', title='smoothness (lower is smoother)')
    for axis in (left, right):
        axis.set_xticks(x, [str(v) for v in x])
        axis.grid(alpha=0.3)
    figure.savefig(path, dpi=100)


# ----------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True, type=Path, help='checkpoint directory or run folder')
    parser.add_argument('--task', required=True, choices=TASKS, help='sim task to evaluate on')
    parser.add_argument('--what', required=True, choices=SWEEPS, help='the setting to sweep')
    parser.add_argument('--episodes', type=int, default=20, help='episodes per setting')
    parser.add_argument('--out', type=Path, required=True,
                        help='folder for the results: JSON, CSV, markdown table, plot')
    parser.add_argument('--seed', type=int, default=DEFAULT_EVAL_SEED,
                        help='first seed (held out from the demonstrations)')
    parser.add_argument('--values', type=int, nargs='+', default=None,
                        help=f'override the settings (default ddim_steps {list(DDIM_STEPS)}, '
                             f'action_horizon {list(ACTION_HORIZONS)})')
    parser.add_argument('--latency-s', type=float, default=None,
                        help='sim-time inference latency (default: measured, rounded up to control periods)')
    parser.add_argument('--blending', choices=BLENDING_MODES, default=None,
                        help="how chunks are blended (default: the checkpoint's)")
    parser.add_argument('--device', default='cpu', help='torch device for inference: cpu | cuda | cuda:N')
    parser.add_argument('--episode-seconds', type=float, default=None,
                        help="cut episodes short of the task's time limit (quick smoke runs)")


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise UserError('--episodes must be >= 1')
    result = sweep(args.checkpoint, args.task, args.what, args.episodes, args.seed, args.out, values=args.values,
                   latency_s=args.latency_s, device=args.device, blending=args.blending,
                   episode_seconds=args.episode_seconds, progress=True)
    print(Path(result.files['markdown']).read_text())
    print(f'[sweep] wrote {", ".join(map(str, result.files.values()))}')
    return 0
