"""Proposal-to-output latency of collision_guard_node, free and colliding chunks, under load.

The sim stack of `make demo` runs beside it (sim_robot_node, policy_node and their own guard, from
config/sim.yaml, with the policy acting on pick_place), so the CPU is as busy as on the demo. The guard
measured is a second collision_guard_node on its own topics, with the params file's table plus a box,
fed joint states at HOME (100 Hz) from this process. Probes alternate: a free chunk (joint 1 turns away
from the box: forwarded unchanged) and a colliding one (joint 1 turns through the box: replaced by a
fallback plan). Each probe waits for the guard's answer; latency is from publishing the probe to
receiving the answer, wall clock, in this process (both DDS hops included). Scene probes measure the
reaction to a scene update: a slow free chunk is forwarded (the arm "executes" it for 8 s), then a crate
marker appears on its path; latency is from publishing the marker to receiving the cut the guard sends
without any new proposal (issue 15's scene-update-to-reaction). Evasion probes: the arm holds at HOME,
a second crate parked 0.7 m in front of it is seen to move towards it at 0.3 m/s (two sightings 0.1 s
apart): latency is from publishing the second sighting to receiving the evasion (or the hold) the guard
sends for an arm standing where the crate is going. Prints one JSON object.

    python benchmarks/guard_latency.py [--probes 200] [--no-load]     # GUARD_LOG=FILE keeps the guard's log
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOPICS = {'input_topic': '/guard_bench/proposed', 'output_topic': '/guard_bench/checked',
          'joint_states_topic': '/guard_bench/joint_states', 'scene_topic': '/guard_bench/scene'}
BOX = {'size': [0.1, 0.1, 0.3], 'pose': [0.25, 0.25, 0.5]}
MEASURED = 'guard_under_test'  # the stack beside it runs a collision_guard_node of its own
CRATE_PARKED_X, CRATE_SPEED = 0.7, 0.3  # m, m/s: the evasion probes' crate, in front of the hand at HOME


def percentiles(values: list[float]) -> dict[str, float]:
    ms = np.asarray(values) * 1e3
    return {'n': int(ms.size), 'p50_ms': round(float(np.median(ms)), 3),
            'p99_ms': round(float(np.percentile(ms, 99)), 3), 'max_ms': round(float(ms.max()), 3)}


def guard_command(params_dir: Path) -> list[str]:
    # The params file is keyed by the node's name: the renamed guard gets a copy under its own name.
    import yaml
    document = yaml.safe_load((ROOT / 'config' / 'collision_guard.yaml').read_text())
    params_file = params_dir / 'guard_under_test.yaml'
    params_file.write_text(yaml.safe_dump({MEASURED: document['collision_guard_node']}))
    args = [sys.executable, '-m', 'diffusion_policy_ros.nodes.collision_guard_node', '--ros-args',
            '-r', f'__node:={MEASURED}', '--params-file', str(params_file)]
    params = {**TOPICS, 'scene.object_names': '[table,box]', 'scene.box.shape': 'box',
              'scene.box.size': '[' + ','.join(map(str, BOX['size'])) + ']',
              'scene.box.pose': '[' + ','.join(map(str, BOX['pose'])) + ']', 'diagnostics_rate_hz': '2.0'}
    for key, value in params.items():
        args += ['-p', f'{key}:={value}']
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--probes', type=int, default=200, help='probes of each kind')
    parser.add_argument('--no-load', action='store_true', help='leave the demo stack out (quiet baseline)')
    args = parser.parse_args()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.duration import Duration
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory
    from visualization_msgs.msg import Marker, MarkerArray

    from diffusion_policy_ros.nodes.messages import make_joint_trajectory
    from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS
    env = os.environ.copy()
    params_dir = Path(tempfile.mkdtemp(prefix='guard_latency_'))
    procs = [subprocess.Popen(guard_command(params_dir), cwd=ROOT, env=env, stdout=open(os.environ.get('GUARD_LOG', os.devnull), 'w'),
                              stderr=subprocess.STDOUT)]
    if not args.no_load:
        procs.append(subprocess.Popen([sys.executable, '-m', 'diffusion_policy_ros.nodes.bringup', '--config',
                                       'config/sim.yaml'], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT))
    rclpy.init()
    node = rclpy.create_node('guard_latency_bench')
    answers: list[tuple[float, JointTrajectory]] = []
    lock = threading.Lock()
    diagnostics: dict[str, dict[str, str]] = {}

    def on_answer(msg: JointTrajectory) -> None:
        with lock:
            answers.append((time.perf_counter(), msg))

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            diagnostics[status.name.split(':')[0]] = {kv.key: kv.value for kv in status.values}

    home = np.array(PANDA_HOME)
    joints = node.create_publisher(JointState, TOPICS['joint_states_topic'], qos_profile_sensor_data)
    probes = node.create_publisher(JointTrajectory, TOPICS['input_topic'], 10)
    answer_sub = node.create_subscription(JointTrajectory, TOPICS['output_topic'], on_answer, 10)
    scene = node.create_publisher(MarkerArray, TOPICS['scene_topic'], QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 20)

    def publish_joints() -> None:
        msg = JointState(name=list(PANDA_JOINTS), position=[float(x) for x in home])
        msg.header.stamp = node.get_clock().now().to_msg()
        joints.publish(msg)

    node.create_timer(0.01, publish_joints)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    def chunk(turn: float, elbow: float = 0.0, dt: float = 0.1) -> JointTrajectory:
        goal = home + np.eye(len(home))[0] * turn + np.eye(len(home))[3] * elbow
        return make_joint_trajectory(PANDA_JOINTS, np.linspace(home, goal, 17)[1:], dt,
                                     node.get_clock().now().to_msg())

    def crate(action: int) -> MarkerArray:
        marker = Marker(ns='bench', id=1, type=Marker.CUBE, action=action, text='crate')
        marker.header.frame_id = 'panda_link0'
        marker.header.stamp = node.get_clock().now().to_msg()
        # where the hand ends on the scene probe's path (joint 1 -0.6, joint 4 +0.2), clear of it at HOME
        marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = 0.25, -0.171, 0.685
        marker.pose.orientation.w = 1.0
        marker.scale.x = marker.scale.y = marker.scale.z = 0.08
        return MarkerArray(markers=[marker])

    def moving_crate(x: float, stamp) -> MarkerArray:
        """The evasion probes' crate at x in front of the hand at HOME, sighted at `stamp`."""
        marker = Marker(ns='bench', id=2, type=Marker.CUBE, action=Marker.ADD, text='moving_crate')
        marker.header.frame_id = 'panda_link0'
        marker.header.stamp = stamp.to_msg()
        marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = x, 0.0, 0.48
        marker.pose.orientation.w = 1.0
        marker.scale.x = marker.scale.y = marker.scale.z = 0.08
        return MarkerArray(markers=[marker])

    def park_crate() -> None:
        """Two sightings at the parking spot: at rest there, out of every other probe's way."""
        for _ in range(2):
            scene.publish(moving_crate(CRATE_PARKED_X, node.get_clock().now()))
            time.sleep(0.1)

    def answer_to(publish, what: str) -> tuple[float, JointTrajectory]:
        with lock:
            count = len(answers)
        sent = time.perf_counter()
        publish()
        while True:
            with lock:
                if len(answers) > count:
                    received, answer = answers[count]
                    return received - sent, answer
            if time.perf_counter() - sent > 5.0:
                raise SystemExit(f'no answer to a {what} probe within 5 s')
            time.sleep(0.0002)

    code = 0
    latency: dict[str, list[float]] = {'free': [], 'colliding': [], 'scene': [], 'evasion': []}
    kinds: dict[str, list[int]] = {'free': [], 'colliding': [], 'scene': [], 'evasion': []}
    try:
        deadline = time.monotonic() + 180
        while diagnostics.get(MEASURED, {}).get('joint_state') != 'fresh' or \
                answer_sub.get_publisher_count() == 0 or probes.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise SystemExit(f'the guard did not come up (diagnostics {diagnostics})')
            time.sleep(0.2)
        if not args.no_load:
            while 'policy_node' not in diagnostics and time.monotonic() < deadline:
                time.sleep(0.2)
        time.sleep(2.0)
        park_crate()
        for i in range(4 * args.probes):
            kind = ('free', 'colliding', 'scene', 'evasion')[i % 4]
            began = time.perf_counter()
            if kind == 'evasion':
                stay = make_joint_trajectory(PANDA_JOINTS, home[None], 0.1, node.get_clock().now().to_msg())
                answer_to(lambda: probes.publish(stay), 'hold in place')
                seen = node.get_clock().now()
                scene.publish(moving_crate(CRATE_PARKED_X, seen))
                time.sleep(0.1)
                took, answer = answer_to(lambda: scene.publish(moving_crate(
                    CRATE_PARKED_X - CRATE_SPEED * 0.1, seen + Duration(seconds=0.1))), 'evasion')
                park_crate()
            elif kind == 'scene':
                slow = chunk(-0.6, 0.2, dt=0.5)
                waited, _ = answer_to(lambda: probes.publish(slow), 'slow free')
                took, answer = answer_to(lambda: scene.publish(crate(Marker.ADD)), 'scene')
                scene.publish(crate(Marker.DELETE))
                time.sleep(0.05)  # the guard drops the crate before the next probe
            else:
                msg = chunk(-0.3 if kind == 'free' else 1.57)
                took, answer = answer_to(lambda: probes.publish(msg), kind)
            latency[kind].append(took)
            kinds[kind].append(len(answer.points))
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - began)))  # the policy's 10 Hz
        guard = diagnostics.get(MEASURED, {})
        result = {
            'benchmark': 'guard_latency', 'load': 'none' if args.no_load else 'sim + policy + guard of config/sim.yaml',
            'free': percentiles(latency['free']), 'colliding': percentiles(latency['colliding']),
            'scene_update_to_cut': percentiles(latency['scene']),
            'moving_crate_to_evasion': percentiles(latency['evasion']),
            'evasions_sent': int(sum(n > 1 for n in kinds['evasion'])),
            'scene_cuts_shorter_than_the_chunk': int(sum(n < 16 for n in kinds['scene'])),
            'free_forwarded_unchanged': int(sum(n == 16 for n in kinds['free'])),
            'colliding_replaced': int(sum(n != 16 for n in kinds['colliding'])),
            'guard_diagnostics': {k: guard.get(k) for k in (
                'check_latency_p50_ms', 'check_latency_p99_ms', 'planning_time_p50_ms', 'planning_time_p99_ms',
                'output_latency_free_p99_ms', 'output_latency_blocked_p99_ms', 'fallbacks_planned',
                'planning_failures', 'plans_superseded', 'executing_blocked', 'evasions', 'output_latency_scene_p50_ms',
                'output_latency_scene_p99_ms')},
            'policy_inference_p50_ms': diagnostics.get('policy_node', {}).get('inference_latency_p50_ms'),
            'policy_inference_p99_ms': diagnostics.get('policy_node', {}).get('inference_latency_p99_ms'),
            'target': 'free p99 <= 10 ms, colliding p99 <= 150 ms, scene update to cut (or evasion) p99 <= 100 ms',
        }
        print(json.dumps(result, indent=2))
    except SystemExit as err:
        print(f'guard_latency: {err}', file=sys.stderr, flush=True)
        code = 1
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        os._exit(code)


if __name__ == '__main__':
    main()
