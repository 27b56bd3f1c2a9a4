"""The guard's run-time scene: the params file's objects overlaid by `visualization_msgs/Marker`s.

ROS-free: markers are duck-typed (an rclpy Marker, a rosbags one, or anything with the same fields),
and the few message constants needed are spelled out here, as the message definition fixes them.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .scene import Scene, SceneObject

# visualization_msgs/Marker constants
CUBE, SPHERE, CYLINDER = 1, 2, 3
ADD, DELETE, DELETEALL = 0, 2, 3
MARKER_SHAPES = {CUBE: 'box', SPHERE: 'sphere', CYLINDER: 'cylinder'}
# m/s: an object that seems to move faster than this between two updates jumped (a reset scene, another
# detection), and is held where it is now; people, carts and other arms in a cell move slower.
MAX_TRACKED_SPEED = 3.0


def marker_name(marker: Any) -> str:
    """The scene object a marker stands for: its `text` when set (the sim writes the object's name
    there and in `ns`), else `ns/id`, the identity RViz gives a marker."""
    text = marker.text.strip()
    if text:
        return text
    return f'{marker.ns}/{marker.id}' if marker.ns else f'marker/{marker.id}'


def marker_to_scene_object(marker: Any, name: str, padding: float | None = None) -> SceneObject:
    """A CUBE / SPHERE / CYLINDER marker as a scene object; raises ValueError saying what is wrong.

    Marker scales are full extents: a box takes them as edge lengths; a sphere or cylinder whose
    scales differ (an ellipsoid) is covered by the bounding sphere / round cylinder, never shrunk.
    """
    shape = MARKER_SHAPES.get(marker.type)
    if shape is None:
        raise ValueError(f'marker {name!r}: type {marker.type} is not CUBE (1), SPHERE (2) or CYLINDER (3)')
    s = marker.scale
    if shape == 'box':
        size = (s.x, s.y, s.z)
    elif shape == 'sphere':
        size = (max(s.x, s.y, s.z) / 2.0,)
    else:
        size = (s.z, max(s.x, s.y) / 2.0)
    p, o = marker.pose.position, marker.pose.orientation
    return SceneObject(name, shape, size, (p.x, p.y, p.z, o.x, o.y, o.z, o.w), padding)


def _rotation(quaternion_xyzw: Iterable[float]) -> np.ndarray:
    x, y, z, w = quaternion_xyzw
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def swept(obj: SceneObject, velocity: np.ndarray, lookahead_s: float) -> SceneObject:
    """`obj` grown to cover everywhere it goes in the next `lookahead_s` at `velocity` (m/s, world):
    exact for a translating box (its extent along each of its own axes grows by the distance covered
    along that axis, its centre moves half way), a covering sphere or cylinder otherwise."""
    travel = np.asarray(velocity, dtype=float) * lookahead_s
    pose = obj.pose
    centre = np.asarray(pose[:3]) + travel / 2
    if obj.shape == 'box':
        size = tuple(np.asarray(obj.size) + np.abs(_rotation(pose[3:]).T @ travel))
    elif obj.shape == 'sphere':
        size = (obj.size[0] + float(np.linalg.norm(travel)) / 2,)
    else:  # cylinder (height, radius): taller and wider by the whole travel, whatever its direction
        distance = float(np.linalg.norm(travel))
        size = (obj.size[0] + distance, obj.size[1] + distance / 2)
    return replace(obj, size=size, pose=(*centre, *pose[3:]))


@dataclass
class SceneUpdate:
    changed: bool
    applied: int  # markers that added, replaced or deleted something
    ignored: list[str]  # why each ignored marker was ignored


class MarkerScene:
    """The guard's scene: the params file's objects, overlaid by the objects a marker topic adds.

    ADD (= MODIFY) adds or replaces by name, keeping the params file's per-object padding for that
    name (a marker has no padding field: the table the gripper may touch stays unpadded). DELETE and
    DELETEALL (all, or one ns) remove what markers added; a params-file object a marker had replaced comes back, so the
    configured static environment cannot be switched off from a topic. Each MarkerArray is applied to
    the Scene in one atomic step.

    A marker object that moves between two stamped updates gets a velocity; with `lookahead_s` > 0 the
    scene holds it swept over that look-ahead (`swept`), so a chunk is blocked by where the object is
    going, not only by where it was last seen.
    """

    def __init__(self, scene: Scene, configured: Iterable[SceneObject], frames: Iterable[str],
                 lookahead_s: float = 0.0) -> None:
        self.scene = scene
        self.configured = {o.name: o for o in configured}
        self.frames = {f.lstrip('/') for f in frames} | {''}
        self.lookahead_s = lookahead_s
        self._from_markers: dict[str, SceneObject] = {}
        self._name_of: dict[tuple[str, int], str] = {}  # (ns, id) -> object name, for DELETE
        # name -> (centre, stamp s, velocity m/s): kept across DELETEALL, which republishing scenes send
        self._motion: dict[str, tuple[np.ndarray, float, np.ndarray]] = {}
        self.scene.set_objects(self.configured.values())

    def velocities(self) -> dict[str, np.ndarray]:
        """The last measured velocity of each marker object present (m/s, world)."""
        motion = dict(self._motion)  # copies (atomic under the GIL): the evader reads from another thread
        return {n: motion[n][2] for n in dict(self._from_markers) if n in motion}

    def moving(self) -> dict[str, tuple[SceneObject, np.ndarray]]:
        """The marker objects seen moving: name -> (the object where it was last seen, velocity m/s)."""
        present = dict(self._from_markers)
        return {n: (present[n], v) for n, v in self.velocities().items() if n in present and np.any(v)}

    def objects_over(self, begin_s: float, end_s: float) -> list[SceneObject]:
        """Every object, each one seen moving grown to cover where it will be from `begin_s` to `end_s`
        after it was last seen (at its measured velocity); the guard's scene is `objects_over(0, lookahead)`."""
        present = dict(self._from_markers)
        for name, (obj, velocity) in self.moving().items():
            if begin_s:
                obj = replace(obj, pose=(*(np.asarray(obj.pose[:3]) + velocity * begin_s), *obj.pose[3:]))
            present[name] = swept(obj, velocity, max(0.0, end_s - begin_s))
        return list({**self.configured, **present}.values())

    def _track(self, obj: SceneObject, stamp_s: float) -> None:
        centre = np.asarray(obj.pose[:3], dtype=float)
        previous = self._motion.get(obj.name)
        velocity = np.zeros(3)
        if previous is not None:
            dt = stamp_s - previous[1]
            if dt <= 1e-3:  # unstamped, repeated or out of order: keep what was measured
                self._motion[obj.name] = (centre, max(stamp_s, previous[1]), previous[2])
                return
            velocity = (centre - previous[0]) / dt
            if np.linalg.norm(velocity) > MAX_TRACKED_SPEED:
                velocity = np.zeros(3)  # a jump (a reset scene, a re-detection), not a motion to extrapolate
        self._motion[obj.name] = (centre, stamp_s, velocity)

    def apply(self, markers: Iterable[Any]) -> SceneUpdate:
        applied, ignored = 0, []
        for marker in markers:
            key = (marker.ns, marker.id)
            if marker.action == DELETEALL:
                # The message definition: all objects, or only those of the marker's ns when it has one,
                # so the sim's republished scene never clears what a perception node added.
                doomed = [k for k in self._name_of if not marker.ns or k[0] == marker.ns]
                applied += bool(doomed)
                for k in doomed:
                    self._from_markers.pop(self._name_of.pop(k), None)
            elif marker.action == DELETE:
                name = self._name_of.pop(key, None)
                if name is None or self._from_markers.pop(name, None) is None:
                    ignored.append(f'DELETE of unknown marker ns={marker.ns!r} id={marker.id}')
                else:
                    applied += 1
            elif marker.action == ADD:
                name = marker_name(marker)
                frame = marker.header.frame_id.lstrip('/')
                if frame not in self.frames:
                    ignored.append(f'marker {name!r} is in frame {marker.header.frame_id!r}, not in '
                                   f'{sorted(f for f in self.frames if f)} (no tf lookup here)')
                    continue
                configured = self.configured.get(name)
                try:
                    obj = marker_to_scene_object(marker, name, configured.padding if configured else None)
                except ValueError as err:
                    ignored.append(str(err))
                    continue
                previous = self._name_of.get(key)
                if previous is not None and previous != name:  # the marker was renamed
                    self._from_markers.pop(previous, None)
                self._name_of[key] = name
                self._from_markers[name] = obj
                stamp = marker.header.stamp
                self._track(obj, stamp.sec + stamp.nanosec * 1e-9)
                applied += 1
            else:
                ignored.append(f'marker ns={marker.ns!r} id={marker.id}: unknown action {marker.action}')
        changed = self.scene.set_objects(self.objects_over(0.0, self.lookahead_s) if self.lookahead_s > 0 else
                                         {**self.configured, **self._from_markers}.values())
        return SceneUpdate(changed, applied, ignored)
