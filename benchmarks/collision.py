"""Collision guard speed: 16-point chunk check latency and fallback planning time, as JSON.

Fixed scenes (boxes at seeded positions around the Panda) and seeded policy-like chunks (16 points,
up to 0.08 rad per step on the fastest joint). The baselines run in the same process on the same
chunks: a per-state Python loop over pinocchio's exhaustive pair check without early exit (what a
straightforward implementation does), and the same loop with early exit, to show what the batched
broad-phase call buys. Targets on the CI CPU: check <= 2 ms p99, plan <= 50 ms p99.

    python benchmarks/collision.py [--scenes 5] [--chunks 200] [--plans 20] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pinocchio as pin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffusion_policy_ros.collision.checker import CollisionChecker, interpolate_path
from diffusion_policy_ros.collision.config import CollisionGuardConfig
from diffusion_policy_ros.collision.planner import FallbackPlanner, MotionLimits, Plan
from diffusion_policy_ros.collision.robot_model import RobotModel
from diffusion_policy_ros.collision.scene import Scene, SceneObject
from diffusion_policy_ros.robot_description import PANDA_HOME, panda_description

HORIZON = 16


def summary(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {'p50_ms': round(float(np.percentile(ms, 50)), 4), 'p99_ms': round(float(np.percentile(ms, 99)), 4),
            'mean_ms': round(float(ms.mean()), 4), 'n': int(ms.size)}


def make_scene(model: RobotModel, rng: np.random.Generator, boxes: int, padding: float) -> Scene:
    home = np.array(PANDA_HOME)
    scene = Scene()
    while len(scene) < boxes:
        obj = SceneObject(f'box{len(scene)}', 'box', tuple(rng.uniform(0.05, 0.15, 3)),
                          (rng.uniform(0.25, 0.65), rng.uniform(-0.45, 0.45), rng.uniform(0.05, 0.75)))
        trial = Scene([*scene.objects(), obj])
        if CollisionChecker(model, trial, padding).check_state(home).valid:
            scene.add(obj)
    return scene


def random_free_state(checker: CollisionChecker, rng: np.random.Generator, spread: float) -> np.ndarray:
    home = np.array(PANDA_HOME)
    while True:
        q = np.clip(home + rng.normal(0.0, spread, home.size), checker.lower, checker.upper)
        q[7] = home[7]
        if checker.check_state(q).valid:
            return q


def policy_chunk(start: np.ndarray, rng: np.random.Generator, checker: CollisionChecker) -> np.ndarray:
    """A smooth 16-step chunk: constant direction, 0.02-0.08 rad per step on the fastest joint."""
    direction = rng.normal(size=start.size)
    direction[7] = 0.0
    direction /= np.abs(direction).max()
    steps = np.arange(1, HORIZON + 1)[:, None] * rng.uniform(0.02, 0.08) * direction
    return np.clip(start + steps, checker.lower, checker.upper)


def naive_check(model: RobotModel, geometry: pin.GeometryModel, states: np.ndarray, early_exit: bool) -> bool:
    data, geometry_data = model.model.createData(), pin.GeometryData(geometry)
    valid = True
    for q in states:
        if pin.computeCollisions(model.model, data, geometry, geometry_data, q, early_exit):
            valid = False
            if early_exit:
                break
    return valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scenes', type=int, default=5)
    parser.add_argument('--boxes', type=int, default=3)
    parser.add_argument('--chunks', type=int, default=200, help='chunks checked per scene')
    parser.add_argument('--plans', type=int, default=20, help='fallback plans per scene')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None

    config = CollisionGuardConfig()
    description = panda_description()
    model = RobotModel.from_urdf(description.urdf_text(), description.srdf_text())
    limits = MotionLimits.from_model(model, config.velocity_scaling, config.acceleration_limits, config.jerk_limits)
    rng = np.random.default_rng(args.seed)

    check_s, check_cpu_s, naive_s, loop_s, states_per_chunk, blocked = [], [], [], [], [], 0
    plan_s, plan_ok_s, plan_ok, plan_failures, plan_requests, plan_durations = [], [], 0, {}, 0, []
    for _ in range(args.scenes):
        scene = make_scene(model, rng, args.boxes, config.padding)
        checker = CollisionChecker(model, scene, config.padding, limit_tolerance=config.limit_tolerance)
        checker.check_state(np.array(PANDA_HOME))  # build the scene's collision structures first
        geometry = checker._geometry  # the same enabled pairs, for the baselines
        planner = FallbackPlanner(checker, limits, config.planning_time_budget_s, config.control_period_s,
                                  max_joint_step=config.max_joint_step, seed=args.seed + 1)

        chunks = []
        for _ in range(args.chunks):
            start = random_free_state(checker, rng, 0.4)
            chunks.append((start, policy_chunk(start, rng, checker)))
        results = []
        for start, chunk in chunks:  # the guard's check, timed on its own (no baseline in between)
            began, began_cpu = time.perf_counter(), time.process_time()
            results.append(checker.check_path(start, chunk, config.max_joint_step))
            check_s.append(time.perf_counter() - began)
            check_cpu_s.append(time.process_time() - began_cpu)
        for (start, chunk), result in zip(chunks, results):
            blocked += not result.valid
            states = interpolate_path(start, chunk, config.max_joint_step)[0]
            states_per_chunk.append(len(states))
            began = time.perf_counter()
            naive_valid = naive_check(model, geometry, states, early_exit=False)
            naive_s.append(time.perf_counter() - began)
            if naive_valid != (result.valid or result.kind == 'joint_limit'):
                raise AssertionError('batched check and per-state baseline disagree')
        for start, chunk in chunks:
            states = interpolate_path(start, chunk, config.max_joint_step)[0]
            began = time.perf_counter()
            naive_check(model, geometry, states, early_exit=True)
            loop_s.append(time.perf_counter() - began)

        made = 0
        while made < args.plans:
            # A policy goal far from the start: the straight motion usually crosses a box.
            start = random_free_state(checker, rng, 0.4)
            goal = random_free_state(checker, rng, 0.9)
            waypoints = np.linspace(start, goal, HORIZON + 1)[1:]
            result = checker.check_path(start, waypoints, config.max_joint_step)
            if result.valid or result.first_colliding_index == -1:
                continue
            made += 1
            plan_requests += 1
            plan = planner.plan_fallback(start, waypoints, result)
            plan_s.append(plan.planning_time_s)
            if isinstance(plan, Plan):
                plan_ok += 1
                plan_ok_s.append(plan.planning_time_s)
                plan_durations.append(plan.duration_s)
            else:
                key = plan.reason.split(' within')[0]
                plan_failures[key] = plan_failures.get(key, 0) + 1

    print(json.dumps({
        'benchmark': 'collision',
        'machine': {'cpu': platform.processor() or platform.machine(), 'cores': os.cpu_count(),
                    'load_average_1min_at_start': load, 'python': platform.python_version()},
        'setup': {'robot': 'panda (example-robot-data, SRDF pairs)', 'scenes': args.scenes,
                  'boxes_per_scene': args.boxes, 'padding_m': config.padding,
                  'max_joint_step_rad': config.max_joint_step, 'seed': args.seed,
                  'enabled_pairs_without_scene': model.collision_pair_count},
        'check_16_point_chunk': {
            **summary(check_s), 'cpu_time_p99_ms': summary(check_cpu_s)['p99_ms'],
            'states_per_chunk_mean': round(float(np.mean(states_per_chunk)), 1),
            'states_per_chunk_max': int(np.max(states_per_chunk)), 'blocked_fraction': round(blocked / len(check_s), 3),
            'target_p99_ms': 2.0},
        'baseline_per_state_loop_no_early_exit': summary(naive_s),
        'baseline_per_state_loop_early_exit': summary(loop_s),
        'speedup_p50_vs_no_early_exit': round(float(np.median(naive_s) / np.median(check_s)), 1),
        'fallback_plan': {
            **summary(plan_s), 'successful_p99_ms': summary(plan_ok_s)['p99_ms'] if plan_ok_s else None,
            'success_rate': round(plan_ok / max(plan_requests, 1), 3),
            'failures': plan_failures, 'time_budget_s': config.planning_time_budget_s,
            'plan_duration_s_mean': round(float(np.mean(plan_durations)), 2) if plan_durations else None,
            'target_p99_ms': 50.0},
    }, indent=2))


if __name__ == '__main__':
    main()
