"""`policy_node`: cameras + joint states in, JointTrajectory out at the control rate.

A thin rclpy adapter (a LifecycleNode) over the ROS-free pieces: the observation history, the health
monitor, the inference worker thread and the chunk executor live in `diffusion_policy_ros.control`,
the policy in `diffusion_policy_ros.core`, image decoding in `diffusion_policy_ros.data.image_codec`.

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
from dataclasses import dataclass, field, fields

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from diffusion_policy_ros.control.controller import ControllerConfig, PolicyController
from diffusion_policy_ros.control.health import HoldCode, HoldReason
from diffusion_policy_ros.control.limits import JointLimits
from diffusion_policy_ros.control.measurement import MeasurementRules
from diffusion_policy_ros.control.observation import example_observation
from diffusion_policy_ros.data.image_codec import (CdrImage, ImageDecodeError, cdr_header_stamp, check_image_fields,
                                                   image_from_cdr, message_to_rgb8, prepare_model_image)
from diffusion_policy_ros.nodes.lifecycle import (DEFAULT_REALTIME_PRIORITY, REALTIME_PRIORITY_HELP,
                                               ReleasingLifecycleNode, check_realtime_priority, spin_lifecycle_node)
from diffusion_policy_ros.nodes.dds import apply_dds_profile
from diffusion_policy_ros.nodes.messages import diagnostic_status, make_joint_trajectory, stamp_to_seconds
from diffusion_policy_ros.core.config import ExecutionConfig
from diffusion_policy_ros.core.runtime import make_predictor, pick_device
from diffusion_policy_ros.nodes.params import declare_parameters, unknown_given_parameters
from diffusion_policy_ros.nodes.polled import CAMERA_QOS, JOINT_STATE_QOS, PolledSubscription
from diffusion_policy_ros.paths import package_path
from diffusion_policy_ros.worker_thread import LatestJobThread


@dataclass
class PolicyNodeParams:
    """All parameters of policy_node (config/policy.yaml mirrors these names)."""

    checkpoint: str = field(default='models/pick_place', metadata={
        'help': 'checkpoint directory (or its config.json / model.safetensors); relative paths are '
                'tried against the working directory, then the package share directory'})
    device: str = field(default='auto', metadata={'help': 'auto | cuda | cpu'})
    camera_topics: list[str] = field(default_factory=lambda: ['/camera/color/image_raw'], metadata={
        'help': "image topics, mapped in order to the checkpoint's camera keys (unused for a camera-less checkpoint)"})
    joint_states_topic: str = '/joint_states'
    output_topic: str = '/arm_controller/joint_trajectory'
    # How the policy executes: unset (left out of the params file) = what the checkpoint was trained and
    # released with (PolicyConfig.execution_config); set = an override, logged at configure.
    control_rate_hz: float | None = field(default=None, metadata={
        'help': "unset: the checkpoint's (its dataset's control rate); another rate is refused unless "
                'allow_rate_mismatch (it would stretch every action in time)'})
    allow_rate_mismatch: bool = field(default=False, metadata={
        'help': "run at a control_rate_hz that differs from the checkpoint's anyway"})
    num_inference_steps: int | None = field(default=None, metadata={
        'help': "network evaluations (DDIM steps) per chunk; unset: the checkpoint's"})
    n_action_steps: int | None = field(default=None, metadata={
        'help': "actions executed per chunk; unset: the checkpoint's"})
    max_obs_age_s: float = field(default=0.5, metadata={
        'help': 'older observations put the node in HOLD; a HOLD publishes no older measurement than this'})
    joint_limit_tolerance: float = field(default=MeasurementRules.limit_tolerance, metadata={
        'help': 'rad a measured joint may lie outside its limits; a joint state further out is rejected (HOLD)'})
    future_stamp_tolerance_s: float = field(default=MeasurementRules.future_tolerance_s, metadata={
        'help': 's a message stamp may lie ahead of the node clock; one further ahead is rejected (HOLD)'})
    blending: str | None = field(default=None, metadata={
        'help': "none | temporal_ensemble | crossfade; unset: the checkpoint's"})
    replan: str | None = field(default=None, metadata={
        'help': "auto | chunk_end | every_tick: when to ask for the next chunk; unset: the checkpoint's"})
    crossfade_steps: int | None = field(default=None, metadata={'help': "unset: the checkpoint's"})
    ensemble_decay: float | None = field(default=None, metadata={'help': "unset: the checkpoint's"})
    joint_names: list[str] = field(default_factory=list, metadata={
        'help': "names of the commanded joints; empty = the checkpoint's; must be the checkpoint's joints"})
    position_lower: list[float] = field(default_factory=list)
    position_upper: list[float] = field(default_factory=list)
    max_velocity: list[float] = field(default_factory=list)
    robot_description: str = field(default='', metadata={
        'help': 'URDF (XML) to read joint limits from when position_lower/upper/max_velocity are empty'})
    velocity_scale: float = field(default=1.0, metadata={'help': 'fraction of the velocity limits used'})
    autostart: bool = field(default=True, metadata={'help': 'configure and activate on start-up'})
    accelerate: str = field(default='none', metadata={
        'help': "none | torch_compile (inductor, CPU or GPU) | cuda_graphs (torch.compile's 'reduce-overhead' "
                'mode: the denoiser step replayed as a CUDA graph; needs device cuda) | onnxruntime (the whole '
                'chunk sampling as one ONNX Runtime graph, CPU; built at configure)'})
    inference_delay_s: float = field(default=0.0, metadata={
        'help': 'extra latency injected into every inference (testing latency compensation)'})
    diagnostics_rate_hz: float = 1.0
    torch_threads: int = field(default=0, metadata={
        'help': 'intra-op CPU threads for inference; 0 = torch default. On a small CPU shared with the '
                'simulator, 1 avoids oversubscription (10x slower steps measured on 2 busy cores)'})
    seed: int = field(default=0, metadata={
        'help': '> 0: the sampling noise comes from a generator seeded with it (reproducible runs); 0: random'})
    realtime_priority: int = field(default=DEFAULT_REALTIME_PRIORITY, metadata={'help': REALTIME_PRIORITY_HELP})


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
        self.execution: ExecutionConfig | None = None
        self._generator = None  # seeded sampling noise (`seed` > 0)
        self._policy = None
        self._stream = None  # a CUDA stream for inference when on the GPU
        self._predictor = None  # the policy, or its accelerated runtime (core.runtime.make_predictor)
        self.device = 'cpu'
        self._published = 0
        self._publish_times: list[float] = []
        self.create_service(SetBool, '~/estop', self._on_estop)
        self.create_service(Trigger, '~/start', self._on_start)
        self.create_service(Trigger, '~/stop', self._on_stop)

    # ------------------------------------------------------------------ lifecycle
    def _configure(self) -> None:
        from diffusion_policy_ros.core.checkpoint import fit_camera_topics, load_checkpoint
        p = self.params
        unknown = unknown_given_parameters(self, PolicyNodeParams)
        if unknown:
            raise ValueError(f'unknown parameter(s) {unknown}; policy_node knows '
                             f'{sorted(f.name for f in fields(PolicyNodeParams))}')
        check_realtime_priority(p.realtime_priority)
        self.device = pick_device(p.device)
        if p.torch_threads > 0:
            import torch
            torch.set_num_threads(p.torch_threads)
        path = package_path(p.checkpoint)
        self._policy = load_checkpoint(path, device=self.device)
        cfg, obs_spec = self._policy.cfg, self._policy.obs_spec
        joints = list(self._policy.action_spec.joint_names)
        camera_topics, note = fit_camera_topics(p.camera_topics, obs_spec.camera_keys, path)
        if note:
            self.get_logger().info(note)
        if p.joint_names and sorted(p.joint_names) != sorted(joints):
            unknown = [n for n in p.joint_names if n not in joints]
            missing = [n for n in joints if n not in p.joint_names]
            raise ValueError(f'joint_names do not fit the checkpoint {path}: unknown {unknown}, '
                             f'missing {missing} (checkpoint joints {joints})')
        if obs_spec.joint_names and list(obs_spec.joint_names) != joints:
            raise ValueError(f'checkpoint {path} observes joints {obs_spec.joint_names} but commands '
                             f'{joints}: the node needs them to be the same joints')
        limits = JointLimits.for_robot(joints, p.position_lower, p.position_upper, p.max_velocity,
                                       p.robot_description)
        if p.velocity_scale != 1.0:
            limits = limits.scaled(p.velocity_scale)
        self.execution = execution = cfg.deployed_execution(
            p.control_rate_hz, p.allow_rate_mismatch, f'checkpoint {path}', num_inference_steps=p.num_inference_steps,
            n_action_steps=p.n_action_steps, blending=p.blending, crossfade_steps=p.crossfade_steps,
            ensemble_decay=p.ensemble_decay, replan=p.replan)
        for name, (theirs, ours) in execution.changed_from(cfg.execution_config()).items():
            self.get_logger().warning(f'{name} {ours} overrides the checkpoint\'s {theirs}')
        import torch
        # On CUDA inference runs on its own stream, so it does not queue behind other work.
        self._stream = torch.cuda.Stream() if self.device.startswith('cuda') else None
        self._predictor = make_predictor(self._policy, p.accelerate, self.device, execution.num_inference_steps,
                                         p.torch_threads or 1)
        self.period = execution.control_period_s
        self.image_shape = tuple(obs_spec.image_shape)
        self._generator = None
        if p.seed > 0:
            import torch
            self._generator = torch.Generator(device=self.device).manual_seed(p.seed)
        topic_of = dict(zip(obs_spec.camera_keys, camera_topics))
        self.controller = PolicyController(
            self._infer, list(obs_spec.camera_keys), limits,
            ControllerConfig.from_execution(execution, cfg.n_obs_steps, max_obs_age_s=p.max_obs_age_s,
                                            measurement=MeasurementRules(p.joint_limit_tolerance,
                                                                         p.future_stamp_tolerance_s)),
            clock=self._now, stream_names={**topic_of, 'joint_states': p.joint_states_topic},
            decode_image=self._decode_image,
            # the window reaches (n_obs_steps - 1) periods back; two more cover a late tick
            camera_span_s=(cfg.n_obs_steps + 1) * self.period)
        self._camera_subs = {key: PolledSubscription(self, Image, topic, CAMERA_QOS, raw=True)
                             for key, topic in topic_of.items()}
        self._joint_sub = PolledSubscription(self, JointState, p.joint_states_topic, JOINT_STATE_QOS)
        self._pub = self.create_publisher(JointTrajectory, p.output_topic, 10)
        self.get_logger().info(
            f'configured: checkpoint {path} ({cfg.policy}/{cfg.denoiser}) on {self.device}; cameras '
            f'{topic_of}; joints {joints}; {1 / execution.control_period_s:g} Hz to {p.output_topic}; '
            f'{execution.num_inference_steps} network evaluations and {execution.n_action_steps} actions per '
            f'chunk, blending {execution.blending}')

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            warmup = self.controller.start(example_observation(
                self.controller.history.camera_keys, self.image_shape, self.controller.cfg.n_obs_steps,
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
        self.controller = None
        self._policy = self._predictor = None

    # ------------------------------------------------------------------ inputs
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
        return prepare_model_image(message_to_rgb8(frame, topic=topic), self.image_shape)

    # ------------------------------------------------------------------ inference (worker thread)
    def _infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.params.inference_delay_s > 0:
            time.sleep(self.params.inference_delay_s)
        steps = self.execution.num_inference_steps
        if self._stream is None:
            return self._predictor.predict_action_chunk(obs, num_inference_steps=steps, generator=self._generator)
        import torch
        with torch.cuda.stream(self._stream):  # the numpy result is copied back, which synchronises
            return self._predictor.predict_action_chunk(obs, num_inference_steps=steps, generator=self._generator)

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
        status = dataclasses.replace(
            self.controller.status(self._now()), device=self.device, published=self._published,
            num_inference_steps=self.execution.num_inference_steps, n_action_steps=self.execution.n_action_steps,
            control_rate_hz=1 / self.execution.control_period_s,
            publish_period_mean_s=float(periods.mean()) if periods.size else float('nan'))
        reason = self.controller.health.reason
        msg = DiagnosticArray(status=[diagnostic_status(
            f'{self.get_name()}: policy', self.device, status,
            DiagnosticStatus.OK if reason is None else DiagnosticStatus.WARN,
            'RUNNING' if reason is None else f'HOLD: {reason}')])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    # The inference thread runs Python between torch kernels; the default 5 ms switch interval lets it
    # keep the GIL that long after the tick thread asks for it.
    sys.setswitchinterval(0.001)
    apply_dds_profile()
    rclpy.init(args=args)
    node = PolicyNode()
    return spin_lifecycle_node(node, node.params.autostart, node.params.realtime_priority)


if __name__ == '__main__':
    sys.exit(main())
