"""`dp-ros bench-planning`: diffusion alone, diffusion + collision guard, and classical planning.

Three arms on the same held-out seeds, on each task's static scene and its dynamic variant (a box
crossing the workspace, `<task>_dynamic`), in the sim's closed loop (sim time, see sim/hybrid.py):

- `policy`: the checkpoint's chunks straight to the arm (what `dp-ros eval` runs);
- `hybrid`: the same chunks through the collision guard (config/collision_guard.yaml);
- `classical`: task waypoints from the privileged layout, planned by the same OMPL + timing stack
  through the same checker, re-planned when the scene blocks the plan.

Per arm and scene: success rate with its Wilson 95 % interval, contacts with obstacles (episodes with
any, and onsets in all), time to success, joint path length and mean squared jerk, per-cycle compute
(inference, check, plan: p50 / p99), fallbacks and re-plans. Writes bench_planning.json, a Markdown
table (table.md, also printed) and bench_planning.png.

    dp-ros bench-planning --task reach_around --seeds 30 --out bench/reach_around
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import share_dir
from .arm import SimArm, SimConfig
from .evaluate import (DEFAULT_EVAL_SEED, EpisodeOutcome, evaluate, mean_squared_jerk, path_length,
                       wilson_interval)
from .hybrid import ARM, ClassicalController, CycleCosts, GuardFilter
from .model import TASKS
from .rollout import rollout
from ..jsonio import json_safe, write_json
from ..errors import UserError

ARMS = ('policy', 'hybrid', 'classical')
SCENES = ('static', 'dynamic')


def _percentiles_ms(values: Sequence[float]) -> dict[str, float | None]:
    if not len(values):
        return {'p50': None, 'p99': None}
    ms = 1e3 * np.asarray(values, dtype=float)
    return {'p50': round(float(np.percentile(ms, 50)), 2), 'p99': round(float(np.percentile(ms, 99)), 2)}


def _contacts(info: dict[str, Any]) -> int:
    """Obstacle contact onsets of an episode: the moving box's, plus one for a touched static obstacle."""
    return int(info.get('moving_obstacle_contacts') or 0) + int(bool(info.get('obstacle_contact')))


def summarise(outcomes: Sequence[EpisodeOutcome], costs: CycleCosts,
              inference_ms: dict[str, float | None]) -> dict[str, Any]:
    n = len(outcomes)
    successes = sum(o.success for o in outcomes)
    contacts = [_contacts(o.info) for o in outcomes]
    finite = lambda values: [v for v in values if v is not None and math.isfinite(v)]  # noqa: E731
    mean = lambda values: round(float(np.mean(values)), 4) if values else None  # noqa: E731
    low, high = wilson_interval(successes, n)
    return {
        'episodes': n, 'successes': successes, 'success_rate': round(successes / n, 4),
        'success_ci95': [round(low, 4), round(high, 4)],
        'episodes_with_contact': sum(c > 0 for c in contacts), 'contacts': int(sum(contacts)),
        'time_to_success_s': mean([o.duration_s for o in outcomes if o.success]),
        'path_length_rad': mean(finite([o.path_length_rad for o in outcomes])),
        'mean_squared_jerk': mean(finite([o.mean_squared_jerk for o in outcomes])),
        'inference_ms': inference_ms, 'check_ms': _percentiles_ms(costs.check_s),
        'plan_ms': _percentiles_ms(costs.plan_s), 'fallbacks': costs.fallbacks, 'replans': costs.replans,
        'holds': costs.holds, 'evasions': costs.evasions, 'seeds': [o.seed for o in outcomes],
        'failed_seeds': [o.seed for o in outcomes if not o.success],
    }


def run_classical(task: str, seeds: Sequence[int]) -> tuple[list[EpisodeOutcome], CycleCosts]:
    costs, outcomes = CycleCosts(), []
    with SimArm(SimConfig(task=task, seed=seeds[0])) as arm:
        period = 1.0 / arm.cfg.control_hz
        for seed in seeds:
            arm.reset(task=task, seed=seed)
            controller = ClassicalController(arm)
            controller.costs = costs  # one tally over all episodes
            measured: list[np.ndarray] = []

            def act(t: float) -> np.ndarray | None:
                measured.append(arm.joint_state()[1][:ARM].copy())
                return controller(t)

            result = rollout(arm, act, cameras=())
            path = np.array(measured)
            outcomes.append(EpisodeOutcome(
                seed=seed, success=bool(result.status.success), duration_s=float(result.duration),
                info=json_safe(dict(result.status.info)), mean_squared_jerk=mean_squared_jerk(path, period),
                inference_calls=0, dropped_actions=0,
                path_length_rad=path_length(path)))
    return outcomes, costs


def run_policy(checkpoint: Path, task: str, seeds: Sequence[int], guarded: bool, latency_s: float,
               progress: bool) -> tuple[list[EpisodeOutcome], CycleCosts, dict[str, float | None]]:
    filters: list[GuardFilter] = []

    def make_filter(arm: SimArm) -> GuardFilter:
        filters.append(GuardFilter(arm))
        return filters[-1]

    report = evaluate(checkpoint, task, len(seeds), seeds[0], progress=progress, latency_s=latency_s,
                      command_filter_factory=make_filter if guarded else None)
    costs = CycleCosts()
    for f in filters:
        costs.check_s += f.costs.check_s
        costs.plan_s += f.costs.plan_s
        costs.fallbacks += f.costs.fallbacks
        costs.replans += f.costs.replans
        costs.holds += f.costs.holds
        costs.evasions += f.guard.counters.evasions
    latency = report.inference_latency_s
    inference = ({q: round(1e3 * latency[q], 2) for q in ('p50', 'p99')} if latency.get('count')
                 else {'p50': None, 'p99': None})
    return list(report.episodes), costs, inference


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = ('| task | scene | arm | success (95 % CI) | episodes with contact (onsets) | time to success s | '
            'path rad | jerk | inference / check / plan p99 ms | fallbacks / re-plans |')
    lines = [head, '|' + '|'.join(['---'] * 10) + '|']
    for task, scenes in results.items():
        for scene, arms in scenes.items():
            for arm, r in arms.items():
                lo, hi = r['success_ci95']
                fmt = lambda v: '-' if v is None else f'{v:g}'  # noqa: E731
                lines.append(
                    f"| {task} | {scene} | {arm} | {100 * r['success_rate']:.0f} % ({100 * lo:.0f}-{100 * hi:.0f}) | "
                    f"{r['episodes_with_contact']}/{r['episodes']} ({r['contacts']}) | {fmt(r['time_to_success_s'])} | "
                    f"{fmt(r['path_length_rad'])} | {fmt(r['mean_squared_jerk'])} | {fmt(r['inference_ms']['p99'])} / "
                    f"{fmt(r['check_ms']['p99'])} / {fmt(r['plan_ms']['p99'])} | {r['fallbacks']} / {r['replans']} |")
    return '\n'.join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cells = [(task, scene) for task, scenes in results.items() for scene in scenes]
    fig, (ax_success, ax_contact) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(ARMS)
    x = np.arange(len(cells))
    for k, arm in enumerate(ARMS):
        rows = [results[t][s].get(arm) for t, s in cells]
        rate = [100 * r['success_rate'] if r else 0 for r in rows]
        err = [[100 * (r['success_rate'] - r['success_ci95'][0]) if r else 0 for r in rows],
               [100 * (r['success_ci95'][1] - r['success_rate']) if r else 0 for r in rows]]
        ax_success.bar(x + k * width, rate, width, yerr=err, capsize=3, label=arm)
        ax_contact.bar(x + k * width, [100 * r['episodes_with_contact'] / r['episodes'] if r else 0 for r in rows],
                       width, label=arm)
    for ax, title in ((ax_success, 'success rate (%, 95 % CI)'), (ax_contact, 'episodes with an obstacle contact (%)')):
        ax.set_xticks(x + width, [f'{t}\n{s}' for t, s in cells])
        ax.set_title(title)
        ax.set_ylim(0, 105)
    ax_success.legend(loc='lower left')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--task', action='append', choices=TASKS, default=None,
                        help='task(s) to run, each on its static and dynamic scene (default: reach_around)')
    parser.add_argument('--checkpoint', action='append', default=[], metavar='TASK=DIR',
                        help='the policy of a task (default: models/TASK)')
    parser.add_argument('--seeds', type=int, default=30, help='episodes per arm and scene (default 30)')
    parser.add_argument('--seed', type=int, default=DEFAULT_EVAL_SEED,
                        help=f'first seed (default {DEFAULT_EVAL_SEED}, held out from the demonstrations)')
    parser.add_argument('--arms', default=','.join(ARMS), help=f'comma-separated subset of {",".join(ARMS)}')
    parser.add_argument('--latency-s', type=float, default=0.1,
                        help='sim seconds from observation to chunk (default 0.1, one control period): fixed, so '
                             'a busy machine does not change the outcome; measured compute is reported beside it')
    parser.add_argument('--quick', action='store_true', help='2 seeds per cell (CI)')
    parser.add_argument('--out', type=Path, required=True, help='folder for bench_planning.json, table.md, .png')


def run(args: argparse.Namespace) -> int:
    tasks = args.task or ['reach_around']
    arms = [a for a in args.arms.split(',') if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise UserError(f'unknown arm(s) {unknown}; expected {list(ARMS)}')
    checkpoints = {task: share_dir() / 'models' / task for task in tasks}
    for item in args.checkpoint:
        task, _, folder = item.partition('=')
        if task not in TASKS or not folder:
            raise UserError(f'--checkpoint expects TASK=DIR with TASK in {TASKS}, got {item!r}')
        checkpoints[task] = Path(folder)
    seeds = list(range(args.seed, args.seed + (2 if args.quick else args.seeds)))
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    began = time.monotonic()
    for task in tasks:
        results[task] = {}
        for scene in SCENES:
            name = task if scene == 'static' else f'{task}_dynamic'
            cell = results[task][scene] = {}
            for arm in arms:
                print(f'[bench-planning] {name}: {arm} on seeds {seeds[0]}-{seeds[-1]}', file=sys.stderr, flush=True)
                if arm == 'classical':
                    outcomes, costs = run_classical(name, seeds)
                    inference: dict[str, float | None] = {'p50': None, 'p99': None}
                else:
                    outcomes, costs, inference = run_policy(checkpoints[task], name, seeds, arm == 'hybrid',
                                                            args.latency_s, progress=False)
                cell[arm] = summarise(outcomes, costs, inference)
    document = {'benchmark': 'bench_planning', 'seeds': seeds, 'latency_s': args.latency_s, 'checkpoints': {t: str(c) for t, c in checkpoints.items()},
                'wall_s': round(time.monotonic() - began, 1), 'results': results}
    write_json(args.out / 'bench_planning.json', document)
    text = table(results)
    (args.out / 'table.md').write_text(text + '\n')
    plot(results, args.out / 'bench_planning.png')
    print(text)
    print(f'[bench-planning] wrote {args.out}/bench_planning.json, table.md, bench_planning.png '
          f'({document["wall_s"]:.0f} s)', flush=True)
    return 0
