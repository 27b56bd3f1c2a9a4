"""Simulator speed: physics step, 96x96 render, expert success rate and seconds per recorded demo.

Prints one JSON object. Baselines come from the same run: a bare `mujoco.mj_step` on the same
model (what SimArm's controller and task monitor add on top), and MuJoCo's default render
settings (4x multisampling, shadows, reflections) against ours.

    python benchmarks/sim_step.py [--steps 5000] [--frames 500] [--seeds 50] [--demos 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffusion_policy_ros.data.bags import BagWriter  # noqa: E402
from diffusion_policy_ros.sim.arm import SimArm, SimConfig  # noqa: E402
from diffusion_policy_ros.sim.experts import ScriptedExpert  # noqa: E402
from diffusion_policy_ros.sim.model import build_spec, mujoco  # noqa: E402
from diffusion_policy_ros.sim.record_demos import record_episode  # noqa: E402
from diffusion_policy_ros.sim.rollout import rollout  # noqa: E402


def stats_us(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples) * 1e6
    return {'median_us': round(float(np.median(values)), 2), 'p99_us': round(float(np.percentile(values, 99)), 2),
            'n': len(values)}


def physics(task: str, steps: int) -> dict[str, object]:
    sim = SimArm(SimConfig(task=task, seed=0))
    expert = ScriptedExpert(sim)
    ours, bare = [], []
    # Moving arm (expert commands) so contacts and the controller do real work.
    for k in range(steps):
        if k % 50 == 0:
            sim.command_trajectory(sim.joint_names, expert.act(sim.sim_time), 0.1, start_time=sim.sim_time)
        t0 = time.perf_counter()
        sim.step_until(sim.sim_time + sim.timestep)
        ours.append(time.perf_counter() - t0)
    data = mujoco.MjData(sim.model)
    data.qpos[:] = sim.data.qpos
    data.ctrl[:] = sim.data.ctrl
    for _ in range(steps):
        t0 = time.perf_counter()
        mujoco.mj_step(sim.model, data)
        bare.append(time.perf_counter() - t0)
    return {'physics_hz': sim.cfg.physics_hz, 'sim_arm_step': stats_us(ours), 'baseline_bare_mj_step': stats_us(bare),
            'realtime_factor': round(sim.timestep / float(np.median(ours)), 1)}


def render(frames: int) -> dict[str, object]:
    sim = SimArm(SimConfig(task='pick_place', seed=0))
    sim.render()  # context creation is not part of the per-frame cost
    ours = []
    for _ in range(frames):
        t0 = time.perf_counter()
        sim.render()
        ours.append(time.perf_counter() - t0)
    spec = build_spec('pick_place')
    spec.visual.quality.offsamples = 4
    spec.visual.quality.shadowsize = 4096
    model = spec.compile()
    data = mujoco.MjData(model)
    data.qpos[:] = sim.data.qpos
    mujoco.mj_forward(model, data)
    renderer = mujoco.Renderer(model, 96, 96)
    base = []
    for _ in range(frames):
        t0 = time.perf_counter()
        renderer.update_scene(data, 'scene')
        renderer.render()
        base.append(time.perf_counter() - t0)
    renderer.close()
    sim.close()
    return {'size': '96x96', 'ours_no_shadow_no_msaa': stats_us(ours), 'baseline_mujoco_defaults': stats_us(base)}


def experts(seeds: int) -> dict[str, object]:
    out = {}
    for task in ('reach_around', 'pick_place'):
        with SimArm(SimConfig(task=task)) as sim:
            successes, walls, contacts, sides = 0, [], 0, {'left': 0, 'right': 0, None: 0}
            for seed in range(seeds):
                sim.reset(seed=seed)
                expert = ScriptedExpert(sim)
                t0 = time.perf_counter()
                result = rollout(sim, expert.act)
                walls.append(time.perf_counter() - t0)
                successes += result.status.success
                if task == 'reach_around':
                    contacts += result.status.info['obstacle_contact']
                    sides[result.status.info['side']] += 1
            entry = {'success_rate': successes / seeds, 'episodes': seeds,
                     'wall_s_per_episode_no_render': round(float(np.median(walls)), 3)}
            if task == 'reach_around':
                entry.update(obstacle_contacts=contacts, sides={str(k): v for k, v in sides.items()})
            out[task] = entry
    return out


def demos(count: int) -> dict[str, object]:
    out = {}
    for task in ('reach_around', 'pick_place'):
        walls, sim_s = [], []
        with tempfile.TemporaryDirectory() as tmp, SimArm(SimConfig(task=task)) as sim:
            for seed in range(count):
                t0 = time.perf_counter()
                with BagWriter(Path(tmp) / f'ep{seed}') as writer:
                    record = record_episode(task, seed, writer, cfg=sim.cfg, arm=sim)
                walls.append(time.perf_counter() - t0)
                sim_s.append(record.duration_s)
        out[task] = {'wall_s_per_demo_median': round(float(np.median(walls)), 3),
                     'wall_s_per_demo_p99': round(float(np.percentile(walls, 99)), 3),
                     'sim_s_per_demo_median': round(float(np.median(sim_s)), 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=5000)
    parser.add_argument('--frames', type=int, default=500)
    parser.add_argument('--seeds', type=int, default=50)
    parser.add_argument('--demos', type=int, default=5)
    args = parser.parse_args()
    report = {
        'physics': {task: physics(task, args.steps) for task in ('reach_around', 'pick_place')},
        'render': render(args.frames),
        'experts': experts(args.seeds),
        'record_demo': demos(args.demos),
    }
    print(json.dumps(report, indent=1))


if __name__ == '__main__':
    main()
