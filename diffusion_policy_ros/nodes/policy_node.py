"""`policy_node`: cameras + joint states in, JointTrajectory out at the control rate.

A thin rclpy adapter (a LifecycleNode) over the ROS-free pieces: its parameters and the checkpoint
fitted to the robot (`control.deployment`); the observation history, the health monitor, the inference
worker thread and the chunk executor (`control.controller`); the policy (`core`); image decoding
(`data.image_codec`).

Threads: one single-threaded executor runs the control tick and the services. Joint states and camera
frames are not executor callbacks (`nodes.polled`): each tick takes the joint states that arrived
since the last one before it plans (the clamp and HOLD start from the newest measurement) and, once it
has published, hands the camera frames to the camera thread, which takes them out of DDS (a large
frame takes long to copy) and stores them raw. The inference worker decodes the frames its window
uses and runs DDIM. The tick never waits for a frame copy, image decoding or inference.
"""
from __future__ import annotations

import dataclasses
import gc
import sys
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from diffusion_policy_ros.control.controller import PolicyController
from diffusion_policy_ros.control.deployment import Deployment, PolicyNodeParams, deploy
from diffusion_policy_ros.control.health import HoldCode, HoldReason
from diffusion_policy_ros.control.observation import example_observation
from diffusion_policy_ros.data.image_codec import (CdrImage, ImageDecodeError, cdr_header_stamp, check_image_fields,
                                                   image_from_cdr, message_to_rgb8, prepare_model_image)
from diffusion_policy_ros.nodes.lifecycle import ReleasingLifecycleNode, init_node_process, spin_lifecycle_node
from diffusion_policy_ros.nodes.messages import diagnostic_status, make_joint_trajectory, stamp_to_seconds
from diffusion_policy_ros.nodes.params import declare_parameters, refuse_unknown_parameters
from diffusion_policy_ros.nodes.polled import CAMERA_QOS, JOINT_STATE_QOS, PolledSubscription
from diffusion_policy_ros.paths import package_path
from diffusion_policy_ros.scheduling import check_realtime_priority
from diffusion_policy_ros.worker_thread import LatestJobThread


PARAMS = PolicyNodeParams  # what bring-up and the params-file test read


class PolicyNode(ReleasingLifecycleNode):
    """ROS plumbing around `PolicyController`: subscriptions feed its history, a timer ticks it."""

    def __init__(self, **kwargs) -> None:
        super().__init__('policy_node', **kwargs)
        self.params = declare_parameters(self, PolicyNodeParams)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._joint_sub: PolledSubscription | None = None
        self._camera_subs: dict[str, PolledSubscription] = {}  # camera key -> its topic's subscription
        self._camera_thread: LatestJobThread | None = None
        self._chunk_wanted = threading.Event()  # set by the tick, consumed by the camera thread
        self._pub = None
        self._timers: list = []
        self.controller: PolicyController | None = None
        self.deployment: Deployment | None = None  # the checkpoint, fitted to this robot (configure)
        self._published = 0
        self._publish_times: list[float] = []
        self.create_service(SetBool, '~/estop', self._on_estop)
        self.create_service(Trigger, '~/start', self._on_start)
        self.create_service(Trigger, '~/stop', self._on_stop)

    # ------------------------------------------------------------------ lifecycle
    def _configure(self) -> None:
        p = self.params
        refuse_unknown_parameters(self, PolicyNodeParams)
        check_realtime_priority(p.realtime_priority)
        self.deployment = deployment = deploy(p, package_path)
        for note in deployment.notes:
            self.get_logger().info(note)
        for name, (theirs, ours) in deployment.overrides.items():
            self.get_logger().warning(f'{name} {ours} overrides the checkpoint\'s {theirs}')
        self.controller = PolicyController(
            deployment.infer, list(deployment.camera_topics), deployment.limits, deployment.controller_config,
            clock=self._now, stream_names={**deployment.camera_topics, 'joint_states': p.joint_states_topic},
            decode_image=self._decode_image,
            # the window reaches (n_obs_steps - 1) periods back; two more cover a late tick
            camera_span_s=(deployment.controller_config.n_obs_steps + 1) * self.period)
        self._camera_subs = {key: PolledSubscription(self, Image, topic, CAMERA_QOS, raw=True)
                             for key, topic in deployment.camera_topics.items()}
        self._joint_sub = PolledSubscription(self, JointState, p.joint_states_topic, JOINT_STATE_QOS)
        self._pub = self.create_publisher(JointTrajectory, p.output_topic, 10)
        self.get_logger().info(f'configured: {deployment.summary} to {p.output_topic}')

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            warmup = self.controller.start(example_observation(
                self.controller.history.camera_keys, self.deployment.image_shape, self.controller.cfg.n_obs_steps,
                self.controller.limits))
        except Exception as err:  # noqa: BLE001
            self.get_logger().error(f'activate failed: warm-up inference raised {err!r}')
            return TransitionCallbackReturn.FAILURE
        if self._camera_subs:
            # Copying frames out of DDS is the least urgent work here (a 4000x3000 frame takes ~110 ms):
            # it runs 10 nice steps below the tick.
            self._camera_thread = LatestJobThread('camera-taker', nice=10, on_error=lambda err: self.get_logger().error(
                f'taking camera frames failed: {err!r}', throttle_duration_sec=5.0))
            self._camera_thread.start()
        self._timers = [self.create_timer(self.period, self._tick),
                        self.create_timer(1.0 / self.params.diagnostics_rate_hz, self._publish_diagnostics)]
        # Everything allocated so far (torch, the model, rclpy) lives as long as the node: frozen out of
        # the garbage collector, a full collection no longer walks it while holding the GIL (tens of ms,
        # seen as late ticks).
        gc.collect()
        gc.freeze()
        self.get_logger().info(f'active: warm-up inference {1000 * warmup[-1]:.1f} ms')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        self.get_logger().info('deactivated: no more commands are published')
        return super().on_deactivate(state)

    def _stop_loop(self) -> None:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        if self._camera_thread is not None:
            self._camera_thread.stop()
            self._camera_thread = None
        if self.controller is not None:
            self.controller.shutdown()
            self.controller.executor.reset()

    def _release(self) -> None:
        self._stop_loop()
        for sub in [*self._camera_subs.values(), *filter(None, [self._joint_sub])]:
            sub.destroy()
        self._camera_subs, self._joint_sub = {}, None
        if self._pub is not None:
            self.destroy_publisher(self._pub)
            self._pub = None
        self.controller = self.deployment = None

    # ------------------------------------------------------------------ inputs
    @property
    def period(self) -> float:
        """Seconds between ticks: the deployed execution's control period."""
        return self.deployment.execution.control_period_s

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _stamp_of(self, msg) -> float:
        stamp = stamp_to_seconds(msg.header.stamp)
        return stamp if stamp > 0 else self._now()  # an unstamped message counts as received now

    def _take_joint_states(self) -> None:
        for msg, _ in self._joint_sub.take():
            self.controller.push_joint_state(self._stamp_of(msg), msg.name, msg.position, self._now())

    def _take_camera_frames(self) -> None:
        """On the camera thread: frames are taken serialized, their fields checked in place (constant time)
        and stored as a view with their stamp; the worker decodes the ones its window uses
        (`_decode_image`). Then the worker is woken if the tick asked for a chunk, so its window sees
        these frames."""
        for key, sub in self._camera_subs.items():
            for raw, _ in sub.take():
                try:
                    stamp = cdr_header_stamp(raw, topic=sub.topic)
                    frame = image_from_cdr(raw, topic=sub.topic)
                    check_image_fields(frame, topic=sub.topic)
                except ImageDecodeError as err:
                    self.controller.reject_frame(key, HoldReason(HoldCode.BAD_IMAGE, str(err), sub.topic))
                    continue
                self.controller.push_frame(key, stamp if stamp > 0 else self._now(), frame, self._now())
        if self._chunk_wanted.is_set():
            self._chunk_wanted.clear()
            self.controller.request_chunk()

    def _decode_image(self, frame: CdrImage, topic: str) -> np.ndarray:
        """On the inference worker: a frame as the model sees it (the dataset's own functions)."""
        return prepare_model_image(message_to_rgb8(frame, topic=topic), self.deployment.image_shape)

    # ------------------------------------------------------------------ the control tick
    def _tick(self) -> None:
        """Publish first, then hand over to the camera thread (which wakes the worker): what varies in
        time (frame copies, decoding, inference) happens off this thread, after the command is out."""
        if not self.context.ok():
            return  # shutting down (SIGINT/SIGTERM): the subscriptions and publishers are going away
        try:
            self._take_joint_states()
            result = self.controller.tick(self._now(), wake_worker=False)
        except Exception as err:  # noqa: BLE001 - a bug in one tick must not take the node down
            if not self.context.ok():
                return  # the context went down during this tick
            self.get_logger().error(f'control tick failed, publishing nothing this tick: {err!r}',
                                    throttle_duration_sec=5.0)
            return
        if result.points is not None:
            self._publish(result.points)
        if result.log_message and result.reason is None:
            self.get_logger().info(result.log_message)
        elif result.log_message:
            self.get_logger().warning(result.log_message)
        if result.wants_chunk:
            self._chunk_wanted.set()
        if self._camera_thread is not None:
            self._camera_thread.submit(self._take_camera_frames)
        elif result.wants_chunk:
            self.controller.request_chunk()

    def _publish(self, points: np.ndarray) -> None:
        msg = make_joint_trajectory(self.controller.limits.names, points, self.period,
                                    self.get_clock().now().to_msg())
        self._pub.publish(msg)
        self._published += 1
        self._publish_times.append(time.monotonic())
        del self._publish_times[:-200]

    # ------------------------------------------------------------------ services and diagnostics
    def _latch(self, response, action, ok_text: str):
        if self.controller is None:
            response.success, response.message = False, 'not configured'
        else:
            action()
            response.success, response.message = True, ok_text
        return response

    def _on_estop(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if request.data:
            return self._latch(response, lambda: self.controller.set_estop('emergency stop latched by ~/estop'),
                               'estop latched: holding position')
        return self._latch(response, lambda: self.controller.clear_estop(), 'estop cleared')

    def _on_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._latch(response, lambda: self.controller.request_start(), 'started')

    def _on_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._latch(response, lambda: self.controller.request_stop(), 'stopped: holding position')

    def _publish_diagnostics(self) -> None:
        if self.controller is None:
            return
        periods = np.diff(self._publish_times)
        execution = self.deployment.execution
        status = dataclasses.replace(
            self.controller.status(self._now()), device=self.deployment.device, published=self._published,
            num_inference_steps=execution.num_inference_steps, n_action_steps=execution.n_action_steps,
            control_rate_hz=1 / execution.control_period_s,
            publish_period_mean_s=float(periods.mean()) if periods.size else float('nan'))
        reason = self.controller.health.reason
        msg = DiagnosticArray(status=[diagnostic_status(
            f'{self.get_name()}: policy', self.deployment.device, status,
            DiagnosticStatus.OK if reason is None else DiagnosticStatus.WARN,
            'RUNNING' if reason is None else f'HOLD: {reason}')])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    # The inference thread runs Python between torch kernels; the default 5 ms switch interval lets it
    # keep the GIL that long after the tick thread asks for it.
    sys.setswitchinterval(0.001)
    init_node_process(args)
    node = PolicyNode()
    return spin_lifecycle_node(node, node.params.autostart, node.params.realtime_priority)


if __name__ == '__main__':
    sys.exit(main())
