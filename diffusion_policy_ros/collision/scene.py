"""Obstacles around the robot: boxes, spheres and cylinders with poses in the robot's root frame.

Sizes follow shape_msgs/SolidPrimitive (what MoveIt's collision objects use) so the MoveIt backend
and a params file describe an object the same way:
box (x, y, z) full edge lengths, sphere (radius,), cylinder (height, radius) along its local z.
Poses are (x, y, z, qx, qy, qz, qw), quaternion in ROS order (w last); (x, y, z) alone means upright.
An object may carry its own `padding` (e.g. 0 for the table the gripper must reach down to);
otherwise the checker's padding applies.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import coal
import numpy as np
import pinocchio as pin

from diffusion_policy_ros.config_loader import from_mapping

SHAPE_SIZES = {'box': 3, 'sphere': 1, 'cylinder': 2}
IDENTITY_POSE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class SceneObject:
    name: str
    shape: str
    size: tuple[float, ...]
    pose: tuple[float, ...] = IDENTITY_POSE
    padding: float | None = None  # m; None: the checker's padding

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f'scene object needs a non-empty name, got {self.name!r}')
        if self.shape not in SHAPE_SIZES:
            raise ValueError(f'scene object {self.name!r}: shape {self.shape!r} is not one of '
                             f'{sorted(SHAPE_SIZES)}')
        size = tuple(float(v) for v in self.size)
        if len(size) != SHAPE_SIZES[self.shape] or not all(math.isfinite(v) and v > 0 for v in size):
            raise ValueError(f'scene object {self.name!r}: a {self.shape} needs {SHAPE_SIZES[self.shape]} '
                             f'positive finite size value(s), got {list(self.size)}')
        pose = tuple(float(v) for v in self.pose)
        if len(pose) == 3:
            pose = (*pose, 0.0, 0.0, 0.0, 1.0)
        if len(pose) != 7 or not all(math.isfinite(v) for v in pose):
            raise ValueError(f'scene object {self.name!r}: pose must be 3 or 7 finite numbers '
                             f'(x y z [qx qy qz qw]), got {list(self.pose)}')
        norm = math.sqrt(sum(v * v for v in pose[3:]))
        if norm < 1e-9:
            raise ValueError(f'scene object {self.name!r}: quaternion {list(pose[3:])} has zero norm')
        pose = (*pose[:3], *(v / norm for v in pose[3:]))
        if self.padding is not None:
            if not (math.isfinite(self.padding) and self.padding >= 0):
                raise ValueError(f'scene object {self.name!r}: padding must be >= 0, got {self.padding}')
            object.__setattr__(self, 'padding', float(self.padding))
        object.__setattr__(self, 'size', size)
        object.__setattr__(self, 'pose', pose)

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any]) -> SceneObject:
        """From a params file's scene.<name>.* (shape, size[, pose, padding])."""
        if 'name' in spec:
            raise ValueError(f"scene object {name!r}: unknown key(s) 'name' (the name is the object's key)")
        return from_mapping(cls, {**spec, 'name': name}, f'scene object {name!r}')

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {'shape': self.shape, 'size': list(self.size), 'pose': list(self.pose)}
        if self.padding is not None:
            out['padding'] = self.padding
        return out

    def placement(self) -> pin.SE3:
        x, y, z, qx, qy, qz, qw = self.pose
        rotation = pin.Quaternion(qw, qx, qy, qz).toRotationMatrix()
        return pin.SE3(rotation, np.array([x, y, z]))

    def to_coal(self, padding: float = 0.0, extra: float = 0.0) -> coal.CollisionGeometry:
        """The coal shape grown on every side by its own padding, or else by `padding`, plus `extra`.

        Growing a box's edges (instead of rounding its corners, the exact Minkowski sum) is slightly
        conservative at the corners; a clearance of at least the padding is still guaranteed.
        """
        for name, value in (('padding', padding), ('extra', extra)):
            if value < 0 or not math.isfinite(value):
                raise ValueError(f'{name} must be a finite non-negative distance, got {value}')
        if self.padding is not None:
            padding = self.padding
        padding += extra
        if self.shape == 'box':
            return coal.Box(*(v + 2 * padding for v in self.size))
        if self.shape == 'sphere':
            return coal.Sphere(self.size[0] + padding)
        height, radius = self.size
        return coal.Cylinder(radius + padding, height + 2 * padding)


class Scene:
    """A named, mutable set of obstacles; thread-safe, with a version the checker watches.

    The node edits the scene (params file, marker topic) while the checker reads it: every change
    bumps `version`, and the checker rebuilds its collision structures lazily on the next check.
    """

    def __init__(self, objects: Iterable[SceneObject] = ()) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, SceneObject] = {}
        self._version = 0
        for obj in objects:
            self.add(obj)

    @classmethod
    def from_dicts(cls, objects: Mapping[str, Mapping[str, Any]]) -> Scene:
        """From {name: {shape, size, pose}}, the shape the params file uses."""
        return cls(SceneObject.from_dict(name, spec) for name, spec in objects.items())

    def to_dicts(self) -> dict[str, dict[str, Any]]:
        return {obj.name: obj.to_dict() for obj in self.objects()}

    def add(self, obj: SceneObject) -> None:
        with self._lock:
            if obj.name in self._objects:
                raise ValueError(f'scene object {obj.name!r} already exists (use replace)')
            self._objects[obj.name] = obj
            self._version += 1

    def replace(self, obj: SceneObject) -> None:
        """Add or overwrite the object of that name (what a marker ADD/MODIFY means)."""
        with self._lock:
            self._objects[obj.name] = obj
            self._version += 1

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._objects:
                raise KeyError(f'no scene object named {name!r} (have {sorted(self._objects)})')
            del self._objects[name]
            self._version += 1

    def clear(self) -> None:
        with self._lock:
            self._objects.clear()
            self._version += 1

    def set_objects(self, objects: Iterable[SceneObject]) -> bool:
        """Make the scene exactly `objects` in one step; True when that changed anything.

        A run-time update (a MarkerArray: DELETEALL, then the new objects) must never be seen half
        applied: a checker reading in between would miss an obstacle that is still there.
        """
        objects = tuple(objects)
        names = [o.name for o in objects]
        if len(set(names)) != len(names):
            raise ValueError(f'duplicate scene object names in {names}')
        new = {o.name: o for o in objects}
        with self._lock:
            if new == self._objects:
                return False
            self._objects = new
            self._version += 1
            return True

    def snapshot(self) -> tuple[int, tuple[SceneObject, ...]]:
        """(version, objects) read atomically, so a rebuild never mixes two scene states."""
        with self._lock:
            return self._version, tuple(self._objects.values())

    def objects(self) -> tuple[SceneObject, ...]:
        return self.snapshot()[1]

    @property
    def version(self) -> int:
        return self._version

    def __contains__(self, name: object) -> bool:
        return name in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[SceneObject]:
        return iter(self.objects())

    def __getitem__(self, name: str) -> SceneObject:
        try:
            return self._objects[name]
        except KeyError:
            raise KeyError(f'no scene object named {name!r} (have {sorted(self._objects)})') from None
