"""What policy_node runs, set up without ROS: its parameters and the checkpoint deployed with them.

`deploy(params)` loads the checkpoint, checks it against the robot set-up (cameras, joints, limits,
control rate), resolves how it executes (the checkpoint's `ExecutionConfig` with the parameters that
are set as logged overrides) and builds the predictor (eager, compiled or ONNX Runtime), so the node
is left with topics, timers and messages.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_policy_ros.control.controller import ControllerConfig
from diffusion_policy_ros.control.limits import JointLimits
from diffusion_policy_ros.control.measurement import MeasurementRules
from diffusion_policy_ros.core.config import ExecutionConfig
from diffusion_policy_ros.scheduling import DEFAULT_REALTIME_PRIORITY, REALTIME_PRIORITY_HELP


@dataclass
class PolicyNodeParams:
    """All parameters of policy_node (config/policy.yaml mirrors these names)."""

    checkpoint: str = field(default='models/pick_place_fast', metadata={
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

    @property
    def rules(self) -> MeasurementRules:
        """Which joint states and frames the node trusts (control.measurement)."""
        return MeasurementRules(self.joint_limit_tolerance, self.future_stamp_tolerance_s)



@dataclass
class Deployment:
    """A checkpoint ready to run on this robot: everything `PolicyController` and the node need."""

    path: Path
    policy: Any
    predictor: Any  # the policy, or its accelerated runtime (core.runtime.make_predictor)
    device: str
    execution: ExecutionConfig
    limits: JointLimits
    camera_topics: dict[str, str]  # camera key -> topic
    controller_config: ControllerConfig
    overrides: dict[str, tuple[Any, Any]]  # execution setting -> (the checkpoint's, the one used)
    notes: list[str]  # what the node should log (camera topics fitted to the checkpoint)
    inference_delay_s: float = 0.0
    generator: Any = None  # seeded sampling noise (`seed` > 0)
    stream: Any = None  # a CUDA stream for inference when on the GPU

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.policy.obs_spec.image_shape)

    @property
    def summary(self) -> str:
        cfg, execution = self.policy.cfg, self.execution
        return (f'checkpoint {self.path} ({cfg.policy}/{cfg.denoiser}) on {self.device}; cameras '
                f'{self.camera_topics}; joints {list(self.limits.names)}; {1 / execution.control_period_s:g} Hz; '
                f'{execution.num_inference_steps} network evaluations and {execution.n_action_steps} actions per '
                f'chunk, blending {execution.blending}')

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One chunk (on the inference worker)."""
        if self.inference_delay_s > 0:
            time.sleep(self.inference_delay_s)
        steps = self.execution.num_inference_steps
        if self.stream is None:
            return self.predictor.predict_action_chunk(obs, num_inference_steps=steps, generator=self.generator)
        import torch
        with torch.cuda.stream(self.stream):  # the numpy result is copied back, which synchronises
            return self.predictor.predict_action_chunk(obs, num_inference_steps=steps, generator=self.generator)


def deploy(p: PolicyNodeParams, resolve_path: Callable[[str], Path] = Path) -> Deployment:
    """Load `p.checkpoint` and fit it to the set-up `p` describes; ValueError (CheckpointError) naming
    what does not fit."""
    import torch

    from diffusion_policy_ros.core.checkpoint import fit_camera_topics, load_checkpoint
    from diffusion_policy_ros.core.runtime import make_predictor, pick_device
    device = pick_device(p.device)
    if p.torch_threads > 0:
        torch.set_num_threads(p.torch_threads)
    path = resolve_path(p.checkpoint)
    policy = load_checkpoint(path, device=device)
    cfg, obs_spec = policy.cfg, policy.obs_spec
    joints = list(policy.action_spec.joint_names)
    camera_topics, note = fit_camera_topics(p.camera_topics, obs_spec.camera_keys, path)
    if p.joint_names and sorted(p.joint_names) != sorted(joints):
        unknown = [n for n in p.joint_names if n not in joints]
        missing = [n for n in joints if n not in p.joint_names]
        raise ValueError(f'joint_names do not fit the checkpoint {path}: unknown {unknown}, '
                         f'missing {missing} (checkpoint joints {joints})')
    if obs_spec.joint_names and list(obs_spec.joint_names) != joints:
        raise ValueError(f'checkpoint {path} observes joints {obs_spec.joint_names} but commands '
                         f'{joints}: the node needs them to be the same joints')
    limits = JointLimits.for_robot(joints, p.position_lower, p.position_upper, p.max_velocity, p.robot_description)
    if p.velocity_scale != 1.0:
        limits = limits.scaled(p.velocity_scale)
    execution = cfg.deployed_execution(
        p.control_rate_hz, p.allow_rate_mismatch, f'checkpoint {path}', num_inference_steps=p.num_inference_steps,
        n_action_steps=p.n_action_steps, blending=p.blending, crossfade_steps=p.crossfade_steps,
        ensemble_decay=p.ensemble_decay, replan=p.replan)
    controller_config = ControllerConfig.from_execution(execution, cfg.n_obs_steps, max_obs_age_s=p.max_obs_age_s,
                                                        measurement=p.rules)
    return Deployment(
        path=path, policy=policy, device=device, execution=execution, limits=limits,
        predictor=make_predictor(policy, p.accelerate, device, execution.num_inference_steps, p.torch_threads or 1),
        camera_topics=dict(zip(obs_spec.camera_keys, camera_topics)), controller_config=controller_config,
        overrides=execution.changed_from(cfg.execution_config()), notes=[note] if note else [],
        inference_delay_s=p.inference_delay_s,
        generator=torch.Generator(device=device).manual_seed(p.seed) if p.seed > 0 else None,
        # On CUDA inference runs on its own stream, so it does not queue behind other work.
        stream=torch.cuda.Stream() if device.startswith('cuda') else None)
