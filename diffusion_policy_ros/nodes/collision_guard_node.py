"""`collision_guard_node`: nothing the policy proposes reaches the arm controller unchecked.

A thin rclpy adapter (a LifecycleNode) over the ROS-free guard in `diffusion_policy_ros.collision`:
proposed JointTrajectory in, checked JointTrajectory out. Free chunks are forwarded as they came (same
message: points, times and stamp); colliding ones are replaced by the fallback plan (OMPL, or MoveIt
where move_group runs); no plan in the budget, a malformed chunk or a stale joint state -> one point at
the measured position (the arm holds). The scene comes from the params file and follows a
`visualization_msgs/MarkerArray` topic at run time (the sim publishes its obstacles there, latched).

Threads: one single-threaded executor runs every callback (rclpy's multi-threaded one busy-polls a
core while idle); each proposed chunk is checked there on arrival (under a millisecond), and only a
blocked chunk's fallback plan runs on the planning thread (`worker_thread.LatestJobThread`), so planning
never delays the measured state, a scene update or the next free chunk. The scene is swapped
atomically (`Scene.set_objects`) and the checker, serialised by its own lock, rebuilds on its next call.

Time: stamps and the fallback's clock come from the node clock, so the node runs on `use_sim_time`
with the sim's /clock like any other; a joint state is fresh when it arrived (the middleware's
receive time, wall clock: a stalled driver is stale whatever the sim clock says) and is stamped
(node clock) within `max_joint_state_age_s`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from diffusion_policy_ros.collision.config import NODE_NAME, CollisionGuardConfig
from diffusion_policy_ros.collision.guard import (CollisionGuard, GuardCounters, GuardDecision, PlanRequest,
                                                  TrajectoryChunk)
from diffusion_policy_ros.collision.moveit_backend import CollisionBackend, select_backend
from diffusion_policy_ros.collision.robot_model import RobotModel
from diffusion_policy_ros.collision.scene import Scene
from diffusion_policy_ros.collision.scene_overlay import MarkerScene
from diffusion_policy_ros.control.health import HoldReason
from diffusion_policy_ros.control.limits import JointLimits
from diffusion_policy_ros.control.measurement import MeasurementRules, check_joint_state
from diffusion_policy_ros.diagnostics import GuardStatus
from diffusion_policy_ros.nodes.lifecycle import (DEFAULT_REALTIME_PRIORITY, REALTIME_PRIORITY_HELP,
                                               ReleasingLifecycleNode, check_realtime_priority, spin_lifecycle_node)
from diffusion_policy_ros.nodes.dds import apply_dds_profile
from diffusion_policy_ros.nodes.messages import (MessageError, chunk_to_message, diagnostic_status,
                                                 stamp_to_seconds, trajectory_to_sample)
from diffusion_policy_ros.nodes.polled import JOINT_STATE_QOS, PolledSubscription
from diffusion_policy_ros.nodes.services import ServiceClient
from diffusion_policy_ros.robot_description import panda_description
from diffusion_policy_ros.worker_thread import LatestJobThread


# How long after its planning budget a plan request is given before the guard holds instead.
PLAN_DEADLINE_SLACK_S = 0.02
REPEAT_WARN_S = 60.0  # the same kind of blocked chunk is a WARN at most once in this time


@dataclass
class GuardNodeParams:
    """The node's own parameters (topics, robot model, rates); what to check and how to plan is
    `CollisionGuardConfig`'s (backend, max_joint_step, padding, limits, budget, scene.*)."""

    robot_description: str = field(default='', metadata={
        'help': 'URDF (XML string) of the robot; empty = the bundled Panda (example-robot-data) with its SRDF'})
    robot_description_semantic: str = field(default='', metadata={
        'help': 'SRDF (XML string) for disabled collision pairs; empty = adjacent links are not checked'})
    input_topic: str = field(default='/policy/joint_trajectory', metadata={
        'help': "the policy's proposed trajectories (trajectory_msgs/JointTrajectory)"})
    joint_states_topic: str = '/joint_states'
    output_topic: str = field(default='/arm_controller/joint_trajectory', metadata={
        'help': 'checked trajectories for the arm controller'})
    scene_topic: str = field(default='/collision_scene', metadata={
        'help': 'visualization_msgs/MarkerArray of obstacles (CUBE, SPHERE, CYLINDER), in scene_frame'})
    scene_frame: str = field(default='', metadata={
        'help': "frame of the scene markers; empty = the URDF's root link (markers in other frames are ignored)"})
    max_joint_state_age_s: float = field(default=0.5, metadata={
        'help': 'chunks are rejected (the arm holds) when a joint state is older than this; 0 = no limit'})
    joint_limit_tolerance: float = field(default=MeasurementRules.limit_tolerance, metadata={
        'help': 'rad a measured joint may lie outside its URDF limits; a joint state further out is rejected'})
    future_stamp_tolerance_s: float = field(default=MeasurementRules.future_tolerance_s, metadata={
        'help': 's a joint state stamp may lie ahead of the node clock; one further ahead is rejected'})
    diagnostics_rate_hz: float = 1.0
    autostart: bool = field(default=True, metadata={'help': 'configure and activate on start-up'})
    realtime_priority: int = field(default=DEFAULT_REALTIME_PRIORITY, metadata={'help': REALTIME_PRIORITY_HELP})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ('str', str) and not isinstance(value, str):
                raise ValueError(f'parameter {f.name} must be a string, got {value!r}')
            if f.type in ('float', float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f'parameter {f.name} must be a number, got {value!r}')
                setattr(self, f.name, float(value))
            if f.type in ('bool', bool) and not isinstance(value, bool):
                raise ValueError(f'parameter {f.name} must be true or false, got {value!r}')
        if not self.diagnostics_rate_hz > 0:
            raise ValueError(f'parameter diagnostics_rate_hz must be > 0, got {self.diagnostics_rate_hz}')
        if not self.max_joint_state_age_s >= 0:
            raise ValueError(f'parameter max_joint_state_age_s must be >= 0, got {self.max_joint_state_age_s}')
        check_realtime_priority(self.realtime_priority)
        self.rules  # noqa: B018 - validates the tolerances

    @property
    def rules(self) -> MeasurementRules:
        """Which joint states the guard trusts (control.measurement)."""
        return MeasurementRules(self.joint_limit_tolerance, self.future_stamp_tolerance_s)


def _all_parameter_names() -> type:
    """Every top-level key a params file may give this node: the node's own parameters, the guard's
    (CollisionGuardConfig, minus its parsed `scene_objects`) and `scene` (scene.object_names, scene.<name>.*)."""
    def copy(f: dataclasses.Field) -> tuple[str, Any, dataclasses.Field]:
        return f.name, f.type, field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)

    own = [copy(f) for f in dataclasses.fields(GuardNodeParams)]
    guard = [copy(f) for f in dataclasses.fields(CollisionGuardConfig) if f.name != 'scene_objects']
    scene = [('scene', dict, field(default_factory=dict, metadata={
        'help': 'scene.object_names: [names]; scene.<name>.shape / .size / .pose / .padding'}))]
    return dataclasses.make_dataclass('CollisionGuardNodeParameters', own + guard + scene)


PARAMS = _all_parameter_names()  # what bring-up and the params-file test read


# ---------------------------------------------------------------------- the node
class CollisionGuardNode(ReleasingLifecycleNode):
    """ROS plumbing around `CollisionGuard`: subscriptions feed the measured state and the scene,
    each proposed chunk is checked on arrival, blocked ones are planned on the planning thread, and
    every decision is published to the controller."""

    def __init__(self, **kwargs: Any) -> None:
        # Parameters from a params file are declared as given (scene.<name>.* cannot be known in
        # advance); CollisionGuardConfig then refuses any name it does not know, so a typo in a
        # params file fails configure with its name instead of being silently ignored.
        super().__init__(NODE_NAME, automatically_declare_parameters_from_overrides=True, **kwargs)
        self._declare_defaults()
        self.node_params = self._read_node_params()
        self.config: CollisionGuardConfig | None = None
        self.backend: CollisionBackend | None = None
        self.guard: CollisionGuard | None = None
        self.scene: MarkerScene | None = None
        self.model: RobotModel | None = None
        self.planning: LatestJobThread | None = None
        self._latest_plan = 0  # sequence of the newest plan request
        self._active = False
        self._lock = threading.Lock()  # measured state, scene bookkeeping and diagnostics fields
        self._warned_at: dict[str, float] = {}  # kind of blocked chunk -> when it was last a WARN
        # joint -> (position, arrival in ns since the epoch, header stamp in node-clock seconds or 0)
        self._joints: dict[str, tuple[float, int, float]] = {}
        self._subs: list = []
        self._joint_sub: PolledSubscription | None = None
        self._pub = None
        self._timer = None
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._reset_stats()

    # ------------------------------------------------------------------ parameters
    def _declare_defaults(self) -> None:
        defaults: dict[str, tuple[Any, str]] = {}
        for f in dataclasses.fields(GuardNodeParams):
            defaults[f.name] = (f.default, f.metadata.get('help', ''))
        for name, value in CollisionGuardConfig().ros_parameters().items():
            defaults[name] = (value, f'see diffusion_policy_ros.collision.config.CollisionGuardConfig.{name}')
        for name, (value, help_text) in defaults.items():
            if not self.has_parameter(name):
                # Dynamic typing: `-p max_joint_step:=1` (an integer) is validated by the dataclasses
                # instead of failing the whole node on a type mismatch.
                self.declare_parameter(name, value, ParameterDescriptor(description=help_text, dynamic_typing=True))

    def _parameter_values(self) -> dict[str, Any]:
        names = self.list_parameters([], 0).names
        return {name: self.get_parameter(name).value for name in names}

    def _read_node_params(self) -> GuardNodeParams:
        values = self._parameter_values()
        return GuardNodeParams(**{f.name: values[f.name] for f in dataclasses.fields(GuardNodeParams)})

    def _read_config(self) -> CollisionGuardConfig:
        own = {f.name for f in dataclasses.fields(GuardNodeParams)}
        values = {k: v for k, v in self._parameter_values().items() if k not in own and v is not None}
        return CollisionGuardConfig.from_ros_parameters(values)

    # ------------------------------------------------------------------ lifecycle
    def _configure(self) -> None:
        p = self.node_params = self._read_node_params()
        self.config = config = self._read_config()
        if p.robot_description:
            urdf, srdf, source = p.robot_description, p.robot_description_semantic or None, 'robot_description'
        else:
            description = panda_description()
            urdf = description.urdf_text()
            srdf = p.robot_description_semantic or description.srdf_text()
            source = f'the bundled Panda ({description.urdf_path})'
        self.model = RobotModel.from_urdf(urdf, srdf)
        self._limits = JointLimits(self.model.joint_names, self.model.limits.lower, self.model.limits.upper,
                                   self.model.limits.velocity)
        root = self.model.root_link
        scene = Scene()
        self.scene = MarkerScene(scene, config.scene_objects, [p.scene_frame or root],
                                 lookahead_s=config.moving_object_lookahead_s)
        self.backend, message = select_backend(
            config.backend, self.model, config, scene=scene,
            client_factory=lambda srv_type, name: ServiceClient(self, srv_type, name))
        self.get_logger().info(message)
        self.guard = CollisionGuard(self.backend.checker, self.backend.planner,
                                    max_joint_step=config.max_joint_step, hold_time_s=config.control_period_s,
                                    clock=self._now)
        self.planning = LatestJobThread('guard-planner', on_error=self._on_planning_error)
        self.planning.start()
        self._reset_stats()
        # Taken when a chunk is checked (and for diagnostics), not one executor wake-up per message.
        self._joint_sub = PolledSubscription(self, JointState, p.joint_states_topic, JOINT_STATE_QOS)
        self._subs = [
            # Late joiners get the latched scene (the sim publishes it transient-local).
            self.create_subscription(MarkerArray, p.scene_topic, self._on_markers,
                                     QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                                durability=DurabilityPolicy.TRANSIENT_LOCAL)),
            # Depth 1: each chunk supersedes the previous one; stale ones are never reviewed late.
            self.create_subscription(JointTrajectory, p.input_topic, self._on_proposed, 1),
        ]
        self._pub = self.create_publisher(JointTrajectory, p.output_topic, 10)
        self.get_logger().info(
            f'configured: robot from {source} ({len(self.model.joint_names)} joints, '
            f'{self.model.collision_pair_count} self-collision pairs, root frame {root!r}); scene '
            f'{[o.name for o in scene.objects()]} + markers on {p.scene_topic}; {p.input_topic} -> '
            f'{p.output_topic}; joint states on {p.joint_states_topic}; max_joint_step {config.max_joint_step} '
            f'rad, padding {config.padding} m, planning budget {config.planning_time_budget_s} s')

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Wall-clock timer: diagnostics keep coming when sim time stalls, which is when they matter.
        self._timer = self.create_timer(1.0 / self.node_params.diagnostics_rate_hz, self._publish_diagnostics,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._active = True
        self.get_logger().info(f'active: checking every chunk on {self.node_params.input_topic}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._destroy_timer()
        self.get_logger().info('deactivated: proposed chunks are no longer forwarded')
        return super().on_deactivate(state)

    def _destroy_timer(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None

    def _release(self) -> None:
        self._active = False
        self._destroy_timer()
        if self.planning is not None:
            self.planning.stop()
            self.planning = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._joint_sub is not None:
            self._joint_sub.destroy()
            self._joint_sub = None
        if self._pub is not None:
            self.destroy_publisher(self._pub)
            self._pub = None
        self.guard = self.backend = self.scene = None

    # ------------------------------------------------------------------ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _take_joint_states(self) -> None:
        """Every joint state that arrived since the last call, newest per joint. Freshness is judged
        from when each arrived (the middleware's receive time), never from when it was taken."""
        sub = self._joint_sub
        if sub is None:
            return
        now = self._now()
        for msg, info in sub.take():
            arrived_ns = info.get('received_timestamp') or time.time_ns()
            stamp = stamp_to_seconds(msg.header.stamp)
            checked = check_joint_state(msg.name, msg.position, stamp or now, now, self._limits, sub.topic,
                                        self.node_params.rules, require_all=False)
            if isinstance(checked, HoldReason):
                with self._lock:
                    self._joint_states_rejected += 1
                    self._last_joint_state_problem = str(checked)
                self.get_logger().warning(f'{checked}; message ignored', throttle_duration_sec=2.0)
                continue
            with self._lock:
                for name, position in zip(*checked):
                    self._joints[name] = (float(position), arrived_ns, stamp)

    def _on_markers(self, msg: MarkerArray, info: MessageInfo) -> None:
        arrived_ns = info.get('received_timestamp') or time.time_ns()
        scene = self.scene
        if scene is None:
            return
        try:
            update = scene.apply(msg.markers)
        except Exception as err:  # noqa: BLE001 - never crash on input
            self.get_logger().error(f'{self.node_params.scene_topic}: scene update failed: {err!r}',
                                    throttle_duration_sec=2.0)
            return
        with self._lock:
            self._scene_updates += update.changed
            self._markers_ignored += len(update.ignored)
            if update.ignored:
                self._last_marker_problem = update.ignored[-1]
        if update.ignored:
            self.get_logger().warning(f'{self.node_params.scene_topic}: ignored {len(update.ignored)} marker(s): '
                                      f'{"; ".join(update.ignored[:3])}', throttle_duration_sec=2.0)
        if update.changed:
            self.get_logger().info(f'scene updated from {self.node_params.scene_topic}: '
                                   f'{[o.name for o in scene.scene.objects()]}', throttle_duration_sec=1.0)
            if self.backend.name == 'moveit':  # its checks wait on responses this thread delivers
                self.planning.submit(lambda: self._recheck_executing(arrived_ns))
            else:
                self._recheck_executing(arrived_ns)

    def _recheck_executing(self, arrived_ns: int) -> None:
        """What the arm still executes, against the scene just updated: cut at once when it now
        collides, then plan the fallback on the planning thread within the budget (or hold)."""
        guard = self.guard
        if guard is None or not self._active:
            return
        measured, problem = self._measured()
        if problem is not None:
            return  # the next proposal is rejected for it; nothing trusted to cut from
        try:
            decision = guard.recheck(measured)
        except Exception as err:  # noqa: BLE001 - a failing re-check holds the arm
            decision = guard.reject(measured, guard.checker.joint_names, f'internal error while re-checking: {err!r}')
        if decision is None:
            return
        self._act(decision, None, arrived_ns, reaction='scene')
        request = decision.plan_request
        if request is not None:
            names = list(request.names)
            self.planning.submit(lambda: self._review_job(lambda: guard.plan(request), measured, names, None,
                                                          arrived_ns))
            self._hold_if_late(request, None, arrived_ns)

    def _measured(self) -> tuple[dict[str, float], str | None]:
        """The latest position of every joint heard of, and why it cannot be trusted (or None): a
        joint never heard of, or one whose latest state arrived, or is stamped, too long ago."""
        self._take_joint_states()
        now_ns, now_s = time.time_ns(), self._now()
        with self._lock:
            joints = dict(self._joints)
        positions = {name: value[0] for name, value in joints.items()}
        topic = self.node_params.joint_states_topic
        missing = [n for n in self.model.joint_names if n not in joints]
        if missing:
            return positions, f'no joint state for {missing} on {topic} yet'
        limit = self.node_params.max_joint_state_age_s
        if limit > 0:
            for name in self.model.joint_names:
                _, arrived_ns, stamp = joints[name]
                age = (now_ns - arrived_ns) * 1e-9
                if age > limit:
                    return positions, (f'joint state of {name} on {topic} is {age:.2f} s old by its arrival '
                                       f'(max_joint_state_age_s {limit:g})')
                if stamp > 0 and now_s - stamp > limit:
                    return positions, (f'joint state of {name} on {topic} is {now_s - stamp:.2f} s old by its '
                                       f'stamp (max_joint_state_age_s {limit:g})')
        return positions, None

    # ------------------------------------------------------------------ the review
    def _on_proposed(self, msg: JointTrajectory, info: MessageInfo) -> None:
        arrived_ns = info.get('received_timestamp') or time.time_ns()
        guard = self.guard
        if not self._active or guard is None:
            self.get_logger().info('inactive: proposed chunk not forwarded', throttle_duration_sec=5.0)
            return
        topic = self.node_params.input_topic
        measured, problem = self._measured()
        names = list(msg.joint_names)
        try:
            sample = trajectory_to_sample(msg)
        except MessageError as err:
            self._act(guard.reject(measured, names, f'{topic}: {err}'), msg, arrived_ns)
            return
        if problem is not None:
            self._act(guard.reject(measured, sample.names, problem), msg, arrived_ns)
            return
        chunk = TrajectoryChunk(sample.names, sample.points, sample.times_from_start)
        now_s = self._now()
        if self.backend.name == 'moveit':
            # MoveIt's checks wait on service responses that this executor thread delivers: the
            # whole review runs on the planning thread.
            self.planning.submit(lambda: self._review_job(lambda: guard.review(measured, chunk, now_s),
                                                          measured, names, msg, arrived_ns))
            return
        try:
            decision = guard.check(measured, chunk, now_s=now_s)
        except Exception as err:  # noqa: BLE001 - a bug or a backend failure must not pass anything
            decision = guard.reject(measured, names, f'{topic}: internal error while checking: {err!r}')
        if decision.plan_request is not None:
            request = decision.plan_request
            self.planning.submit(lambda: self._review_job(lambda: guard.plan(request), measured, names, msg,
                                                          arrived_ns))
            self._hold_if_late(request, msg, arrived_ns)
            return
        self._act(decision, msg, arrived_ns)

    def _hold_if_late(self, request: PlanRequest, proposed: JointTrajectory, arrived_ns: int) -> None:
        """The planning budget bounds the fallback even when the planning thread is starved or stuck:
        if no decision for `request` (or a newer chunk) was sent by then, the arm holds."""
        self._latest_plan = request.sequence
        budget = self.config.planning_time_budget_s

        def expire() -> None:
            guard = self.guard
            if guard is None or not self._active or self._latest_plan != request.sequence:
                return  # gone, or a newer plan request has its own deadline
            decision = guard.expire(request)
            if decision is not None:
                self._act(decision, proposed, arrived_ns)

        timer = threading.Timer(budget + PLAN_DEADLINE_SLACK_S, expire)
        timer.daemon = True
        timer.start()

    def _review_job(self, review: Callable[[], GuardDecision | None], measured: dict[str, float],
                    names: list[str], proposed: JointTrajectory, arrived_ns: int) -> None:
        """On the planning thread: run the review or plan and publish its decision (None: superseded)."""
        guard = self.guard
        if guard is None:
            return
        try:
            decision = review()
            if decision is not None:
                decision = guard.confirm(self._measured()[0], decision)
        except Exception as err:  # noqa: BLE001 - a failing plan holds the arm
            decision = guard.reject(measured, names, f'internal error while planning: {err!r}')
        if decision is not None and self._active:
            self._act(decision, proposed, arrived_ns)

    def _on_planning_error(self, err: BaseException) -> None:
        self.get_logger().error(f'planning thread: {err!r}', throttle_duration_sec=2.0)

    def _act(self, decision: GuardDecision, proposed: JointTrajectory | None, arrived_ns: int,
             reaction: str | None = None) -> None:
        """Publish `decision` (for a 'pass', the proposed message itself) and remember it as what the
        arm executes. `arrived_ns`: when what caused it arrived; `reaction` files its latency under
        another name than free/blocked (a scene update)."""
        pub, guard = self._pub, self.guard
        if pub is None or guard is None:
            return
        log = self.get_logger()
        now = self.get_clock().now()
        trajectory = guard.within_limits(decision.trajectory) if decision.trajectory is not None else None
        if decision.action == 'pass':
            # unchanged (same points, times and stamp) unless a point lay outside a limit by the tolerance
            pub.publish(proposed if trajectory is decision.trajectory else
                        chunk_to_message(trajectory, proposed.header.stamp))
            stamp = stamp_to_seconds(proposed.header.stamp)
            guard.record_sent(trajectory, stamp if stamp > 0 else now.nanoseconds * 1e-9)
        elif trajectory is not None:
            pub.publish(chunk_to_message(trajectory, now.to_msg()))
            guard.record_sent(trajectory, now.nanoseconds * 1e-9)
        latency = (time.time_ns() - arrived_ns) * 1e-9
        with self._lock:
            self._last_action, self._last_reason = decision.action, decision.reason
            self._review_times.append(time.monotonic())
            kind = reaction or ('free' if decision.action == 'pass' else 'blocked')
            self._output_latency[kind].append(latency)
            if decision.action == 'reject':
                self._rejected_messages += 1
        if decision.action == 'pass':
            return
        if decision.trajectory is None:
            log.error(f'{decision.action}: {decision.reason}; no measured position to hold at, nothing published',
                      throttle_duration_sec=2.0)
        elif decision.action == 'reject':
            log.warning(f'{decision.reason}; holding position', throttle_duration_sec=2.0)
        elif decision.action == 'hold':
            log.warning(decision.reason, throttle_duration_sec=1.0)
        elif 'continues' in decision.reason:
            log.info(decision.reason, throttle_duration_sec=1.0)
        else:
            stats = decision.stats
            # The same contact again and again (fingers at the table during a grasp) is one WARN a
            # minute; the repeats are INFO, so the log shows a new kind of collision when it comes.
            kind = decision.reason.split(' at ', 1)[0]
            repeated = time.monotonic() - self._warned_at.get(kind, -math.inf) < REPEAT_WARN_S
            if not repeated:
                self._warned_at[kind] = time.monotonic()
            text = (f'{decision.reason} (planned in {1000 * (stats.planning_time_s or 0):.1f} ms, '
                    f'{len(decision.trajectory.positions)} points)')
            if repeated:  # (rclpy fixes a call site's severity: one call per level)
                log.info(text, throttle_duration_sec=1.0)
            else:
                log.warning(f'{text}; the same contact is logged at INFO for {REPEAT_WARN_S:.0f} s')

    # ------------------------------------------------------------------ diagnostics
    def _reset_stats(self) -> None:
        self._rejected_messages = 0
        self._joint_states_rejected = 0
        self._last_joint_state_problem = ''
        self._markers_ignored = 0
        self._scene_updates = 0
        self._last_marker_problem = ''
        self._last_action = 'none'
        self._last_reason = 'no chunk reviewed yet'
        self._review_times: deque[float] = deque(maxlen=2000)
        # seconds from a proposal's arrival to the publication of what the guard made of it
        # ('scene': from a scene update's arrival to the cut of the executing trajectory it caused)
        self._output_latency: dict[str, deque[float]] = {'free': deque(maxlen=1000), 'blocked': deque(maxlen=200),
                                                         'scene': deque(maxlen=200)}

    def diagnostics(self) -> GuardStatus:
        """What /diagnostics carries (also handy for tests and tools)."""
        counters: GuardCounters = self.guard.counters
        latency = list(counters.check_latency_s)  # copies under the GIL: the planning thread appends
        planning = list(counters.planning_time_s)
        now = time.monotonic()
        window = 5.0

        def ms(values: list[float] | deque, q: float) -> float:
            value = GuardCounters.percentile(values, q)
            return float('nan') if value is None else 1000 * value

        with self._lock:
            recent = sum(1 for t in self._review_times if now - t <= window)
            output = {kind: list(samples) for kind, samples in self._output_latency.items()}
            status = GuardStatus(
                rejected_messages=self._rejected_messages, joint_states_rejected=self._joint_states_rejected,
                last_joint_state_problem=self._last_joint_state_problem, markers_ignored=self._markers_ignored,
                last_marker_problem=self._last_marker_problem, scene_updates=self._scene_updates,
                last_action=self._last_action, last_reason=self._last_reason)
        _, problem = self._measured()
        return dataclasses.replace(
            status, backend=self.backend.name, checks_per_second=recent / window,
            check_latency_p50_ms=ms(latency, 50), check_latency_p99_ms=ms(latency, 99),
            chunks_reviewed=counters.chunks_reviewed, chunks_passed=counters.chunks_passed,
            blocked_chunks=counters.chunks_blocked, fallbacks_planned=counters.fallbacks_planned,
            planning_failures=counters.planning_failures, plans_superseded=counters.plans_superseded,
            holds=counters.holds, executing_blocked=counters.executing_blocked,
            planning_time_p50_ms=ms(planning, 50), planning_time_p99_ms=ms(planning, 99),
            last_planning_time_ms=1000 * planning[-1] if planning else float('nan'),
            fallback_active=bool(self.guard.fallback_active),
            scene_objects=','.join(o.name for o in self.scene.scene.objects()),
            moving_objects=','.join(f'{name} {np.linalg.norm(v):.2f} m/s'
                                    for name, v in self.scene.velocities().items() if np.any(v)),
            joint_state=problem or 'fresh',
            output_latency_free_p50_ms=ms(output['free'], 50), output_latency_free_p99_ms=ms(output['free'], 99),
            output_latency_blocked_p50_ms=ms(output['blocked'], 50),
            output_latency_blocked_p99_ms=ms(output['blocked'], 99),
            output_latency_scene_p50_ms=ms(output['scene'], 50), output_latency_scene_p99_ms=ms(output['scene'], 99))

    def _publish_diagnostics(self) -> None:
        if self.guard is None:
            return
        status = self.diagnostics()
        msg = DiagnosticArray(status=[diagnostic_status(
            f'{self.get_name()}: collision guard', status.backend, status,
            DiagnosticStatus.OK if status.healthy else DiagnosticStatus.WARN,
            f'{status.last_action.upper()}: {status.last_reason}')])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    # The planning thread calls into Python for every state it checks; with the default 5 ms switch
    # interval the check of a free chunk on the executor thread could wait that long for the GIL.
    sys.setswitchinterval(0.001)
    apply_dds_profile()
    rclpy.init(args=args)
    try:
        node = CollisionGuardNode()
    except ValueError as err:  # a parameter of the node itself is wrong: say which, do not trace back
        print(f'{NODE_NAME}: {err}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    return spin_lifecycle_node(node, node.node_params.autostart, node.node_params.realtime_priority)


if __name__ == '__main__':
    sys.exit(main())
