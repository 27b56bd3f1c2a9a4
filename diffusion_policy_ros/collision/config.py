"""The collision guard's parameters: one dataclass that the params file and the node both read.

ROS parameters are flat and typed (no lists of dicts), so scene objects are spelled
`scene.object_names: [table, ...]` plus `scene.<name>.shape / .size / .pose`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

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
        for name in ('padding', 'limit_tolerance', 'moving_object_lookahead_s'):
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
                values[key] = tuple(value) if isinstance(value, (list, tuple)) else value
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
        return cls(**values, scene_objects=tuple(objects))

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
