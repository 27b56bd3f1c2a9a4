"""Publish period of policy_node while inference runs, per scenario: p50/p99 jitter and gaps.

For each scenario this starts policy_node (a subprocess, as in production) on a checkpoint, a camera
driver process publishing rgb8 frames at 30 Hz, and, in this process, joint states at 100 Hz; it
measures the period between consecutive trajectories from their header stamps (the node's own publish
time). Scenarios: `vga` (640x480 camera), `camera_1920x1080`, `camera_4000x3000` (36 MB frames at
30 Hz: about 1 GB/s, which this 2-core machine cannot move), `cpu_hog` (vga, plus a process spinning a
core). The baseline, measured in each scenario in this process, is a bare
rclpy 10 Hz timer publishing a JointTrajectory with no inference anywhere near it. Prints one JSON object.

    python benchmarks/control_loop.py [--seconds 30] [--scenarios vga camera_1920x1080 camera_4000x3000 cpu_hog]
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

ROOT = Path(__file__).resolve().parents[1]
CAMERA_TOPIC = '/bench/camera'
SCENARIOS = {'vga': ((640, 480), False), 'camera_1920x1080': ((1920, 1080), False),
             'camera_4000x3000': ((4000, 3000), False), 'cpu_hog': ((640, 480), True)}
PERIOD = 0.1


def period_stats(stamps: list[float], nominal: float) -> dict[str, float]:
    periods = np.diff(np.asarray(stamps)) * 1e3
    if periods.size == 0:
        return {'n': 0}
    jitter = np.abs(periods - nominal * 1e3)
    return {'n': int(periods.size), 'rate_hz': round(1e3 / float(periods.mean()), 3),
            'period_p50_ms': round(float(np.median(periods)), 3),
            'period_p99_ms': round(float(np.percentile(periods, 99)), 3),
            'jitter_p50_ms': round(float(np.median(jitter)), 3),
            'jitter_p99_ms': round(float(np.percentile(jitter, 99)), 3),
            'jitter_max_ms': round(float(jitter.max()), 3),
            'gaps_over_1_5_periods': int(np.sum(periods > 1.5 * nominal * 1e3))}


def camera_driver(width: int, height: int, rate_hz: float) -> None:
    """A camera driver process: frames at `rate_hz` until killed."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from diffusion_policy_ros.nodes.messages import make_image
    rclpy.init()
    node = rclpy.create_node('bench_camera_driver')
    pub = node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
    msg = make_image(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8),
                     node.get_clock().now().to_msg())
    start = time.monotonic()
    for i in range(10 ** 9):
        time.sleep(max(0.0, start + i / rate_hz - time.monotonic()))
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)


def run_scenario(name: str, args: argparse.Namespace) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from diffusion_policy_ros.nodes.messages import make_joint_trajectory, stamp_to_seconds
    from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS
    (width, height), hog = SCENARIOS[name]
    env = os.environ.copy()
    node_args = [sys.executable, '-m', 'diffusion_policy_ros.nodes.policy_node', '--ros-args',
                 '-p', f'checkpoint:={args.checkpoint}', '-p', f'torch_threads:={args.threads}',
                 '-p', 'output_topic:=/bench/joint_trajectory', '-p', f'camera_topics:=[{CAMERA_TOPIC}]']
    if args.steps:
        node_args += ['-p', f'num_inference_steps:={args.steps}']
    if args.realtime_priority is not None:
        node_args += ['-p', f'realtime_priority:={args.realtime_priority}']
    log = open(f'{args.node_log}.{name}', 'w') if args.node_log else subprocess.DEVNULL
    procs = [subprocess.Popen(node_args, env=env, stdout=log, stderr=subprocess.STDOUT),
             subprocess.Popen([sys.executable, __file__, '--camera-driver', f'{width}x{height}'], env=env)]
    if hog:
        procs.append(subprocess.Popen([sys.executable, '-c', 'while True: pass']))
    node = rclpy.create_node(f'control_loop_bench_{name}')
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

    joint_pub = node.create_publisher(JointState, '/joint_states', qos_profile_sensor_data)
    baseline_pub = node.create_publisher(JointTrajectory, f'/bench/baseline_{name}', 10)
    node.create_subscription(JointTrajectory, '/bench/joint_trajectory', on_policy, 50)
    node.create_subscription(JointTrajectory, f'/bench/baseline_{name}', on_baseline, 50)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)

    def publish_joints() -> None:
        msg = JointState(name=list(PANDA_JOINTS), position=list(PANDA_HOME))
        msg.header.stamp = node.get_clock().now().to_msg()
        joint_pub.publish(msg)

    node.create_timer(0.01, publish_joints)
    node.create_timer(PERIOD, lambda: baseline_pub.publish(make_joint_trajectory(
        PANDA_JOINTS, np.array([PANDA_HOME]), PERIOD, node.get_clock().now().to_msg())))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        # Measured once the policy runs; a camera it cannot keep up with makes it hold (published all
        # the same), so after 30 s active the measurement starts whatever the state.
        deadline, active_since = time.monotonic() + 180, None
        while diagnostics.get('state') != 'RUNNING':
            if time.monotonic() > deadline or procs[0].poll() is not None:
                return {'error': f'policy_node did not come up (diagnostics {diagnostics})'}
            if diagnostics.get('state') and active_since is None:
                active_since = time.monotonic()
            if active_since is not None and time.monotonic() - active_since > 30:
                break
            time.sleep(0.2)
        recording.set()
        time.sleep(args.seconds)
        recording.clear()
        with lock:
            result = {
                'camera': f'{width}x{height} rgb8 at 30 Hz', 'cpu_hog': hog,
                'policy_node': period_stats(policy_stamps, PERIOD),
                'baseline_bare_timer': period_stats(baseline_stamps, PERIOD),
                'inference_latency_p50_ms': float(diagnostics.get('inference_latency_p50_ms', 'nan')),
                'inference_latency_p99_ms': float(diagnostics.get('inference_latency_p99_ms', 'nan')),
                'share_executing': round(float(np.mean(np.asarray(policy_points) > 1)), 3) if policy_points else 0.0,
                'hold_reason_at_end': diagnostics.get('reason', ''),
            }
        base = result['baseline_bare_timer'].get('jitter_p99_ms', 0.0)
        result['jitter_p99_ratio_vs_baseline'] = round(result['policy_node'].get('jitter_p99_ms', np.nan)
                                                       / max(base, 1e-3), 3)
        return result
    finally:
        procs[0].send_signal(signal.SIGINT)  # the node stops cleanly; the driver and the hog are killed
        for proc in procs[1:]:
            proc.kill()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        executor.shutdown()
        node.destroy_node()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=30.0, help='measured seconds per scenario')
    parser.add_argument('--scenarios', nargs='+', default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument('--checkpoint', default=str(ROOT / 'models' / 'pick_place'))
    parser.add_argument('--steps', type=int, default=0, help="DDIM steps (0: the checkpoint's)")
    parser.add_argument('--threads', type=int, default=1, help="torch threads of the node")
    parser.add_argument('--realtime-priority', type=int, default=None,
                        help="the node's realtime_priority (SCHED_FIFO of its executor thread; 0: normal "
                             "scheduling); default: the node's default")
    parser.add_argument('--node-log', default=None, help="write each scenario's node output to NODE_LOG.<scenario>")
    parser.add_argument('--camera-driver', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.camera_driver:
        width, height = (int(v) for v in args.camera_driver.split('x'))
        camera_driver(width, height, 30.0)
        return
    import rclpy
    rclpy.init()
    result = {'benchmark': 'control_loop', 'seconds_per_scenario': args.seconds, 'checkpoint': args.checkpoint,
              'realtime_priority': 'node default' if args.realtime_priority is None else args.realtime_priority,
              'target': 'policy_node jitter p99 <= 2 ms and no gap > 1.5 periods in every scenario'}
    for name in args.scenarios:
        result[name] = run_scenario(name, args)
    print(json.dumps(result, indent=2), flush=True)
    os._exit(0)  # rclpy's own teardown can abort while DDS threads still deliver frames


if __name__ == '__main__':
    main()
