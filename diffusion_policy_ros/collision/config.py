"""The collision guard's parameters: what to check and how to plan (`CollisionGuardConfig`) and the
node's own (`GuardNodeParams`: topics, robot model, rates); the params file and the node read both.

ROS parameters are flat and typed (no lists of dicts), so scene objects are spelled
`scene.object_names: [table, ...]` plus `scene.<name>.shape / .size / .pose`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from diffusion_policy_ros.config_loader import from_mapping
from diffusion_policy_ros.control.measurement import MeasurementRules
from diffusion_policy_ros.scheduling import DEFAULT_REALTIME_PRIORITY, REALTIME_PRIORITY_HELP, check_realtime_priority

from .scene import Scene, SceneObject

BACKENDS = ('auto', 'embedded', 'moveit')
NODE_NAME = 'collision_guard_node'
# Parameters every rclpy node may carry; they are not the guard's business.
_ROS_BUILTIN = ('use_sim_time', 'start_type_description_service')


@dataclass(frozen=True)
class CollisionGuardConfig:
    backend: str = 'auto'  # auto | embedded | moveit
    max_joint_step: float = 0.02  # rad (m for prismatic joints) between checked states
    padding: float = 0.01  # m of clearance kept from scene objects
    limit_tolerance: float = 1e-3  # joint-limit slack for measurement noise
    velocity_scaling: float = 0.5  # fallback speed as a fraction of the URDF velocity limits
    acceleration_limits: tuple[float, ...] = (3.0,)  # rad/s^2, one value or one per joint
    jerk_limits: tuple[float, ...] = (30.0,)  # rad/s^3, one value or one per joint
    planning_time_budget_s: float = 0.1
    # s: a marker object seen moving is held swept over where it goes in this time (0: where it is)
    moving_object_lookahead_s: float = 1.0
    # s: when the arm stands in a moving object's way, the longest straight motion out of it the guard
    # sends instead of holding there (collision/evasion.py); 0 turns evasion off
    evasion_max_duration_s: float = 1.0
    evasion_link: str = ''  # the link moved out of the way; '' = the one on the last revolute joint
    control_period_s: float = 0.1  # spacing of the fallback's trajectory points
    planner_seed: int = 0  # 0: a fresh random seed per process; > 0: reproducible plans
    moveit_group: str = 'arm'
    moveit_timeout_s: float = 0.5
    scene_objects: tuple[SceneObject, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {self.backend!r}')
        for name in ('max_joint_step', 'planning_time_budget_s', 'control_period_s', 'moveit_timeout_s'):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f'parameter {name} must be positive and finite, got {value!r}')
        for name in ('padding', 'limit_tolerance', 'moving_object_lookahead_s', 'evasion_max_duration_s'):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f'parameter {name} must be non-negative and finite, got {value!r}')
        if not 0 < self.velocity_scaling <= 1:
            raise ValueError(f'parameter velocity_scaling must be in (0, 1], got {self.velocity_scaling}')
        for name in ('acceleration_limits', 'jerk_limits'):
            values = tuple(float(v) for v in getattr(self, name))
            if not values or not all(v > 0 and math.isfinite(v) for v in values):
                raise ValueError(f'parameter {name} must be positive values, got {list(values)}')
            object.__setattr__(self, name, values)
        if self.planner_seed < 0:
            raise ValueError(f'parameter planner_seed must be >= 0, got {self.planner_seed}')
        names = [o.name for o in self.scene_objects]
        if len(set(names)) != len(names):
            raise ValueError(f'duplicate scene object names in {names}')

    def scene(self) -> Scene:
        return Scene(self.scene_objects)

    @property
    def seed(self) -> int | None:
        return self.planner_seed or None

    def ros_parameters(self) -> dict[str, Any]:
        """Flat {name: value} for declare_parameter, scene objects included."""
        params: dict[str, Any] = {}
        for f in fields(self):
            if f.name != 'scene_objects':
                value = getattr(self, f.name)
                params[f.name] = list(value) if isinstance(value, tuple) else value
        # An empty string array has no type in a params file; [''] stands for "no objects".
        params['scene.object_names'] = [o.name for o in self.scene_objects] or ['']
        for obj in self.scene_objects:
            for key, value in obj.to_dict().items():
                params[f'scene.{obj.name}.{key}'] = value
        return params

    @classmethod
    def from_ros_parameters(cls, params: Mapping[str, Any]) -> CollisionGuardConfig:
        """From flat ROS parameters (as a node reads them); unknown names are errors, not ignored."""
        known = {f.name for f in fields(cls)} - {'scene_objects'}
        values: dict[str, Any] = {}
        scene_keys: dict[str, Any] = {}
        for key, value in params.items():
            if key in _ROS_BUILTIN or key.startswith('qos_overrides.'):
                continue
            if key in known:
                values[key] = value
            elif key.startswith('scene.'):
                scene_keys[key[len('scene.'):]] = value
            else:
                raise ValueError(f'unknown collision guard parameter {key!r} (known: {sorted(known)} '
                                 'and scene.*)')
        object_names = [n for n in scene_keys.pop('object_names', []) if n]
        objects = []
        for name in object_names:
            spec = {k.split('.', 1)[1]: scene_keys.pop(k) for k in list(scene_keys) if k.startswith(f'{name}.')}
            objects.append(SceneObject.from_dict(name, spec))
        if scene_keys:
            raise ValueError(f'scene parameters {sorted("scene." + k for k in scene_keys)} belong to no '
                             f'object in scene.object_names {object_names}')
        return dataclasses.replace(from_mapping(cls, values, 'parameter'), scene_objects=tuple(objects))

    @classmethod
    def from_params_file(cls, path: str | Path, node_name: str = NODE_NAME) -> CollisionGuardConfig:
        import yaml  # only needed here; the node gets its parameters from rclpy

        path = Path(path)
        document = yaml.safe_load(path.read_text()) or {}
        try:
            nested = document[node_name]['ros__parameters']
        except (KeyError, TypeError):
            raise ValueError(f'{path}: no {node_name}: ros__parameters: section') from None
        try:
            return cls.from_ros_parameters(_flatten(nested))
        except ValueError as err:
            raise ValueError(f'{path}: {err}') from err


def _flatten(nested: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f'{name}.'))
        else:
            flat[name] = value
    return flat


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
        if not self.diagnostics_rate_hz > 0:
            raise ValueError(f'parameter diagnostics_rate_hz must be > 0, got {self.diagnostics_rate_hz}')
        if not self.max_joint_state_age_s >= 0:
            raise ValueError(f'parameter max_joint_state_age_s must be >= 0, got {self.max_joint_state_age_s}')
        check_realtime_priority(self.realtime_priority)
        self.rules  # noqa: B018 - validates the tolerances

    @classmethod
    def from_ros_parameters(cls, params: Mapping[str, Any]) -> GuardNodeParams:
        """The node's own parameters out of all it was given (types checked by `config_loader`)."""
        return from_mapping(cls, {f.name: params[f.name] for f in fields(cls) if f.name in params}, 'parameter')

    @property
    def rules(self) -> MeasurementRules:
        """Which joint states the guard trusts (control.measurement)."""
        return MeasurementRules(self.joint_limit_tolerance, self.future_stamp_tolerance_s)


def guard_node_parameters() -> type:
    """Every top-level key a params file may give the node, as one dataclass (what bring-up and the
    params-file test read): the node's own parameters, the guard's (CollisionGuardConfig, minus its
    parsed `scene_objects`) and `scene` (scene.object_names, scene.<name>.*)."""
    def copy(f: dataclasses.Field) -> tuple[str, Any, dataclasses.Field]:
        return f.name, f.type, field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)

    own = [copy(f) for f in fields(GuardNodeParams)]
    guard = [copy(f) for f in fields(CollisionGuardConfig) if f.name != 'scene_objects']
    scene = [('scene', dict, field(default_factory=dict, metadata={
        'help': 'scene.object_names: [names]; scene.<name>.shape / .size / .pose / .padding'}))]
    return dataclasses.make_dataclass('CollisionGuardNodeParameters', own + guard + scene)


def guard_parameter_defaults() -> dict[str, tuple[Any, str]]:
    """{name: (default, description)} of every parameter the node declares up front (scene.<name>.*
    come from the params file)."""
    defaults = {f.name: (f.default, f.metadata.get('help', '')) for f in fields(GuardNodeParams)}
    for name, value in CollisionGuardConfig().ros_parameters().items():
        defaults[name] = (value, f'see diffusion_policy_ros.collision.config.CollisionGuardConfig.{name}')
    return defaults


def read_guard_parameters(values: Mapping[str, Any]) -> tuple[GuardNodeParams, CollisionGuardConfig]:
    """The node's own parameters and the guard's config out of all the node's parameter values; a name
    neither knows is refused by CollisionGuardConfig."""
    own = {f.name for f in fields(GuardNodeParams)}
    config = {k: v for k, v in values.items() if k not in own and v is not None}
    return GuardNodeParams.from_ros_parameters(values), CollisionGuardConfig.from_ros_parameters(config)
