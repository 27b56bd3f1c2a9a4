"""`dp-ros demo` (and `make demo`): the whole stack in closed loop on the simulated arm.

Brings up sim_robot_node + collision_guard_node + policy_node from config/sim.yaml (the same file
`bringup` and `ros2 launch ... sim.launch.py` read), runs a few episodes over DDS, and reports per
episode success, the success rate, inference latency, publish rate, holds and blocked chunks. It exits
non-zero only when the stack itself failed (a node died, no commands, no episode status), not when
the policy missed an episode.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffusion_policy_ros.diagnostics import GuardStatus, PolicyStatus
from diffusion_policy_ros.nodes.bringup import NODE_LOG
from diffusion_policy_ros.nodes.services import call_service

DEFAULT_CONFIG = 'config/sim.yaml'
POLICY_START_AFTER_S = 0.3  # sim seconds after a reset before the policy runs again (see the episode loop)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--episodes', type=int, default=5, help='episodes to run (default 5)')
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='bring-up params file')
    parser.add_argument('--task', default=None, help='sim task (default: the bring-up file\'s)')
    parser.add_argument('--checkpoint', default=None, help='policy checkpoint (default: the params file\'s)')
    parser.add_argument('--seed', type=int, default=1000, help='first episode seed (held out from demos)')
    parser.add_argument('--out', default='demo_out', help='folder for demo_report.json and the GIF')
    parser.add_argument('--set', action='append', default=[], metavar='NODE.PARAM:=VALUE',
                        help='override a parameter of one node, e.g. policy_node.num_inference_steps:=5')
    parser.add_argument('--startup-timeout', type=float, default=180.0, help='seconds for the nodes to come up')
    parser.add_argument('--verbose', action='store_true',
                        help=f'print the nodes\' logs here too (they always go to OUT/{NODE_LOG})')


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    success: bool
    sim_seconds: float
    info: dict = field(default_factory=dict)


class DemoMonitor:
    """Listens to what the nodes publish: task status, diagnostics, commands and camera frames."""

    def __init__(self, node, status_topic: str, image_topic: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory
        self.node = node
        self._lock = threading.Lock()
        self.status: dict = {}
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.command_stamps: dict[int, list[float]] = {}  # episode -> sim-time stamps of its commands
        self.episode: int | None = None  # the episode whose policy runs now
        self.proposal_count = 0
        self.frames: list[np.ndarray] = []
        self.frame_stamps: list[float] = []  # sim time of each frame (header stamps)
        self.capture = False
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(String, status_topic, self._on_status, latched)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 20)
        node.create_subscription(JointTrajectory, '/arm_controller/joint_trajectory', self._on_command, 20)
        node.create_subscription(JointTrajectory, '/policy/joint_trajectory', self._on_proposal, 20)
        node.create_subscription(Image, image_topic, self._on_image, qos_profile_sensor_data)

    def _on_status(self, msg) -> None:
        with self._lock:
            self.status = json.loads(msg.data)

    def _on_diagnostics(self, msg) -> None:
        with self._lock:
            for status in msg.status:
                self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    def _on_command(self, msg) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self._lock:
            if self.episode is not None:
                self.command_stamps.setdefault(self.episode, []).append(stamp)

    def command_rate_hz(self) -> float:
        """Commands per sim second while the policy ran, over every episode (stamps are sim time, so
        a slow CPU shows as a lower rate only if commands were really missing)."""
        with self._lock:
            spans = [(len(s) - 1, max(s) - min(s)) for s in self.command_stamps.values() if len(s) > 2]
        seconds = sum(span for _, span in spans)
        return sum(n for n, _ in spans) / seconds if seconds > 0 else 0.0

    def _on_proposal(self, msg) -> None:
        with self._lock:
            self.proposal_count += 1

    def _on_image(self, msg) -> None:
        if not self.capture:
            return
        from diffusion_policy_ros.data.image_codec import message_to_rgb8
        frame = message_to_rgb8(msg, topic='demo')
        with self._lock:
            self.frames.append(frame)
            self.frame_stamps.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)

    def frame_period_s(self) -> float:
        """The camera's period in sim time (median gap of the frames' stamps), so the GIF plays at the
        robot's speed; the median, because the first frame may be the one from just before the reset."""
        with self._lock:
            gaps = np.diff(self.frame_stamps)
        gaps = gaps[gaps > 0]
        return float(np.median(gaps)) if gaps.size else 0.1

    def snapshot_status(self) -> dict:
        with self._lock:
            return dict(self.status)

    def diagnostics_of(self, prefix: str) -> dict[str, str]:
        with self._lock:
            for name, values in self.diagnostics.items():
                if name.startswith(prefix):
                    return dict(values)
        return {}


def _set_sim_parameters(node, values: dict, timeout: float = 10.0) -> None:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
    results = call_service(node, SetParameters, '/sim_robot_node/set_parameters', request, timeout).results
    if not results or not all(r.successful for r in results):
        raise RuntimeError(f'sim_robot_node refused parameters {values}: {[r.reason for r in results]}')


def _trigger(node, service: str, timeout: float = 10.0) -> None:
    """Call a std_srvs/Trigger service and require success."""
    from std_srvs.srv import Trigger
    response = call_service(node, Trigger, service, Trigger.Request(), timeout)
    if not response.success:
        raise RuntimeError(f'{service} failed: {response.message}')


def _wait(condition, timeout: float, what: str, bringup) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        failed = bringup.failed()
        if failed:
            raise RuntimeError(f'{failed} while waiting for {what}')
        time.sleep(0.05)
    raise RuntimeError(f'timed out after {timeout:.0f} s waiting for {what}')


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from diffusion_policy_ros.gif import write_gif
    from diffusion_policy_ros.jsonio import write_json
    from diffusion_policy_ros.nodes.bringup import BringUp, NodeLog, plan_bringup, resolve_config
    if args.checkpoint:  # a typo fails here, in one line, not after the nodes came up
        from diffusion_policy_ros.core.checkpoint import read_checkpoint_config
        from diffusion_policy_ros.paths import package_path
        read_checkpoint_config(package_path(args.checkpoint))
    config = resolve_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(args.set)
    if args.task:
        overrides.append(f'sim_robot_node.task:={args.task}')
    if args.checkpoint:
        overrides.append(f'policy_node.checkpoint:={args.checkpoint}')
    launches = plan_bringup(config, overrides)
    node_log = NodeLog(out / NODE_LOG, echo=args.verbose)
    print(f'[demo] bringing up {", ".join(l.executable for l in launches)} from {args.config} '
          f'(their logs: {out / NODE_LOG})', flush=True)
    bringup = BringUp(launches, transition_timeout_s=args.startup_timeout, log=node_log)
    report: dict = {'config': str(config), 'episodes': [], 'stack_ok': False}
    code = 1
    executor = None
    started = time.monotonic()
    results: list[EpisodeResult] = []
    try:
        bringup.start()
        monitor_node = rclpy.create_node('demo_monitor')
        monitor = DemoMonitor(monitor_node, '/sim_robot_node/task_status', '/camera/color/image_raw')
        executor = SingleThreadedExecutor()
        executor.add_node(monitor_node)
        threading.Thread(target=executor.spin, daemon=True).start()
        _wait(lambda: monitor.snapshot_status(), 30, 'the sim task status', bringup)
        task = monitor.snapshot_status().get('task')
        for i in range(args.episodes):
            seed = args.seed + i
            _set_sim_parameters(monitor_node, {'seed': seed})
            monitor.capture = i == 0
            # Between episodes the policy holds: it must not finish the last episode's chunk, or act on
            # its observations, in the new one (the arm jumps back to its start pose at a reset).
            _trigger(monitor_node, '/policy_node/stop')
            _trigger(monitor_node, '/sim_robot_node/reset')
            _wait(lambda: monitor.snapshot_status().get('seed') == seed and
                  not monitor.snapshot_status().get('done'), 30, f'episode {i + 1} to start', bringup)
            # Start once the policy's observation window (2 ticks) holds only the new episode, and the
            # sim takes commands again (sim_robot_node reset_settle_s).
            _wait(lambda: float(monitor.snapshot_status().get('episode_time', 0.0)) >= POLICY_START_AFTER_S, 30,
                  f'episode {i + 1} to settle', bringup)
            _trigger(monitor_node, '/policy_node/start')
            monitor.episode = i
            limit = float(monitor.snapshot_status().get('time_limit', 30.0))
            _wait(lambda: monitor.snapshot_status().get('done'), limit * 4 + 30, f'episode {i + 1} to end', bringup)
            monitor.episode = None
            monitor.capture = False
            status = monitor.snapshot_status()
            result = EpisodeResult(i + 1, seed, bool(status.get('success')), float(status.get('episode_time', 0.0)),
                                   status.get('info', {}))
            results.append(result)
            print(f'[demo] episode {result.episode}/{args.episodes} (seed {seed}): '
                  f'{"success" if result.success else "failure"} after {result.sim_seconds:.1f} s sim time', flush=True)
        policy = PolicyStatus.from_values(monitor.diagnostics_of('policy_node'))
        guard = GuardStatus.from_values(monitor.diagnostics_of('collision_guard_node'))
        rate = monitor.command_rate_hz()
        successes = sum(r.success for r in results)
        report.update({
            'task': task,
            'episodes': [r.__dict__ for r in results],
            'success_rate': successes / max(1, len(results)),
            'successes': successes,
            'inference_latency_p50_ms': policy.inference_latency_p50_ms,
            'inference_latency_p99_ms': policy.inference_latency_p99_ms,
            'publish_rate_hz': rate,
            'policy_proposals': monitor.proposal_count,
            'hold_seconds': policy.hold_s,
            'blocked_chunks': guard.blocked_chunks,
            'fallbacks_planned': guard.fallbacks_planned,
            'guard_backend': guard.backend,
            'wall_seconds': time.monotonic() - started,
        })
        report['stack_ok'] = bool(results) and rate > 5.0 and monitor.proposal_count > 0
        if monitor.frames:
            write_gif(out / 'demo_episode1.gif', monitor.frames, monitor.frame_period_s(), upscale=3)
            report['gif'] = str(out / 'demo_episode1.gif')
        code = 0 if report['stack_ok'] else 1
    except (RuntimeError, TimeoutError) as err:
        report['error'] = str(err)
        print(f'[demo] the stack failed: {err}', flush=True)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (the CLI turns it into this): a requested stop
        report['error'] = f'stopped by {str(stop) or "SIGINT"}'
        report['episodes'] = [r.__dict__ for r in results]
        report['interrupted'] = True
        print(f'[demo] {report["error"]}: stopping the nodes', flush=True)
        code = 0
    finally:
        if executor is not None:
            executor.shutdown()
        bringup.stop()
        if rclpy.ok():
            rclpy.shutdown()
        node_log.close()
    write_json(out / 'demo_report.json', report)
    _print_summary(report, out, args.episodes)
    return code


def _print_summary(report: dict, out: Path, planned_episodes: int) -> None:
    episodes = report.get('episodes', [])
    if report.get('interrupted'):
        print(f"[demo] stopped after {len(episodes)} of {planned_episodes} episodes "
              f"({sum(e['success'] for e in episodes)} succeeded); report: {out / 'demo_report.json'}, "
              f"node logs: {out / NODE_LOG}", flush=True)
        return
    if 'success_rate' in report:
        print(f"\n[demo] {report.get('task')}: {report['successes']}/{len(episodes)} episodes succeeded "
              f"({100 * report['success_rate']:.0f} %)")
        print(f"[demo] inference latency p50 {report['inference_latency_p50_ms']:.1f} ms, "
              f"p99 {report['inference_latency_p99_ms']:.1f} ms; commands to the arm at "
              f"{report['publish_rate_hz']:.2f} Hz of sim time while the policy ran")
        holds = ', '.join(f'{k} {v:.1f} s' for k, v in report['hold_seconds'].items()) or 'none'
        print(f"[demo] holds: {holds}; blocked chunks: {report['blocked_chunks']} "
              f"(guard backend {report['guard_backend'] or '?'}, fallbacks {report['fallbacks_planned']})")
    print(f'[demo] report: {out / "demo_report.json"}' + (f", GIF: {report['gif']}" if report.get('gif') else '')
          + f', node logs: {out / NODE_LOG}')
    print(f"[demo] stack {'OK' if report.get('stack_ok') else 'FAILED'}", flush=True)
