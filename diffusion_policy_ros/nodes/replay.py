"""`dp-ros replay`: play a rosbag2 through the real nodes and score what they publish.

    dp-ros replay BAG_OR_DIR... --params config/policy.yaml [--checkpoint CKPT] [--rate R] [--out OUT_DIR]
                      [--no-guard] [--connect] [--set NODE.PARAM:=VALUE ...] [--threshold NAME=VALUE ...]

1. Before any node starts, the bag is read to the end and checked against the params and the
   checkpoint (camera topics, joint-states topic with the checkpoint's joints, demonstrated commands):
   a truncated or mismatched bag is refused with a message that names what is wrong.
2. policy_node (and collision_guard_node unless --no-guard) start through `bringup`'s machinery from
   the same params files, on `use_sim_time`; when guarded the policy proposes on
   /policy/joint_trajectory and the guard forwards to the controller topic. --connect uses nodes that
   already run instead.
3. The bag's messages are published with their recorded timing (scaled by --rate) and a /clock taken
   from their stamps. The demonstrated commands are not published (the guard/policy own that topic);
   they are the reference the policy is scored against.
4. Every message the nodes publish (trajectories, diagnostics, lifecycle events) goes into a new
   rosbag2 in OUT_DIR/recorded as it arrives; the bag is closed (flushed) at the end and on Ctrl-C.
5. OUT_DIR/report.json and PNG plots come from the input and the recorded bag
   (`diffusion_policy_ros.data.replay_metrics` and `replay_scores`, which define every metric), with a
   PASS/FAIL verdict against `--threshold`s. Several bags (or a directory of them) replay one after
   the other, each into OUT_DIR/<bag name>, with one summary table and one verdict.

Exit status: 0 PASS (or stopped by SIGINT/SIGTERM), 1 FAIL or the nodes failed, 2 input refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffusion_policy_ros.data.bags import TYPESTORE, BagError, BagWriter, find_bags, read_messages
from diffusion_policy_ros.data.replay_metrics import (DIAGNOSTICS_TYPE, GUARD_STATUS_SUFFIX, BagReference,
                                                      DiagnosticSample, ReplayInputError, ReplayTopics, check_bag,
                                                      compute_report, load_recorded, write_plots, write_report)
from diffusion_policy_ros.data.replay_scores import (ReplayThresholds, add_scores, format_or_na, suite_verdict,
                                                     summary_row, summary_table, verdict_lines)

GUARDED_POLICY_TOPIC = '/policy/joint_trajectory'  # what the guard reads (config/sim.yaml, config/robot.yaml)
DEFAULT_COMMAND_TOPIC = '/arm_controller/joint_trajectory'
RECORDED_BAG = 'recorded'
# Topics a bag may hold that must not be played back: the graph has its own publishers for them.
NEVER_PLAYED = ('/clock', '/diagnostics', '/rosout', '/parameter_events')
EXIT_REFUSED, EXIT_FAILED = 2, 1
REPLAY_NOISE_SEED = 1  # policy_node.seed of the nodes a replay starts, unless --set says otherwise
EXIT_CODES = ('exit codes: 0 PASS (of the bag, or of the set of bags), or stopped by SIGINT/SIGTERM (report.json '
              'says interrupted); 1 FAIL, or the nodes failed; 2 a bag, the params or the checkpoint do not fit')


@dataclass
class ReplayConfig:
    """Everything `dp-ros replay` takes; `from_args` maps the command line onto it."""

    bag: Path
    params: str = 'config/policy.yaml'
    out: Path | None = None  # default: replays/<bag name>
    checkpoint: str | None = None  # overrides the params file's
    rate: float = 1.0
    guard: bool = True
    connect: bool = False
    command_topic: str = DEFAULT_COMMAND_TOPIC
    guard_params: str = 'config/collision_guard.yaml'  # used when --params is not a bring-up file
    overrides: list[str] = field(default_factory=list)  # NODE.PARAM:=VALUE
    clock_hz: float = 100.0  # /clock messages per second of bag time between message stamps
    storage: str = 'mcap'
    discovery_timeout_s: float = 30.0  # per wait: nodes on the input topics, on /clock, their publishers
    drain_s: float = 1.0  # wall time to wait for the nodes' last messages after the bag ends
    verbose: bool = False  # the nodes' logs on the terminal too (they always go to OUT_DIR/nodes.log)
    thresholds: ReplayThresholds = field(default_factory=ReplayThresholds)  # what PASS needs

    def __post_init__(self) -> None:
        self.bag = Path(self.bag)
        if not self.rate > 0:
            raise ValueError(f'--rate must be > 0, got {self.rate}')
        if not self.clock_hz > 0:
            raise ValueError(f'--clock-hz must be > 0, got {self.clock_hz}')
        if not any(o.startswith('policy_node.seed:=') for o in self.overrides):
            # A replay is a test: the same checkpoint on the same bag samples the same noise (a
            # bimodal policy may otherwise take the other way on one run and not the next).
            self.overrides = [*self.overrides, f'policy_node.seed:={REPLAY_NOISE_SEED}']
        for override in self.overrides:
            node, _, rest = override.partition('.')
            if node not in ('policy_node', 'collision_guard_node') or ':=' not in rest:
                raise ValueError(f'--set {override!r}: expected policy_node.PARAM:=VALUE or '
                                 f'collision_guard_node.PARAM:=VALUE')

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else Path('replays') / self.bag.name


# ---------------------------------------------------------------------- planning (no node runs yet)
@dataclass
class ReplayPlan:
    launches: list[Any]  # bringup.NodeLaunch, in start order; empty with --connect
    policy_params: dict[str, Any]  # effective parameters of policy_node
    checkpoint: Path
    topics: ReplayTopics
    policy_topic: str  # where the policy's trajectories appear
    guard_topic: str | None  # where the guard's appear (None: --no-guard)
    notes: list[str] = field(default_factory=list)

    @property
    def recorded_topics(self) -> dict[str, str]:
        """topic -> type of what the nodes publish and the replay records."""
        topics = {self.policy_topic: 'trajectory_msgs/msg/JointTrajectory', '/diagnostics': DIAGNOSTICS_TYPE}
        if self.guard_topic is not None:
            topics[self.guard_topic] = 'trajectory_msgs/msg/JointTrajectory'
        for launch in self.launches:
            topics[f'/{launch.executable}/transition_event'] = 'lifecycle_msgs/msg/TransitionEvent'
        return topics


def _params_overrides(args: list[str]) -> dict[str, Any]:
    values = {}
    for flag, value in zip(args, args[1:]):
        if flag == '-p':
            name, _, text = value.partition(':=')
            values[name] = yaml.safe_load(text) if text else ''
    return values


def effective_parameters(launch: Any) -> dict[str, Any]:
    """What the node will read: its params files in order, then the `-p` overrides."""
    from diffusion_policy_ros.nodes.params import load_params_file
    merged: dict[str, Any] = {}
    for path in launch.params_files:
        merged.update(load_params_file(path, launch.executable))
    merged.update(_params_overrides(launch.extra_args))
    return merged


def _node_launches(cfg: ReplayConfig) -> tuple[Any, Any | None]:
    """(policy_node, collision_guard_node) launches from a bring-up file or a plain params file."""
    from diffusion_policy_ros.nodes.bringup import NodeLaunch, plan_bringup, resolve_config
    config = resolve_config(cfg.params)
    data = yaml.safe_load(config.read_text()) or {}
    if isinstance(data, dict) and 'bringup' in data:
        launches = {launch.executable: launch for launch in plan_bringup(config, cfg.overrides)}
        if 'policy_node' not in launches:
            raise ReplayInputError(f'{config}: the bring-up file starts no policy_node')
        guard = launches.get('collision_guard_node')
        if guard is None and cfg.guard:
            guard = NodeLaunch('collision_guard_node', [resolve_config(cfg.guard_params)],
                               _node_overrides(cfg.overrides, 'collision_guard_node'))
        return launches['policy_node'], guard
    if 'policy_node' not in data and '/**' not in data:
        raise ReplayInputError(f'{config}: no policy_node.ros__parameters section (is it a params file?)')
    policy = NodeLaunch('policy_node', [config], _node_overrides(cfg.overrides, 'policy_node'))
    guard = NodeLaunch('collision_guard_node', [resolve_config(cfg.guard_params)],
                       _node_overrides(cfg.overrides, 'collision_guard_node'))
    return policy, guard


def _node_overrides(overrides: list[str], node: str) -> list[str]:
    return [a for o in overrides if o.startswith(node + '.') for a in ('-p', o[len(node) + 1:])]


def _set(launch: Any, **values: Any) -> None:
    for name, value in values.items():
        text = ('[' + ','.join(map(str, value)) + ']') if isinstance(value, (list, tuple)) else (
            ('true' if value else 'false') if isinstance(value, bool) else str(value))
        launch.extra_args += ['-p', f'{name}:={text}']


def plan_replay(cfg: ReplayConfig) -> ReplayPlan:
    """Resolve params files, checkpoint and topics; raise `ReplayInputError` (or `CheckpointError`,
    `FileNotFoundError`) naming what does not fit. Starts nothing."""
    from diffusion_policy_ros.core.checkpoint import fit_camera_topics, read_checkpoint_config
    from diffusion_policy_ros.core.config import PolicyConfig
    from diffusion_policy_ros.nodes.policy_node import PolicyNodeParams
    from diffusion_policy_ros.paths import package_path

    policy, guard = _node_launches(cfg)
    notes: list[str] = []
    defaults = {f: getattr(PolicyNodeParams(), f) for f in PolicyNodeParams.__dataclass_fields__}
    params = {**defaults, **effective_parameters(policy)}
    if cfg.checkpoint is not None:
        params['checkpoint'] = str(Path(cfg.checkpoint).expanduser().resolve())
    checkpoint = package_path(str(params['checkpoint']))
    ckpt = read_checkpoint_config(checkpoint)
    checkpoint_rate = 1.0 / PolicyConfig.from_dict(ckpt['policy_config']).execution.control_period_s
    if params.get('control_rate_hz') is None:  # unset: the node runs at the checkpoint's rate
        params['control_rate_hz'] = checkpoint_rate
    observed = list(ckpt['observation_spec'].get('joint_names', []))
    action = list(ckpt['action_spec'].get('joint_names', []))
    try:
        camera_topics, note = fit_camera_topics(list(params.get('camera_topics') or []),
                                                ckpt['observation_spec'].get('camera_keys', []), checkpoint)
    except ValueError as err:
        raise ReplayInputError(f'{err} (params {cfg.params}): set policy_node.camera_topics') from None
    if note:
        notes.append(note)
    params['camera_topics'] = camera_topics
    policy_topic = GUARDED_POLICY_TOPIC if cfg.guard else str(params['output_topic'])
    guard_topic = None
    if cfg.guard:
        guard_params = effective_parameters(guard)
        from diffusion_policy_ros.nodes.collision_guard_node import GuardNodeParams
        guard_topic = str(guard_params.get('output_topic', GuardNodeParams().output_topic))
    topics = ReplayTopics(tuple(camera_topics), str(params['joint_states_topic']), cfg.command_topic,
                          tuple(observed), tuple(action))
    launches: list[Any] = []
    if not cfg.connect:
        # the node's diagnostics at the control rate give one latency sample per chunk (replay_metrics)
        policy.extra_args = ['-p', f'diagnostics_rate_hz:={float(params["control_rate_hz"])}'] + policy.extra_args
        _set(policy, use_sim_time=True)
        if cfg.checkpoint is not None:
            _set(policy, checkpoint=params['checkpoint'])
        if not camera_topics:
            policy.extra_args += ['-p', 'camera_topics:=[]']
        launches.append(policy)
        if cfg.guard:
            guard.extra_args = ['-p', 'diagnostics_rate_hz:=5.0'] + guard.extra_args
            _set(guard, use_sim_time=True, input_topic=GUARDED_POLICY_TOPIC,
                 joint_states_topic=topics.joint_states_topic)
            _set(policy, output_topic=GUARDED_POLICY_TOPIC)
            launches.insert(0, guard)  # the guard listens before the policy proposes
    params['output_topic'] = policy_topic
    return ReplayPlan(launches, params, checkpoint, topics, policy_topic, guard_topic, notes)


def topics_to_play(reference: BagReference, plan: ReplayPlan) -> dict[str, str]:
    """Bag topics published into the graph: all but the reference commands and the nodes' own topics."""
    skip = {*NEVER_PLAYED, plan.topics.command_topic, *plan.recorded_topics}
    return {topic: msgtype for topic, (msgtype, _) in reference.topics.items() if topic not in skip}


def message_class(msgtype: str) -> type:
    """The rclpy class of 'pkg/msg/Type' (raises ImportError/AttributeError for unknown types)."""
    package, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


# ---------------------------------------------------------------------- recording
class Recorder:
    """Raw subscriptions to the nodes' topics; each message is written to the output bag on arrival,
    stamped with the replay clock (as `ros2 bag record --use-sim-time` would)."""

    def __init__(self, node: Any, writer: BagWriter, topics: dict[str, str], clock_ns: Any) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        self.writer = writer
        self.clock_ns = clock_ns
        self.counts: Counter[str] = Counter()
        self.last_received: dict[str, float] = {}
        self.guard_before_playback: DiagnosticSample | None = None
        self.playing = False
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._open = True
        self.subscriptions = {}
        for topic, msgtype in topics.items():
            self.subscriptions[topic] = node.create_subscription(
                message_class(msgtype), topic, lambda raw, t=topic, m=msgtype: self._on_message(t, m, raw),
                QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE), raw=True)

    def _on_message(self, topic: str, msgtype: str, raw: bytes) -> None:
        try:
            msg = TYPESTORE.deserialize_cdr(raw, msgtype)
        except Exception as err:  # noqa: BLE001 - keep recording the other topics
            self.failures.append(f'{topic}: cannot deserialise a {msgtype}: {err!r}')
            return
        with self._lock:
            if not self._open:
                return
            self.writer.write(topic, msgtype, msg, self.clock_ns())
            self.counts[topic] += 1
            self.last_received[topic] = time.monotonic()
            if msgtype == DIAGNOSTICS_TYPE and not self.playing:
                for status in msg.status:
                    if status.name.endswith(GUARD_STATUS_SUFFIX):
                        self.guard_before_playback = DiagnosticSample(
                            0.0, status.name, int(status.level), status.message,
                            {kv.key: kv.value for kv in status.values})

    def close(self) -> None:
        """Stop writing and flush the bag (idempotent)."""
        with self._lock:
            if self._open:
                self._open = False
                self.writer.close()


# ---------------------------------------------------------------------- playback
@dataclass
class PlaybackStats:
    published: Counter = field(default_factory=Counter)
    clock_messages: int = 0
    wall_s: float = 0.0
    sim_s: float = 0.0
    max_lag_s: float = 0.0  # how far behind the scaled schedule a publish went (machine too slow)

    @property
    def achieved_rate(self) -> float | None:
        return self.sim_s / self.wall_s if self.wall_s > 0 else None


class Player:
    """Publishes a bag's messages at their stamps (scaled by ``rate``) with /clock from the same stamps."""

    def __init__(self, node: Any, topics: dict[str, str], rate: float, clock_hz: float) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        self._clock_cls = Clock
        self.rate = rate
        self.clock_step_ns = max(1, int(round(1e9 / clock_hz)))
        self.clock_pub = node.create_publisher(Clock, '/clock', 10)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        for topic, msgtype in topics.items():
            try:
                self.publishers[topic] = node.create_publisher(message_class(msgtype), topic, qos)
            except (ImportError, AttributeError, ValueError) as err:
                self.skipped[topic] = f'{msgtype}: {err}'
        self.now_ns: int | None = None  # the last /clock published
        self.stats = PlaybackStats()
        self.stop_requested = threading.Event()

    def _publish_clock(self, stamp_ns: int) -> None:
        from builtin_interfaces.msg import Time
        sec, nanosec = divmod(stamp_ns, 1_000_000_000)
        self.clock_pub.publish(self._clock_cls(clock=Time(sec=sec, nanosec=nanosec)))
        self.now_ns = stamp_ns
        self.stats.clock_messages += 1

    def play(self, bag: Path, start_ns: int, end_ns: int) -> PlaybackStats:
        messages = read_messages(bag, topics=list(self.publishers))
        first = next(messages, None)  # opens the bag before the schedule starts (tens of ms)
        wall0 = time.monotonic()

        def wait_until(stamp_ns: int) -> None:
            target = wall0 + (stamp_ns - start_ns) * 1e-9 / self.rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.stats.max_lag_s = max(self.stats.max_lag_s, -delay)

        def advance_clock(to_ns: int) -> None:
            next_tick = start_ns if self.now_ns is None else self.now_ns + self.clock_step_ns
            while next_tick < to_ns:
                wait_until(next_tick)
                self._publish_clock(next_tick)
                next_tick += self.clock_step_ns
            if self.now_ns is None or to_ns > self.now_ns:
                wait_until(to_ns)
                self._publish_clock(to_ns)  # before the message: a node never sees a stamp from its future

        try:
            for item in itertools.chain([first] if first is not None else [], messages):
                if self.stop_requested.is_set():
                    break
                stamp = max(item.stamp_ns, self.now_ns or start_ns)  # the clock never goes backwards
                advance_clock(stamp)
                raw = bytes(TYPESTORE.serialize_cdr(item.msg, item.msgtype))
                self.publishers[item.topic].publish(raw)
                self.stats.published[item.topic] += 1
            else:
                advance_clock(end_ns)
        finally:
            self.stats.wall_s = time.monotonic() - wall0
            self.stats.sim_s = ((self.now_ns or start_ns) - start_ns) * 1e-9
        return self.stats


# ---------------------------------------------------------------------- the run
def _wait(condition: Any, timeout_s: float, what: str, failed: Any = lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        problem = failed()
        if problem:
            raise RuntimeError(problem)
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout_s:.0f} s waiting for {what}')
        time.sleep(0.05)


def replay(cfg: ReplayConfig, log: Any = print) -> dict[str, Any]:
    """Run one replay (see the module docstring) and return the report (also written to OUT_DIR).

    Raises `ReplayInputError`/`BagError`/`CheckpointError` before any node starts when the input does
    not fit; RuntimeError/TimeoutError when the nodes fail; KeyboardInterrupt after flushing."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from diffusion_policy_ros.nodes.bringup import NODE_LOG, BringUp, NodeLog

    plan = plan_replay(cfg)
    for note in plan.notes:
        log(f'[replay] note: {note}')
    reference = check_bag(cfg.bag, plan.topics)
    out_dir = cfg.out_dir
    recorded_bag = out_dir / RECORDED_BAG
    if recorded_bag.exists():
        raise ReplayInputError(f'{recorded_bag} already exists: choose an empty --out')
    out_dir.mkdir(parents=True, exist_ok=True)
    play_topics = topics_to_play(reference, plan)
    log(f'[replay] {cfg.bag}: {reference.duration:.2f} s, playing {sorted(play_topics)} at rate {cfg.rate:g}; '
        f'scoring {plan.policy_topic} against {plan.topics.command_topic}')

    initialised = not rclpy.ok()
    if initialised:
        # Ctrl-C is ours (KeyboardInterrupt -> flush the bag, stop the nodes), not rclpy's context shutdown
        from rclpy.signals import SignalHandlerOptions
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    start_ns = int(round(reference.start * 1e9))
    end_ns = int(round(reference.end * 1e9))
    node = rclpy.create_node('dp_ros_replay')
    writer = BagWriter(recorded_bag, storage=cfg.storage).__enter__()
    player = Player(node, play_topics, cfg.rate, cfg.clock_hz)
    recorder = Recorder(node, writer, plan.recorded_topics,
                        lambda: player.now_ns if player.now_ns is not None else start_ns)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    node_log = NodeLog(out_dir / NODE_LOG, echo=cfg.verbose) if plan.launches else None
    if node_log is not None:
        log(f'[replay] starting {", ".join(l.executable for l in plan.launches)} (their logs: {node_log.path})')
    bringup = BringUp(plan.launches, log=node_log) if plan.launches else None
    stats = PlaybackStats()
    playback: threading.Thread | None = None
    interrupted: KeyboardInterrupt | None = None
    error: str | None = None
    try:
        for topic, why in player.skipped.items():
            log(f'[replay] not playing {topic}: unknown message type {why}')
        if bringup is not None:
            bringup.start()
        failed = (lambda: bringup.failed()) if bringup is not None else (lambda: None)
        inputs = [*plan.topics.camera_topics, plan.topics.joint_states_topic]
        _wait(lambda: all(player.publishers[t].get_subscription_count() > 0 for t in inputs),
              cfg.discovery_timeout_s, f'a node subscribed to each of {inputs}'
              + (' (is the policy node running and active?)' if cfg.connect else ''), failed)
        clock_users = max(1, len(plan.launches))
        _wait(lambda: player.clock_pub.get_subscription_count() >= clock_users, cfg.discovery_timeout_s,
              f'{clock_users} node(s) on /clock (use_sim_time:=true)', failed)
        outputs = [plan.policy_topic, '/diagnostics'] + ([plan.guard_topic] if plan.guard_topic else [])
        _wait(lambda: all(recorder.subscriptions[t].get_publisher_count() > 0 for t in outputs),
              cfg.discovery_timeout_s, f'publishers on {outputs}', failed)
        if plan.guard_topic is not None:
            # The guard listens to the policy too (besides this recorder): on a loaded machine discovery
            # took longer than a short bag, and the guard reviewed none of the chunks.
            _wait(lambda: node.count_subscribers(plan.policy_topic) >= 2, cfg.discovery_timeout_s,
                  f'the guard subscribed to {plan.policy_topic}', failed)
        recorder.playing = True
        log('[replay] nodes connected; playing')
        playback = threading.Thread(target=lambda: player.play(cfg.bag, start_ns, end_ns), daemon=True)
        playback.start()
        while playback.is_alive():
            playback.join(0.1)
            problem = failed()
            if problem:
                player.stop_requested.set()
                playback.join()
                raise RuntimeError(f'{problem} during playback')
        stats = player.stats
        # the nodes' last outputs, and one guard diagnostics after them (its counters)
        time.sleep(cfg.drain_s)
        if plan.guard_topic is not None:
            last = recorder.last_received.get(plan.policy_topic, time.monotonic())
            try:
                _wait(lambda: recorder.last_received.get('/diagnostics', 0.0) > last + 0.05, 3.0,
                      'guard diagnostics after the last trajectory')
            except TimeoutError:
                pass
    except KeyboardInterrupt as stop:
        interrupted = stop
        player.stop_requested.set()
        stats = player.stats
        log('[replay] interrupted: flushing what was recorded')
    except (RuntimeError, TimeoutError) as err:
        error = str(err)
        stats = player.stats
    finally:
        previous = _ignore_sigint()
        try:
            if playback is not None and playback.is_alive():
                player.stop_requested.set()
                playback.join(5.0)
            recorder.close()  # flush first: nothing recorded is lost, whatever happens next
            if bringup is not None:
                bringup.stop()
            if node_log is not None:
                node_log.close()
            executor.shutdown()
            node.destroy_node()
            if initialised:
                rclpy.try_shutdown()
        finally:
            _restore_sigint(previous)

    recorded = load_recorded(recorded_bag, plan.policy_topic, plan.topics.action_joints, plan.guard_topic)
    report = compute_report(
        reference, recorded,
        policy_baseline=recorded.policy_diagnostics[0] if cfg.connect and recorded.policy_diagnostics else None,
        guard_baseline=recorder.guard_before_playback if cfg.connect else None)
    report['replay'] = {
        'params': str(cfg.params), 'checkpoint': str(plan.checkpoint), 'rate': cfg.rate, 'guard': cfg.guard,
        'connect': cfg.connect, 'recorded_bag': str(recorded_bag), 'policy_topic': plan.policy_topic,
        'guard_topic': plan.guard_topic, 'command_topic': plan.topics.command_topic,
        'published': dict(stats.published), 'clock_messages': stats.clock_messages, 'wall_s': stats.wall_s,
        'sim_s': stats.sim_s, 'achieved_rate': stats.achieved_rate, 'max_lag_s': stats.max_lag_s,
        'expected_output_rate_hz': float(plan.policy_params['control_rate_hz']),
        'not_played': player.skipped, 'recorder_errors': recorder.failures,
        'interrupted': interrupted is not None, 'error': error,
    }
    add_scores(report, reference, recorded, cfg.thresholds, float(plan.policy_params['control_rate_hz']))
    # A stopped replay must stop fast (the plots take a second or more): its recorded bag and report are
    # kept, and a plot of half a bag says little.
    report['plots'] = [] if interrupted else [str(p) for p in write_plots(reference, recorded, report, out_dir)]
    write_report(report, out_dir / 'report.json')
    if interrupted is not None:
        raise interrupted
    if error is not None:
        raise RuntimeError(error)
    return report


def _ignore_sigint() -> Any:
    """A second Ctrl-C must not cut the bag's flush short (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    return None


def _restore_sigint(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report in a few lines for the terminal."""
    errors, hold, latency = report['action_error'], report['hold'], report['latency']

    lines = [
        f"ticks compared  {errors['compared_ticks']} of {errors['policy_ticks']} policy outputs; first action MAE "
        f"{format_or_na(errors['mae'], '.4f')} rad (commanding the measured position: "
        f"{format_or_na(errors['zero_action']['mae'], '.4f')})",
        f"output rate     {format_or_na(report['output_rate_hz'], '.2f')} Hz (sim time; expected "
        f"{report['replay']['expected_output_rate_hz']:g})",
        f"HOLD            {hold['seconds']:.1f} s {hold['seconds_by_code'] or ''}",
        f"latency obs->publish p50 {format_or_na(_ms(latency['obs_to_publish_s']['p50']), '.0f')} ms, "
        f"p99 {format_or_na(_ms(latency['obs_to_publish_s']['p99']), '.0f')} ms (sim); inference p50 "
        f"{format_or_na(latency['inference_ms']['p50'], '.1f')} ms",
        f"replay          {report['replay']['sim_s']:.2f} s of bag in {report['replay']['wall_s']:.2f} s "
        f"(rate {format_or_na(report['replay']['achieved_rate'], '.2f')})",
    ]
    if 'guard' in report:
        lines.append(f"guard           {report['guard']['blocked_chunks']} blocked chunks of "
                     f"{report['guard']['chunks_reviewed']} reviewed; longest gap between its outputs "
                     f"{format_or_na(report['guard'].get('max_gap_s'), '.2f')} s")
    lines.append(f"kept up         held {report['fell_behind_s']:.1f} s of {report['sim_duration_s']:.1f} s because "
                 f"the stack fell behind (NO_CHUNK/STALE/INFERENCE_ERROR); longest gap between policy outputs "
                 f"{format_or_na(report['max_output_gap_s'], '.2f')} s")
    return lines + verdict_lines(report)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


# ---------------------------------------------------------------------- CLI adapter
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', type=Path, nargs='+', metavar='BAG_OR_DIR',
                        help='rosbag2 directories (MCAP or sqlite3) or storage files, or folders to search for them')
    parser.add_argument('--params', default='config/policy.yaml',
                        help="policy_node params file, or a bring-up file (config/sim.yaml) naming the nodes' files")
    parser.add_argument('--checkpoint', default=None, help="checkpoint or run folder (default: the params file's)")
    parser.add_argument('--rate', type=float, default=1.0, help='playback speed (2 = twice as fast)')
    parser.add_argument('--out', type=Path, default=None,
                        help='output folder (default: replays/<bag name>; with several bags each goes to '
                             'OUT/<bag name>)')
    parser.add_argument('--no-guard', dest='guard', action='store_false',
                        help='no collision guard: score and record the policy alone')
    parser.add_argument('--connect', action='store_true',
                        help='use nodes that already run (on use_sim_time) instead of starting them')
    parser.add_argument('--command-topic', default=DEFAULT_COMMAND_TOPIC,
                        help='the demonstrated commands in the bag (JointTrajectory)')
    parser.add_argument('--guard-params', default='config/collision_guard.yaml',
                        help='collision_guard_node params file (when --params is not a bring-up file)')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='NODE.PARAM:=VALUE',
                        help='override a node parameter, e.g. policy_node.torch_threads:=1')
    parser.add_argument('--threshold', dest='thresholds', action='append', default=[], metavar='NAME=VALUE',
                        help='change what PASS needs, e.g. max_ratio_to_baseline=0.9 (names and defaults: '
                             + ', '.join(f'{k}={v:g}' for k, v in dataclasses.asdict(ReplayThresholds()).items())
                             + ')')
    parser.add_argument('--clock-hz', type=float, default=100.0, help='/clock messages per second of bag time')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='recorded bag storage')
    parser.add_argument('--discovery-timeout', type=float, default=30.0,
                        help='seconds to wait for the nodes to connect before playing')
    parser.add_argument('--verbose', action='store_true',
                        help="print the nodes' logs here too (they always go to OUT/nodes.log)")


def _outputs(bags: list[Path], out: Path | None) -> list[Path | None]:
    """Each bag's output folder: --out for one bag, OUT/<bag name> (made unique) for several."""
    if len(bags) == 1:
        return [out]
    root = out if out is not None else Path('replays')
    names = Counter(bag.name for bag in bags)
    return [root / (bag.name if names[bag.name] == 1 else f'{bag.parent.name}_{bag.name}') for bag in bags]


def run(args: argparse.Namespace) -> int:
    from diffusion_policy_ros.core.checkpoint import CheckpointError
    try:
        bags = find_bags(args.bags)
        thresholds = ReplayThresholds.with_overrides(args.thresholds)
        configs = [ReplayConfig(bag=bag, params=args.params, out=out, checkpoint=args.checkpoint, rate=args.rate,
                                guard=args.guard, connect=args.connect, command_topic=args.command_topic,
                                guard_params=args.guard_params, overrides=list(args.overrides),
                                clock_hz=args.clock_hz, storage=args.storage,
                                discovery_timeout_s=args.discovery_timeout, verbose=args.verbose,
                                thresholds=thresholds)
                   for bag, out in zip(bags, _outputs(bags, args.out))]
    except (BagError, ValueError) as err:
        print(f'dp-ros replay: refused: {err}', file=sys.stderr, flush=True)
        return EXIT_REFUSED
    rows, reports, code = [], [], 0
    for index, cfg in enumerate(configs):
        if len(configs) > 1:
            print(f'[replay] bag {index + 1}/{len(configs)}: {cfg.bag}', flush=True)
        try:
            report = replay(cfg)
        except (ReplayInputError, BagError, CheckpointError, FileNotFoundError, ValueError) as err:
            print(f'dp-ros replay: refused: {err}', file=sys.stderr, flush=True)
            if len(configs) == 1:
                return EXIT_REFUSED
            rows.append(summary_row(str(cfg.bag), None, str(err)))
            code = max(code, EXIT_FAILED)
            continue
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (the CLI turns it into this): a requested stop
            print(f'[replay] stopped by {str(stop) or "SIGINT"}: no verdict; the recorded bag and a partial report '
                  f'are in {cfg.out_dir}', flush=True)
            return 0
        except (RuntimeError, TimeoutError) as err:
            print(f'dp-ros replay: failed: {err}', file=sys.stderr, flush=True)
            rows.append(summary_row(str(cfg.bag), None, str(err)))
            code = EXIT_FAILED
            continue
        for line in summary_lines(report):
            print(f'[replay] {line}', flush=True)
        written = [cfg.out_dir / 'report.json', *report['plots'], report['replay']['recorded_bag']]
        print(f'[replay] wrote {", ".join(map(str, written))}', flush=True)
        rows.append(summary_row(str(cfg.bag), report))
        reports.append(report)
    if len(configs) == 1:
        return code or (0 if reports[0]['verdict']['result'] == 'PASS' else EXIT_FAILED)
    root = configs[0].out_dir.parent
    suite = suite_verdict(reports, thresholds)
    if code:  # a bag could not be replayed
        suite['result'] = 'FAIL'
        suite['failed'].append(f"{sum(r['verdict'] == 'ERROR' for r in rows)} bag(s) could not be replayed")
    write_report({'verdict': suite, 'bags': rows, 'thresholds': dataclasses.asdict(thresholds)},
                 root / 'summary.json')
    print('\n' + summary_table(rows), flush=True)
    pooled = suite['pooled_horizon_mae']
    best = min((v for k, v in pooled.items() if k != 'policy' and v is not None), default=None)
    print(f"[replay] {suite['result']}: pooled horizon MAE {format_or_na(pooled['policy'])} rad against the best "
          f"baseline's {format_or_na(best)} over {len(rows)} bags ({suite['bags_passing_alone']} pass alone)"
          + ('; ' + '; '.join(suite['failed']) if suite['failed'] else '') + f"; wrote {root / 'summary.json'}",
          flush=True)
    return 0 if suite['result'] == 'PASS' else EXIT_FAILED

