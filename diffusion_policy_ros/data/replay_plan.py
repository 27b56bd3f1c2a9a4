"""What `dp-ros replay` will do, worked out before any node starts (no rclpy): the nodes to start and
their parameters, the checkpoint, the topics to play, record and score against; and the report in a few
lines for the terminal. `nodes/replay.py` runs it (`nodes/playback.py` plays and records the bags).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffusion_policy_ros.data.replay_metrics import DIAGNOSTICS_TYPE, BagReference, ReplayInputError, ReplayTopics
from diffusion_policy_ros.data.replay_scores import ReplayThresholds, format_or_na, verdict_lines

GUARDED_POLICY_TOPIC = '/policy/joint_trajectory'  # what the guard reads (config/sim.yaml, config/robot.yaml)
DEFAULT_COMMAND_TOPIC = '/arm_controller/joint_trajectory'
RECORDED_BAG = 'recorded'
# Topics a bag may hold that must not be played back: the graph has its own publishers for them.
NEVER_PLAYED = ('/clock', '/diagnostics', '/rosout', '/parameter_events')
REPLAY_NOISE_SEED = 1  # policy_node.seed of the nodes a replay starts, unless --set says otherwise


@dataclass
class ReplayConfig:
    """Everything `dp-ros replay` takes (`nodes.replay.run` maps the command line onto it)."""

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
    from diffusion_policy_ros.control.deployment import PolicyNodeParams
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
        from diffusion_policy_ros.collision.config import GuardNodeParams
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


def output_dirs(bags: list[Path], out: Path | None) -> list[Path | None]:
    """Each bag's output folder: --out for one bag, OUT/<bag name> (made unique) for several."""
    if len(bags) == 1:
        return [out]
    root = out if out is not None else Path('replays')
    names = Counter(bag.name for bag in bags)
    return [root / (bag.name if names[bag.name] == 1 else f'{bag.parent.name}_{bag.name}') for bag in bags]
