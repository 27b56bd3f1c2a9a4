"""`collision_guard_node`: nothing the policy proposes reaches the arm controller unchecked.

A thin rclpy adapter (a LifecycleNode) over the ROS-free guard in `diffusion_policy_ros.collision`:
proposed JointTrajectory in, checked JointTrajectory out. Free chunks are forwarded as they came (same
message: points, times and stamp); colliding ones are replaced by the fallback plan (OMPL, or MoveIt
where move_group runs); no plan in the budget, a malformed chunk or a stale joint state -> one point at
the measured position (the arm holds). The scene comes from the params file and follows a
`visualization_msgs/MarkerArray` topic at run time (the sim publishes its obstacles there, latched).

Threads: one single-threaded executor runs every callback (rclpy's multi-threaded one busy-polls a
core while idle); each proposed chunk is checked there on arrival (under a millisecond), and only a
blocked chunk's fallback plan runs on the planning thread, under a deadline (`collision.session`), so
planning never delays the measured state, a scene update or the next free chunk. The scene is swapped
atomically (`Scene.set_objects`) and the checker, serialised by its own lock, rebuilds on its next call.

Time: stamps and the fallback's clock come from the node clock, so the node runs on `use_sim_time`
with the sim's /clock like any other; a joint state is fresh when it arrived (the middleware's
receive time, wall clock: a stalled driver is stale whatever the sim clock says) and is stamped
(node clock) within `max_joint_state_age_s`.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from diffusion_policy_ros.collision.activity import GuardActivity, LogLine
from diffusion_policy_ros.collision.config import (NODE_NAME, CollisionGuardConfig, GuardNodeParams,
                                                   guard_node_parameters, guard_parameter_defaults,
                                                   read_guard_parameters)
from diffusion_policy_ros.collision.guard import CollisionGuard, GuardDecision, TrajectoryChunk
from diffusion_policy_ros.collision.evasion import Evader
from diffusion_policy_ros.collision.moveit_backend import CollisionBackend, select_backend
from diffusion_policy_ros.collision.robot_model import RobotModel
from diffusion_policy_ros.collision.scene import Scene
from diffusion_policy_ros.collision.scene_overlay import MarkerScene
from diffusion_policy_ros.collision.session import GuardSession
from diffusion_policy_ros.control.limits import JointLimits
from diffusion_policy_ros.control.measurement import LatestJointPositions
from diffusion_policy_ros.diagnostics import GuardStatus
from diffusion_policy_ros.nodes.lifecycle import ReleasingLifecycleNode, init_node_process, spin_lifecycle_node
from diffusion_policy_ros.nodes.messages import (MessageError, chunk_to_message, diagnostic_status,
                                                 stamp_to_seconds, trajectory_to_sample)
from diffusion_policy_ros.nodes.params import declare_dynamic_parameters
from diffusion_policy_ros.nodes.polled import JOINT_STATE_QOS, PolledSubscription
from diffusion_policy_ros.nodes.services import ServiceClient

PARAMS = guard_node_parameters()  # what bring-up and the params-file test read


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
        self.node_params = GuardNodeParams.from_ros_parameters(self._parameter_values())
        self.config: CollisionGuardConfig | None = None
        self.backend: CollisionBackend | None = None
        self.guard: CollisionGuard | None = None
        self.scene: MarkerScene | None = None
        self.model: RobotModel | None = None
        self.session: GuardSession | None = None  # runs the guard's decisions (planning thread, deadlines)
        self.joints: LatestJointPositions | None = None  # the measured state, from the joint-state topic
        self.activity = GuardActivity()
        self._subs: list = []
        self._joint_sub: PolledSubscription | None = None
        self._pub = None
        self._timer = None
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

    def _parameter_values(self) -> dict[str, Any]:
        return declare_dynamic_parameters(self, guard_parameter_defaults())

    # ------------------------------------------------------------------ lifecycle
    def _configure(self) -> None:
        self.node_params, self.config = read_guard_parameters(self._parameter_values())
        p, config = self.node_params, self.config
        self.model, source = RobotModel.from_parameters(p.robot_description, p.robot_description_semantic)
        limits = JointLimits(self.model.joint_names, self.model.limits.lower, self.model.limits.upper,
                             self.model.limits.velocity)
        self.joints = LatestJointPositions(limits, p.rules, p.joint_states_topic, p.max_joint_state_age_s)
        self.activity = GuardActivity()
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
                                    clock=self._now, evader=Evader.from_config(self.model, self.scene, config))
        self.session = GuardSession(self.guard, config.planning_time_budget_s, self._measured, self._act,
                                    blocking_checks=self.backend.name == 'moveit',  # (they wait on this executor)
                                    on_error=self._on_planning_error)
        self.get_logger().info(self.backend.warm_up(self.session.on_planning_thread))
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
        self.session.active = True
        self.get_logger().info(f'active: checking every chunk on {self.node_params.input_topic}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.session.active = False
        self._destroy_timer()
        self.get_logger().info('deactivated: proposed chunks are no longer forwarded')
        return super().on_deactivate(state)

    def _destroy_timer(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None

    def _release(self) -> None:
        self._destroy_timer()
        if self.session is not None:
            self.session.stop()
            self.session = None
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
        """Every joint state that arrived since the last call. Freshness is judged from when each arrived
        (the middleware's receive time), never from when it was taken."""
        sub, joints = self._joint_sub, self.joints
        if sub is None or joints is None:
            return
        now = self._now()
        for msg, info in sub.take():
            problem = joints.update(msg.name, msg.position, stamp_to_seconds(msg.header.stamp),
                                    info.get('received_timestamp') or time.time_ns(), now)
            if problem is not None:
                self.get_logger().warning(f'{problem}; message ignored', throttle_duration_sec=2.0)

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
        self.activity.scene_update(update.changed, update.ignored)
        if update.ignored:
            self.get_logger().warning(f'{self.node_params.scene_topic}: ignored {len(update.ignored)} marker(s): '
                                      f'{"; ".join(update.ignored[:3])}', throttle_duration_sec=2.0)
        if update.changed:
            self.get_logger().info(f'scene updated from {self.node_params.scene_topic}: '
                                   f'{[o.name for o in scene.scene.objects()]}', throttle_duration_sec=1.0)
            self.session.scene_changed(arrived_ns)

    def _measured(self) -> tuple[dict[str, float], str | None]:
        """The latest position of every joint, and why it cannot be trusted (or None)."""
        self._take_joint_states()
        return self.joints.latest(time.time_ns(), self._now())

    # ------------------------------------------------------------------ the review
    def _on_proposed(self, msg: JointTrajectory, info: MessageInfo) -> None:
        arrived_ns = info.get('received_timestamp') or time.time_ns()
        session, topic = self.session, self.node_params.input_topic
        if session is None or not session.active:
            self.get_logger().info('inactive: proposed chunk not forwarded', throttle_duration_sec=5.0)
            return
        try:
            sample = trajectory_to_sample(msg)
        except MessageError as err:
            session.reject(list(msg.joint_names), f'{topic}: {err}', msg, arrived_ns)
            return
        session.review(TrajectoryChunk(sample.names, sample.points, sample.times_from_start), msg, arrived_ns,
                       self._now(), topic)

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
        line = self.activity.decision(decision, (time.time_ns() - arrived_ns) * 1e-9, reaction)
        if line is not None:
            self._log(line)

    def _log(self, line: LogLine) -> None:
        log = self.get_logger()  # (rclpy fixes severity and throttling per call site: one call per kind)
        if line.kind == 'no_position':
            log.error(line.text, throttle_duration_sec=2.0)
        elif line.kind == 'reject':
            log.warning(line.text, throttle_duration_sec=2.0)
        elif line.kind == 'hold':
            log.warning(line.text, throttle_duration_sec=1.0)
        elif line.kind == 'new_contact':
            log.warning(line.text)
        else:  # a fallback continues, a repeated contact
            log.info(line.text, throttle_duration_sec=1.0)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> GuardStatus:
        """What /diagnostics carries (also handy for tests and tools)."""
        return self.activity.status(self.guard, self.scene, self.backend.name, self.joints, self._measured()[1])

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
    init_node_process(args)
    try:
        node = CollisionGuardNode()
    except ValueError as err:  # a parameter of the node itself is wrong: say which, do not trace back
        print(f'{NODE_NAME}: {err}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    return spin_lifecycle_node(node, node.node_params.autostart, node.node_params.realtime_priority)


if __name__ == '__main__':
    sys.exit(main())
