"""Publish period of policy_node while inference runs: p50/p99 and max jitter over a window (default 60 s).

Starts policy_node (a subprocess, as in production) on a checkpoint, feeds it camera frames at 30 Hz and
joint states at 50 Hz from this process, and measures the period between consecutive trajectories from
their header stamps (the node's own publish time). The baseline, measured in the same run and in this
process, is a bare rclpy 10 Hz timer publishing a JointTrajectory with no inference anywhere near it.
Prints one JSON object.

    python benchmarks/control_loop.py [--seconds 60] [--checkpoint models/reach_around] [--steps 10]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from diffusion_policy_ros.core.checkpoint import read_checkpoint_config, resolve_checkpoint
from diffusion_policy_ros.nodes.messages import make_image, make_joint_trajectory, stamp_to_seconds
from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS

ROOT = Path(__file__).resolve().parents[1]


def period_stats(stamps: list[float], nominal: float) -> dict[str, float]:
    periods = np.diff(np.asarray(stamps)) * 1e3
    jitter = np.abs(periods - nominal * 1e3)
    return {'n': int(periods.size), 'period_p50_ms': round(float(np.median(periods)), 3),
            'period_p99_ms': round(float(np.percentile(periods, 99)), 3),
            'jitter_p99_ms': round(float(np.percentile(jitter, 99)), 3),
            'jitter_max_ms': round(float(jitter.max()), 3), 'mean_period_ms': round(float(periods.mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=60.0)
    parser.add_argument('--checkpoint', default=str(ROOT / 'models' / 'reach_around'))
    parser.add_argument('--steps', type=int, default=10, help='DDIM steps')
    parser.add_argument('--threads', type=int, default=1, help='torch threads of the node')
    parser.add_argument('--node-log', default=None, help='write the node\'s output to this file')
    args = parser.parse_args()
    config = read_checkpoint_config(resolve_checkpoint(args.checkpoint)[0])
    cameras = config['observation_spec']['camera_keys']
    topics = [f'/bench/camera_{i}' for i in range(len(cameras))]
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    node_args = [sys.executable, '-m', 'diffusion_policy_ros.nodes.policy_node', '--ros-args',
                 '-p', f'checkpoint:={args.checkpoint}', '-p', f'num_inference_steps:={args.steps}',
                 '-p', f'torch_threads:={args.threads}', '-p', 'output_topic:=/bench/joint_trajectory',
                 '-p', 'camera_topics:=[' + ','.join(topics) + ']']
    log = open(args.node_log, "w") if args.node_log else subprocess.DEVNULL
    proc = subprocess.Popen(node_args, env=env, stdout=log, stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node('control_loop_bench')
    lock = threading.Lock()
    policy_stamps: list[float] = []
    policy_points: list[int] = []  # points per message: 1 = holding, > 1 = executing a chunk
    baseline_stamps: list[float] = []
    diagnostics: dict[str, str] = {}
    recording = threading.Event()

    def on_policy(msg: JointTrajectory) -> None:
        if recording.is_set():  # every publish counts: the timer runs whether it executes or holds
            with lock:
                policy_stamps.append(stamp_to_seconds(msg.header.stamp))
                policy_points.append(len(msg.points))

    def on_baseline(msg: JointTrajectory) -> None:
        if recording.is_set():
            with lock:
                baseline_stamps.append(stamp_to_seconds(msg.header.stamp))

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith('policy_node'):
                diagnostics.update({kv.key: kv.value for kv in status.values})

    image_pubs = [node.create_publisher(Image, t, qos_profile_sensor_data) for t in topics]
    joint_pub = node.create_publisher(JointState, '/joint_states', qos_profile_sensor_data)
    baseline_pub = node.create_publisher(JointTrajectory, '/bench/baseline', 10)
    node.create_subscription(JointTrajectory, '/bench/joint_trajectory', on_policy, 50)
    node.create_subscription(JointTrajectory, '/bench/baseline', on_baseline, 50)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)

    def publish_images() -> None:
        for pub in image_pubs:
            pub.publish(make_image(frame, node.get_clock().now().to_msg()))

    def publish_joints() -> None:
        msg = JointState(name=list(PANDA_JOINTS), position=list(PANDA_HOME))
        msg.header.stamp = node.get_clock().now().to_msg()
        joint_pub.publish(msg)

    node.create_timer(1 / 30, publish_images)
    node.create_timer(1 / 50, publish_joints)
    node.create_timer(0.1, lambda: baseline_pub.publish(make_joint_trajectory(
        PANDA_JOINTS, np.array([PANDA_HOME]), 0.1, node.get_clock().now().to_msg())))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while diagnostics.get('state') != 'RUNNING':
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f'policy_node did not reach RUNNING (diagnostics {diagnostics})')
            time.sleep(0.2)
        recording.set()
        time.sleep(args.seconds)
        recording.clear()
        with lock:
            result = {
                'benchmark': 'control_loop', 'seconds': args.seconds, 'checkpoint': args.checkpoint,
                'ddim_steps': args.steps, 'policy_node': period_stats(policy_stamps, 0.1),
                'baseline_bare_timer': period_stats(baseline_stamps, 0.1),
                'inference_latency_p50_ms': float(diagnostics.get('inference_latency_p50_ms', 'nan')),
                'inference_latency_p99_ms': float(diagnostics.get('inference_latency_p99_ms', 'nan')),
                'dropped_actions': int(diagnostics.get('dropped_actions', 0)),
                'share_executing': round(float(np.mean(np.asarray(policy_points) > 1)), 3),
                'target': 'period jitter p99 <= 2 ms',
            }
        result['jitter_p99_ratio_vs_baseline'] = round(
            result['policy_node']['jitter_p99_ms'] / max(result['baseline_bare_timer']['jitter_p99_ms'], 1e-3), 3)
        print(json.dumps(result, indent=2))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        executor.shutdown()
        rclpy.shutdown()


if __name__ == '__main__':
    main()
