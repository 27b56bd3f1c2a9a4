"""CPU share of each node while idle: policy_node (stopped: it holds), collision_guard_node (no
proposals) and sim_robot_node (nobody commands it), each fed 100 Hz joint states and a 30 Hz camera.

Each node runs alone as a subprocess (as in production) for `--seconds` (default 30) after a warm-up;
this process publishes joint states and 640x480 frames at the rates a robot would (the sim publishes
its own at those rates). CPU is read from /proc/<pid>/stat (all threads). The baseline, measured in
the same run, is this feeder alone: a bare process publishing the same streams. Prints one JSON object.

    python benchmarks/idle_cpu.py [--seconds 30] [--nodes policy guard sim]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CAMERA_TOPIC = '/idle_bench/camera'
TICKS = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid: int) -> float:
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def node_command(name: str) -> list[str]:
    base = [sys.executable, '-m']
    if name == 'policy':
        return base + ['diffusion_policy_ros.nodes.policy_node', '--ros-args', '-p', f'camera_topics:=[{CAMERA_TOPIC}]',
                       '-p', 'output_topic:=/idle_bench/policy_out', '-p', 'torch_threads:=1']
    if name == 'guard':
        return base + ['diffusion_policy_ros.nodes.collision_guard_node', '--ros-args',
                       '--params-file', str(ROOT / 'config' / 'collision_guard.yaml'),
                       '-p', 'input_topic:=/idle_bench/proposed', '-p', 'output_topic:=/idle_bench/guard_out']
    if name == 'sim':
        return base + ['diffusion_policy_ros.nodes.sim_robot_node', '--ros-args', '-p', 'camera_rate_hz:=30.0',
                       '-p', 'joint_state_rate_hz:=100.0', '-p', 'joint_states_topic:=/idle_bench/sim_joint_states',
                       '-p', 'image_topic:=/idle_bench/sim_camera', '-p', 'command_topic:=/idle_bench/sim_command',
                       '-p', 'publish_clock:=false']
    raise ValueError(name)


class Feeder:
    """100 Hz joint states at PANDA_HOME and 30 Hz 640x480 rgb8 frames, stamped now."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState

        from diffusion_policy_ros.nodes.messages import make_image
        from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS
        rclpy.init()
        self.node = node = rclpy.create_node('idle_cpu_feeder')
        joints = node.create_publisher(JointState, '/joint_states', qos_profile_sensor_data)
        camera = node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
        frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        self.stopped_policy = False

        def publish_joints() -> None:
            msg = JointState(name=list(PANDA_JOINTS), position=list(PANDA_HOME))
            msg.header.stamp = node.get_clock().now().to_msg()
            joints.publish(msg)

        node.create_timer(0.01, publish_joints)
        node.create_timer(1 / 30, lambda: camera.publish(make_image(frame, node.get_clock().now().to_msg())))
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def stop_policy(self, timeout: float = 120.0) -> None:
        """Hold the policy (~/stop): what is measured is the node's own loop, not inference."""
        from std_srvs.srv import Trigger
        client = self.node.create_client(Trigger, '/policy_node/stop')
        if not client.wait_for_service(timeout_sec=timeout):
            raise SystemExit('policy_node offered no ~/stop service')
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + 10
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.05)


def measure(name: str, seconds: float, warmup: float, feeder: Feeder) -> dict:
    proc = subprocess.Popen(node_command(name), cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        if name == 'policy':
            feeder.stop_policy()
        time.sleep(warmup)
        begin_cpu, begin = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        share = (cpu_seconds(proc.pid) - begin_cpu) / (time.monotonic() - begin)
        return {'cpu_share_of_a_core': round(share, 4), 'alive': proc.poll() is None}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=30.0)
    parser.add_argument('--warmup', type=float, default=8.0, help='seconds after start before measuring')
    parser.add_argument('--nodes', nargs='+', default=['policy', 'guard', 'sim'], choices=['policy', 'guard', 'sim'])
    args = parser.parse_args()
    feeder = Feeder()
    time.sleep(2.0)
    begin_cpu, begin = cpu_seconds(os.getpid()), time.monotonic()
    time.sleep(min(args.seconds, 10.0))
    feeder_share = (cpu_seconds(os.getpid()) - begin_cpu) / (time.monotonic() - begin)
    result = {'benchmark': 'idle_cpu', 'seconds': args.seconds, 'cores': os.cpu_count(),
              'baseline_feeder_process': {'cpu_share_of_a_core': round(feeder_share, 4)},
              'target': 'policy and guard < 0.10 of a core each'}
    for name in args.nodes:
        result[name] = measure(name, args.seconds, args.warmup, feeder)
    print(json.dumps(result, indent=2))
    os._exit(0)  # the feeder's executor thread is a daemon


if __name__ == '__main__':
    main()
