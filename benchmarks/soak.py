"""Soak test: the whole stack for `--minutes` (default 30) with faults injected on a schedule.

sim_robot_node + collision_guard_node + policy_node (the shipped policy, config/sim.yaml) run pick_place
episodes back to back over DDS. This process stands between the sim's sensors and the two nodes: it
relays /joint_states and the camera to the topics the nodes read, and injects faults there: camera
dropouts, bursts of NaN and out-of-range joint states, duplicated joint names, a frame stamped in the
future, an oversized frame, a CPU hog for a minute, the policy node and the guard taken through
deactivate/activate, and a box appearing on the arm's path in the guard's scene. An independent check
(its own pinocchio + coal model, states 0.005 rad apart) watches every command that reaches
/arm_controller/joint_trajectory: within the URDF limits, and free of the table and the box.

Prints one JSON object and writes soak.json and soak_timeline.png to --out.

    python benchmarks/soak.py [--minutes 30] [--out soak_out]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RELAYED = {'joint_states': '/soak/joint_states', 'camera': '/soak/camera/image_raw'}
BOX = {'name': 'soak_box', 'size': (0.12, 0.12, 0.12)}
# (name, duration s): one cycle, repeated; each fault starts at its offset in the cycle.
CYCLE_S = 60.0
# Joint-state bursts are shorter than max_obs_age_s (0.5 s): the policy holds at the last trusted
# position throughout; a longer one would (rightly) leave it nothing recent enough to command.
FAULTS = [('camera_dropout', 5.0, 1.5), ('nan_joints', 12.0, 0.3), ('out_of_range_joints', 19.0, 0.3),
          ('duplicated_names', 26.0, 0.3), ('future_frame', 33.0, 0.0), ('oversized_frame', 36.0, 0.0),
          ('policy_lifecycle', 40.0, 2.0), ('guard_lifecycle', 47.0, 2.0), ('scene_box', 53.0, 4.0)]
HOG_EVERY_CYCLES = 5  # a minute-long CPU hog in every 5th cycle
SCENE_UPDATE_ALLOWANCE_S = 0.2
# Faults the policy must hold for (time to HOLD and to recovery are measured); a single bad frame is
# rejected and usually gone before a tick sees it, the others act on other parts of the stack.
HOLDING_FAULTS = ('camera_dropout', 'nan_joints', 'out_of_range_joints', 'duplicated_names')


@dataclass
class FaultRecord:
    name: str
    start: float  # wall clock (monotonic)
    end: float
    hold_after_s: float | None = None  # first HOLD (a single-point policy command) after the start
    recover_after_s: float | None = None  # first chunk (multi-point policy command) after the end


@dataclass
class Monitor:
    """Everything the soak watches, filled from the subscriptions (one lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    policy_out: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, points)
    commands: list[float] = field(default_factory=list)  # monotonic arrival of arm commands
    # when each was published (monotonic, from the publisher's source stamp): where a gap in the
    # controller's stream began (the policy, the guard, or the delivery; `explain_gap`)
    policy_sent: list[float] = field(default_factory=list)
    commands_sent: dict[float, float] = field(default_factory=dict)  # arrival -> publication
    violations: list[dict] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    status: dict = field(default_factory=dict)
    measured: np.ndarray | None = None
    box_pose: tuple | None = None


class IndependentCheck:
    """Its own pinocchio model from the URDF, robot-obstacle pairs only, no padding, no swept-volume
    reasoning: states 0.001 rad apart (about a millimetre of motion) in one batched broad-phase call,
    against the obstacles shrunk by the guard's stated tolerance (max_penetration, 1 mm), plus the URDF
    limits. A start already in contact (the guard lets a chunk leave a contact) is checked from the
    first commanded point on."""

    RESOLUTION = 0.001
    TOLERANCE = 0.001

    def __init__(self) -> None:
        import coal
        import pinocchio as pin

        from diffusion_policy_ros.robot_description import PANDA_JOINTS, panda_description
        urdf = panda_description().urdf_text()
        self.pin, self.coal = pin, coal
        self.model = pin.buildModelFromXML(urdf, mimic=True)
        self.robot = pin.buildGeomFromUrdfString(self.model, urdf, pin.COLLISION)
        self.names = PANDA_JOINTS
        self.lower = np.array(self.model.lowerPositionLimit)
        self.upper = np.array(self.model.upperPositionLimit)
        self.obstacles: dict[str, tuple] = {}
        self.add_box('table', (1.3, 1.2, 0.05), (0.35, 0.0, -0.025))

    def add_box(self, name: str, size, xyz) -> None:
        self.obstacles = {**self.obstacles, name: (tuple(size), tuple(xyz))}
        self._pool = None

    def remove(self, name: str) -> None:
        self.obstacles = {k: v for k, v in self.obstacles.items() if k != name}
        self._pool = None

    def use(self, obstacles: dict) -> None:
        """Check against `obstacles` (a snapshot taken when a command arrived)."""
        if obstacles is not self.obstacles:
            self.obstacles = obstacles
            self._pool = None

    def _build(self):
        pin = self.pin
        geometry = self.robot.copy()
        robot_ids = [i for i in range(geometry.ngeoms) if geometry.geometryObjects[i].parentJoint != 0]
        for name, (size, xyz) in self.obstacles.items():
            shrunk = [v - 2 * self.TOLERANCE for v in size]
            gid = geometry.addGeometryObject(pin.GeometryObject(name, 0, 0, pin.SE3(np.eye(3), np.array(xyz)),
                                                                self.coal.Box(*shrunk)))
            for rid in robot_ids:
                geometry.addCollisionPair(pin.CollisionPair(rid, gid))
        self._geometry = geometry
        self._pool = pin.BroadPhaseManagerPool_DynamicAABBTreeCollisionManager(self.model, geometry, 1)

    def _colliding(self, states: np.ndarray) -> np.ndarray:
        if self._pool is None:
            self._build()
        return np.asarray(self.pin.computeCollisionsInParallel(1, self._pool, np.asfortranarray(states.T), True,
                                                               False), dtype=bool)

    def check(self, start: np.ndarray, points: np.ndarray) -> str | None:
        """Why the motion start -> points is unsafe, or None."""
        if (points < self.lower - 1e-6).any() or (points > self.upper + 1e-6).any():
            return 'outside the joint limits'
        if self._colliding(start[None])[0]:
            start, points = points[0], points[1:]
            if not len(points):
                return None
        path = np.vstack([start, points])
        states = [path[:1]]
        for a, b in zip(path[:-1], path[1:]):
            steps = max(1, int(math.ceil(np.abs(b - a).max() / self.RESOLUTION)))
            states.append(a + np.linspace(0, 1, steps + 1)[1:, None] * (b - a))
        states = np.vstack(states)[1:]
        colliding = self._colliding(states)
        if not colliding.any():
            return None
        return self._describe(states[int(np.argmax(colliding))])

    def _describe(self, q: np.ndarray) -> str:
        pin = self.pin
        data, gdata = self.model.createData(), pin.GeometryData(self._geometry)
        pin.computeCollisions(self.model, data, self._geometry, gdata, q, True)
        for k, result in enumerate(gdata.collisionResults):
            if result.isCollision():
                pair = self._geometry.collisionPairs[k]
                first = self._geometry.geometryObjects[pair.first].name
                second = self._geometry.geometryObjects[pair.second].name
                return f'{first} enters {second} (more than {1000 * self.TOLERANCE:g} mm)'
        return 'a commanded state collides'


def main() -> None:  # noqa: C901 - one scenario, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--minutes', type=float, default=30.0)
    parser.add_argument('--out', default='soak_out')
    args = parser.parse_args()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory
    from visualization_msgs.msg import Marker, MarkerArray

    from diffusion_policy_ros.nodes.bringup import BringUp, plan_bringup, resolve_config
    from diffusion_policy_ros.nodes.demo import _set_sim_parameters
    from diffusion_policy_ros.nodes.services import call_service
    from diffusion_policy_ros.nodes.messages import make_image, seconds_to_stamp, stamp_to_seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f'policy_node.joint_states_topic:={RELAYED["joint_states"]}',
                 f'policy_node.camera_topics:=[{RELAYED["camera"]}]',
                 f'collision_guard_node.joint_states_topic:={RELAYED["joint_states"]}']
    log = open(out / 'nodes.log', 'w')
    bringup = BringUp(plan_bringup(resolve_config('config/sim.yaml'), overrides), transition_timeout_s=180,
                      log=log)
    bringup.start()
    node = rclpy.create_node('soak')
    monitor = Monitor()
    checker = IndependentCheck()
    fault_state = {'name': None}
    joints_pub = node.create_publisher(JointState, RELAYED['joint_states'], qos_profile_sensor_data)
    camera_pub = node.create_publisher(Image, RELAYED['camera'], qos_profile_sensor_data)
    scene_pub = node.create_publisher(MarkerArray, '/collision_scene', QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)

    def relay_joints(msg: JointState) -> None:
        with monitor.lock:
            monitor.measured = np.array(msg.position, dtype=float)
        fault = fault_state['name']
        if fault == 'nan_joints':
            msg.position = [float('nan'), *msg.position[1:]]
        elif fault == 'out_of_range_joints':
            msg.position = [50.0, *msg.position[1:]]
        elif fault == 'duplicated_names':
            msg.name = [*msg.name, msg.name[0]]
            msg.position = [*msg.position, msg.position[0] + 1.0]
        joints_pub.publish(msg)

    def relay_camera(msg: Image) -> None:
        fault = fault_state['name']
        if fault == 'camera_dropout':
            return
        if fault == 'future_frame':
            msg.header.stamp = seconds_to_stamp(stamp_to_seconds(msg.header.stamp) + 1000.0)
            fault_state['name'] = None
        elif fault == 'oversized_frame':
            big = make_image(np.zeros((1080, 1920, 3), np.uint8), msg.header.stamp)
            msg = big
            fault_state['name'] = None
        camera_pub.publish(msg)

    # When each command arrived, as the middleware's receive thread stamped it (C++, no GIL), on this
    # process's monotonic clock. The callbacks below can run late under the CPU hog (the independent
    # check holds the GIL): one 30-minute run counted 0.9 s of that delay as the policy's recovery.
    # The receive stamp is wall-clock time, which can step against the monotonic clock (one run's VM
    # moved it 25.4 s): it is converted with the offset of the moment the callback runs, never a stale one.
    def arrival(info, key: str = 'received_timestamp') -> float:
        received_ns = info.get(key)  # rclpy's MessageInfo: ns since the epoch
        return received_ns * 1e-9 - (time.time() - time.monotonic()) if received_ns else time.monotonic()

    def on_policy(msg: JointTrajectory, info) -> None:
        arrived = arrival(info)
        with monitor.lock:
            monitor.policy_out.append((arrived, len(msg.points)))
            monitor.policy_sent.append(arrival(info, 'source_timestamp'))

    # The independent check runs on a thread of its own (it is slow by design: a millimetre apart), so
    # this process relays the sensors without delay; each command is judged against the measured state
    # and the scene as they were when it arrived.
    pending: list = []
    pending_ready = threading.Condition()
    scene_now = {'obstacles': dict(checker.obstacles)}

    def on_command(msg: JointTrajectory, info) -> None:
        arrived = time.monotonic()
        with monitor.lock:
            measured = monitor.measured
            monitor.commands.append(arrival(info))  # the gaps in the stream, as the middleware received it
            monitor.commands_sent[monitor.commands[-1]] = arrival(info, 'source_timestamp')
        if measured is None:
            return
        order = [list(msg.joint_names).index(n) for n in checker.names if n in msg.joint_names]
        if len(order) != len(checker.names):
            monitor.violations.append({'t': arrived, 'why': f'joints {list(msg.joint_names)}'})
            return
        points = np.array([[p.positions[i] for i in order] for p in msg.points])
        with pending_ready:
            pending.append((arrived, measured.copy(), points, scene_now['obstacles']))
            pending_ready.notify()

    def check_commands() -> None:
        while True:
            with pending_ready:
                while not pending:
                    pending_ready.wait()
                arrived, measured, points, obstacles = pending.pop(0)
            checker.use(obstacles)
            why = checker.check(measured, points)
            if why is not None:
                with monitor.lock:
                    monitor.violations.append({'t': arrived, 'why': why, 'points': len(points),
                                               'measured': measured.round(5).tolist(),
                                               'commanded': points.round(5).tolist(),
                                               'obstacles': {k: list(v) for k, v in obstacles.items()}})

    threading.Thread(target=check_commands, daemon=True).start()

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.level != 0 and status.message:
                with monitor.lock:
                    monitor.reasons[f'{status.name.split(":")[0]}: {status.message.split(":")[0]}'] += 1

    def on_status(msg: String) -> None:
        with monitor.lock:
            monitor.status = json.loads(msg.data)

    node.create_subscription(JointState, '/joint_states', relay_joints, qos_profile_sensor_data)
    node.create_subscription(Image, '/camera/color/image_raw', relay_camera, qos_profile_sensor_data)
    node.create_subscription(JointTrajectory, '/policy/joint_trajectory', on_policy, 50)
    node.create_subscription(JointTrajectory, '/arm_controller/joint_trajectory', on_command, 50)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 50)
    node.create_subscription(String, '/sim_robot_node/task_status', on_status, latched)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    def lifecycle(name: str, transition: int) -> None:
        call_service(node, ChangeState, f'/{name}/change_state',
                      ChangeState.Request(transition=Transition(id=transition)), timeout=30)

    def box_marker(action: int, xyz=(0.0, 0.0, 0.0)) -> MarkerArray:
        marker = Marker(ns='soak', id=1, type=Marker.CUBE, action=action, text=BOX['name'])
        marker.header.frame_id = 'panda_link0'
        marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = xyz
        marker.pose.orientation.w = 1.0
        marker.scale.x, marker.scale.y, marker.scale.z = BOX['size']
        return MarkerArray(markers=[marker])

    def hand_xyz() -> tuple:
        import pinocchio as pin
        with monitor.lock:
            q = monitor.measured
        data = checker.model.createData()
        pin.framesForwardKinematics(checker.model, data, q)
        p = data.oMf[checker.model.getFrameId('panda_hand')].translation
        # Below the hand, clear of the fingers (they reach ~0.11 m below the hand frame): on its way down.
        return (float(p[0]), float(p[1]), float(max(p[2] - 0.2, 0.07)))

    def pids() -> dict[str, int]:
        return {name: proc.pid for name, proc in bringup.processes.items()}

    def rss_mb(pid: int, field: str = 'VmRSS') -> float:
        """Resident MB of a node: VmRSS in all; RssAnon its private memory (heaps: where a leak shows);
        RssShmem the shared memory it has touched, mostly its DDS peers' 64 MiB segments (config/dds),
        which grows as a publisher's frames move through the segment and is bounded by its size."""
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith(f'{field}:'):
                return int(line.split()[1]) / 1024
        return float('nan')

    def private_mb() -> dict[str, float]:
        return {name: round(rss_mb(pid, 'RssAnon'), 1) for name, pid in pids().items()}

    def machine_cpu() -> tuple[int, int]:
        """(stolen, total) CPU ticks of the machine so far (/proc/stat). On a shared VM the hypervisor
        gives the guest's CPU time to its neighbours ("steal"); a cycle that lost much of it is slow for
        reasons outside the stack, and the per-cycle share tells such a run from a regression."""
        values = [int(v) for v in Path('/proc/stat').read_text().splitlines()[0].split()[1:]]
        return (values[7] if len(values) > 7 else 0), sum(values[:8])

    def record_steal() -> None:
        """Append to steal_samples the share of CPU time stolen since the last call."""
        nonlocal cpu_before
        cpu_now = machine_cpu()
        steal_samples.append({'t_s': round(time.monotonic() - started, 1), 'stolen_pct': round(
            100.0 * (cpu_now[0] - cpu_before[0]) / max(1, cpu_now[1] - cpu_before[1]), 1),
            # how far the wall clock (the nodes' stamps and logs) has moved against the monotonic one
            'wall_clock_step_s': round(time.time() - time.monotonic() - wall_minus_monotonic, 3)})
        cpu_before = cpu_now

    records: list[FaultRecord] = []
    episodes: list[dict] = []
    hog = None
    started = time.monotonic()
    wall_minus_monotonic = time.time() - started
    cpu_before = machine_cpu()
    time.sleep(20.0)  # warm-up: first episode running
    rss_start = {name: rss_mb(pid) for name, pid in pids().items()}
    private_start = private_mb()
    deadline = time.monotonic() + args.minutes * 60
    seed, episode_started = 1000, time.monotonic()
    _set_sim_parameters(node, {'seed': seed})
    call_service(node, Trigger, '/sim_robot_node/reset', Trigger.Request())
    cycle = 0
    rss_samples: list[dict] = []  # one per cycle: growth that levels off is warm-up, growth that goes on leaks
    private_samples: list[dict] = []  # the same, RssAnon
    steal_samples: list[dict] = []  # one per cycle: the share of the machine's CPU time stolen in it
    try:
        while time.monotonic() < deadline:
            cycle_start = time.monotonic()
            rss_samples.append({'t_s': round(cycle_start - started, 1),
                                **{name: round(rss_mb(pid), 1) for name, pid in pids().items()}})
            private_samples.append({'t_s': round(cycle_start - started, 1), **private_mb()})
            record_steal()
            if cycle % HOG_EVERY_CYCLES == 2 and hog is None:
                hog = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
                records.append(FaultRecord('cpu_hog', time.monotonic(), time.monotonic() + CYCLE_S))
            for name, offset, duration in FAULTS:
                while time.monotonic() < cycle_start + offset:
                    time.sleep(0.05)
                    status = dict(monitor.status)
                    if status.get('done') and time.monotonic() - episode_started > 2.0:
                        episodes.append({'seed': status.get('seed'), 'success': bool(status.get('success'))})
                        seed += 1
                        _set_sim_parameters(node, {'seed': seed})
                        call_service(node, Trigger, '/sim_robot_node/reset', Trigger.Request())
                        episode_started = time.monotonic()
                    if time.monotonic() >= deadline:
                        break
                if time.monotonic() >= deadline:
                    break
                record = FaultRecord(name, time.monotonic(), time.monotonic() + duration)
                if name in ('policy_lifecycle', 'guard_lifecycle'):
                    target = 'policy_node' if name == 'policy_lifecycle' else 'collision_guard_node'
                    lifecycle(target, Transition.TRANSITION_DEACTIVATE)
                    time.sleep(duration)
                    lifecycle(target, Transition.TRANSITION_ACTIVATE)
                elif name == 'scene_box':
                    xyz = hand_xyz()
                    scene_pub.publish(box_marker(Marker.ADD, xyz))
                    # A scene update is not instantaneous: commands the guard checked before the marker
                    # reached it are judged without the box (DDS and the guard take a few ms; 0.2 s here).
                    time.sleep(SCENE_UPDATE_ALLOWANCE_S)
                    scene_now['obstacles'] = {**scene_now['obstacles'], BOX['name']: (BOX['size'], xyz)}
                    time.sleep(duration)
                    # Forgotten by the check before the guard drops it: what comes after may go there.
                    scene_now['obstacles'] = {k: v for k, v in scene_now['obstacles'].items() if k != BOX['name']}
                    scene_pub.publish(box_marker(Marker.DELETE))
                else:
                    fault_state['name'] = name
                    time.sleep(duration)
                    if fault_state['name'] == name:
                        fault_state['name'] = None
                record.end = time.monotonic()
                records.append(record)
            if hog is not None and cycle % HOG_EVERY_CYCLES == 2:
                hog.kill()
                hog = None
            cycle += 1
    finally:
        if hog is not None:
            hog.kill()
        rss_end = {name: rss_mb(pid) for name, pid in pids().items() if bringup.processes[name].poll() is None}
        private_end = {name: round(rss_mb(pids()[name], 'RssAnon'), 1) for name in rss_end}  # live nodes only
        record_steal()  # the last cycle, cut short by the deadline
        failed = bringup.failed()
        executor.shutdown()
        bringup.stop()
        log.close()

    # --- what happened around each fault (from the policy's own command stream) ---
    with monitor.lock:
        policy_out = list(monitor.policy_out)
        commands = np.sort(np.array(monitor.commands))
        commands_sent, policy_sent = dict(monitor.commands_sent), sorted(monitor.policy_sent)
    for record in records:
        if record.name not in HOLDING_FAULTS:
            continue
        holds = [t for t, n in policy_out if record.start <= t <= record.end + 1.0 and n == 1]
        if holds:
            record.hold_after_s = round(holds[0] - record.start, 3)
        resumed = [t for t, n in policy_out if t >= max(record.end, holds[0] if holds else record.end) and n > 1]
        if resumed:
            record.recover_after_s = round(resumed[0] - record.end, 3)
    # gaps in the controller's command stream, outside the windows where a node was deactivated on purpose
    quiet = [(r.start, r.end + 3.0) for r in records if r.name.endswith('_lifecycle')]
    gaps = []
    for a, b in zip(commands[:-1], commands[1:]):
        if b - a > 0.2 and not any(s <= a <= e or s <= b <= e for s, e in quiet):
            gaps.append({'at_s': round(a - started, 1), 'gap_s': round(b - a, 3),
                         **explain_gap(a, b, commands_sent, policy_sent)})
    per_fault: dict[str, dict] = {}
    for record in records:
        entry = per_fault.setdefault(record.name, {'count': 0, 'hold_after_s': [], 'recover_after_s': []})
        entry['count'] += 1
        for key in ('hold_after_s', 'recover_after_s'):
            value = getattr(record, key)
            if value is not None:
                entry[key].append(value)
    for entry in per_fault.values():
        for key in ('hold_after_s', 'recover_after_s'):
            values = entry.pop(key)
            entry[f'{key}_max'] = max(values) if values else None
            entry[f'{key}_p50'] = float(np.median(values)) if values else None
    successes = sum(e['success'] for e in episodes)
    result = {
        'benchmark': 'soak', 'minutes': args.minutes, 'stack_failed': failed,
        'commands_outside_limits': sum('limits' in v['why'] for v in monitor.violations),
        'commands_into_collision': sum('limits' not in v['why'] for v in monitor.violations),
        'violations': monitor.violations[:20],
        'command_gaps_over_2_periods': len(gaps), 'gaps': gaps[:20],
        'episodes': len(episodes), 'successes': successes,
        'faults': per_fault,
        'fault_records': [{'fault': r.name, 'at_s': round(r.start - started, 1),
                           'duration_s': round(r.end - r.start, 2),
                           'hold_after_s': r.hold_after_s, 'recover_after_s': r.recover_after_s} for r in records],
        'rss_mb_start': {k: round(v, 1) for k, v in rss_start.items()},
        'rss_mb_end': {k: round(v, 1) for k, v in rss_end.items()},
        'rss_growth_mb': {k: round(rss_end[k] - rss_start[k], 1) for k in rss_end if k in rss_start},
        # from the end of the first fault cycle (every fault and code path has run once) to the end
        'rss_growth_after_first_cycle_mb': ({k: round(rss_end[k] - rss_samples[1][k], 1) for k in rss_end
                                             if k in rss_samples[1]} if len(rss_samples) > 1 else None),
        'rss_mb_per_cycle': rss_samples,
        # the private part (RssAnon) alone: the heaps, without the shared memory touched (see rss_mb)
        'private_growth_mb': {k: round(private_end[k] - private_start[k], 1) for k in private_end
                              if k in private_start},
        'private_mb_per_cycle': private_samples,
        'diagnostic_reasons': dict(monitor.reasons.most_common(30)),
        # each entry covers the cycle that ended at its t_s (the first: the 20 s warm-up)
        'cpu_stolen_pct_per_cycle': steal_samples,
        'cpu_stolen_pct_max': max((x['stolen_pct'] for x in steal_samples), default=None),
        'wall_clock_step_max_s': max((abs(x['wall_clock_step_s']) for x in steal_samples), default=None),
        'targets': 'outside limits 0, into collision 0, gaps 0, hold and recovery <= 1 s, RSS growth < 5 MB',
    }
    (out / 'soak.json').write_text(json.dumps(result, indent=2))
    plot_timeline(out / 'soak_timeline.png', started, records, policy_out, monitor.violations, gaps, rss_samples,
                  steal_samples)
    print(json.dumps(result, indent=2), flush=True)
    os._exit(0 if not failed else 1)


def explain_gap(a: float, b: float, commands_sent: dict[float, float], policy_sent: list[float]) -> dict:
    """Where a gap between commands arriving at `a` and `b` began. `guard_sent_gap_s`: between the guard
    publishing them (about the gap itself: the guard published late; much less: the delivery was late).
    `policy_sent_s`: when the policy published each proposal from 0.3 s before the first command to the
    second, relative to the first command's publication (none between 0 and the gap: the policy was late;
    one there: the guard did not forward it in time). `commands_sent`: arrival -> publication;
    `policy_sent`: publications, sorted."""
    first, second = commands_sent.get(a), commands_sent.get(b)
    if first is None or second is None:
        return {}
    return {'guard_sent_gap_s': round(second - first, 3),
            'policy_sent_s': [round(p - first, 3) for p in policy_sent if first - 0.3 <= p <= second]}


def plot_timeline(path: Path, started: float, records, policy_out, violations, gaps, rss_samples,
                  steal_samples) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = sorted({r.name for r in records})
    fig, (ax, rss_ax) = plt.subplots(2, 1, figsize=(14, 0.4 * len(names) + 5.5), sharex=True,
                                     gridspec_kw={'height_ratios': [0.4 * len(names) + 2.5, 3]})
    for row, name in enumerate(names):
        spans = [(r.start - started, max(r.end - r.start, 0.2)) for r in records if r.name == name]
        ax.broken_barh(spans, (row - 0.35, 0.7), color='tab:orange')
    t = np.array([p[0] - started for p in policy_out])
    hold = np.array([p[1] == 1 for p in policy_out])
    row = len(names)
    ax.scatter(t[hold], np.full(hold.sum(), row), s=2, color='tab:red', label='policy HOLD (one point)')
    ax.scatter(t[~hold], np.full((~hold).sum(), row + 0.4), s=2, color='tab:green', label='policy chunk')
    for v in violations:
        ax.axvline(v['t'] - started, color='black', linewidth=1)
    for g in gaps:
        ax.axvline(g['at_s'], color='tab:purple', linewidth=1, linestyle=':')
    ax.set_yticks(range(len(names) + 1), [*names, 'policy output'])
    rss_ax.set_xlabel('seconds')
    ax.set_title(f'soak: faults (orange), policy output, violations ({len(violations)}, black), '
                 f'command gaps ({len(gaps)}, purple)')
    ax.legend(loc='upper right', fontsize=7)
    for name in sorted({k for sample in rss_samples for k in sample} - {'t_s'}):
        rss_ax.plot([r['t_s'] for r in rss_samples], [r.get(name, np.nan) for r in rss_samples], marker='.', label=name)
    rss_ax.set_ylabel('RSS (MB)')
    rss_ax.legend(loc='upper left', fontsize=7)
    steal_ax = rss_ax.twinx()  # each sample covers the cycle that ended at its t_s
    steal_ax.step([x['t_s'] for x in steal_samples], [x['stolen_pct'] for x in steal_samples], where='pre',
                  color='tab:gray', linestyle='--', label='CPU stolen by the hypervisor')
    steal_ax.set_ylabel('CPU stolen (%)')
    steal_ax.set_ylim(bottom=0)
    steal_ax.legend(loc='upper right', fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == '__main__':
    main()
