"""The robot's kinematics and collision geometry, built from the same URDF/SRDF a ROS robot publishes.

pinocchio does forward kinematics and owns the collision geometry (coal shapes); this module only
decides which body pairs are worth checking and maps commanded joint names onto pinocchio's
configuration vector, so the checker can stay a thin, fast loop around pinocchio's C++ batch calls.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pinocchio as pin

# pinocchio joint models that move one degree of freedom with one configuration entry. Continuous
# joints (cos/sin, nq=2) and floating bases are not arm joints a trajectory commands: rejected.
_ONE_DOF_JOINTS = ('JointModelR', 'JointModelP', 'JointModelRevoluteUnaligned',
                   'JointModelPrismaticUnaligned')


@dataclass(frozen=True)
class JointLimits:
    """Position and velocity limits, one entry per commanded joint (RobotModel.joint_names order)."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray


class RobotModel:
    """pinocchio model + collision geometry with only the body pairs that can really collide enabled.

    `joint_names` are the independent one-DoF joints in pinocchio's q order; mimic joints (the
    Panda's `panda_finger_joint2`) follow their leader inside pinocchio, so a configuration is just
    the commanded joints' values (len(joint_names) == model.nq).
    """

    def __init__(self, model: pin.Model, collision_model: pin.GeometryModel) -> None:
        self.model = model
        self.collision_model = collision_model
        names: list[str] = []
        for joint_id in range(1, model.njoints):
            joint = model.joints[joint_id]
            short = joint.shortname()
            if short == 'JointModelMimic':
                continue
            if not (joint.nq == 1 and joint.nv == 1 and short.startswith(_ONE_DOF_JOINTS)):
                raise ValueError(f'joint {model.names[joint_id]!r} is a {short} (nq={joint.nq}); '
                                 'only revolute, prismatic and mimic joints are supported')
            if joint.idx_q != len(names):
                raise ValueError(f'joint {model.names[joint_id]!r} is not in configuration order')
            names.append(model.names[joint_id])
        if len(names) != model.nq:
            raise ValueError(f'model has nq={model.nq} but {len(names)} one-DoF joints')
        self.joint_names: tuple[str, ...] = tuple(names)
        self._index = {name: i for i, name in enumerate(names)}
        self.limits = JointLimits(lower=np.array(model.lowerPositionLimit, dtype=float),
                                  upper=np.array(model.upperPositionLimit, dtype=float),
                                  velocity=np.array(model.velocityLimit, dtype=float))
        # Body (link) name of every robot geometry: coal names are '<link>_<k>'.
        self.geometry_links: tuple[str, ...] = tuple(
            model.frames[g.parentFrame].name for g in collision_model.geometryObjects)

    @classmethod
    def from_urdf(cls, urdf: str, srdf: str | None = None,
                  package_dirs: Sequence[str | Path] = ()) -> RobotModel:
        """Build from a URDF string (`robot_description`); disabled pairs from the SRDF when given.

        Without an SRDF, bodies on the same or on adjacent joints (parent/child) are not checked:
        their meshes touch at the joint by construction, so checking them would flag every pose.
        """
        if not urdf or not urdf.lstrip().startswith('<'):
            raise ValueError('robot_description is empty or not XML (expected a URDF string)')
        try:
            model = pin.buildModelFromXML(urdf, mimic=True)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f'could not parse the URDF robot_description: {err}') from err
        try:
            geometry = pin.buildGeomFromUrdfString(model, urdf, pin.COLLISION,
                                                   package_dirs=[str(p) for p in package_dirs])
        except (RuntimeError, ValueError, OSError) as err:
            raise ValueError(f'could not load the URDF collision geometry (missing mesh? pass '
                             f'package_dirs or resolve package:// URIs): {err}') from err
        # addAllCollisionPairs already skips geometries on the same joint.
        geometry.addAllCollisionPairs()
        if srdf is not None:
            try:
                pin.removeCollisionPairsFromXML(model, geometry, srdf)
            except (RuntimeError, ValueError) as err:
                raise ValueError(f'could not apply the SRDF disabled collision pairs: {err}') from err
        else:
            _remove_adjacent_pairs(model, geometry)
        # Geometry fixed to the world (the base link) can only meet scene objects that are also
        # fixed: pairs among them never change, so they are dropped here (and not added for scenes).
        for k in reversed(range(len(geometry.collisionPairs))):
            pair = geometry.collisionPairs[k]
            if (geometry.geometryObjects[pair.first].parentJoint == 0
                    and geometry.geometryObjects[pair.second].parentJoint == 0):
                geometry.removeCollisionPair(pair)
        return cls(model, geometry)

    @classmethod
    def from_parameters(cls, robot_description: str = '', robot_description_semantic: str = ''
                        ) -> tuple[RobotModel, str]:
        """A node's robot: the URDF it was given (with its SRDF, if any), else the bundled Panda with its
        SRDF. Also returns where it came from, for the log."""
        if robot_description:
            return cls.from_urdf(robot_description, robot_description_semantic or None), 'robot_description'
        from diffusion_policy_ros.robot_description import panda_description
        description = panda_description()
        model = cls.from_urdf(description.urdf_text(), robot_description_semantic or description.srdf_text())
        return model, f'the bundled Panda ({description.urdf_path})'

    @property
    def nq(self) -> int:
        return self.model.nq

    def joint_indices(self, names: Sequence[str]) -> np.ndarray:
        """Positions of `names` in the configuration vector; names the first unknown joint."""
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise ValueError(f'joint(s) {unknown} not in the robot model (known: {list(self.joint_names)})')
        if len(set(names)) != len(names):
            raise ValueError(f'duplicate joint names in {list(names)}')
        return np.array([self._index[n] for n in names], dtype=int)

    def configuration(self, values: Mapping[str, float]) -> np.ndarray:
        """q from a {joint name: position} mapping that names every joint of the model."""
        self.joint_indices(list(values))
        missing = [n for n in self.joint_names if n not in values]
        if missing:
            raise ValueError(f'joint position(s) missing for {missing}')
        return np.array([float(values[n]) for n in self.joint_names], dtype=float)

    @property
    def collision_pair_count(self) -> int:
        return len(self.collision_model.collisionPairs)

    @property
    def root_link(self) -> str:
        """The URDF's root link (the first body frame attached to the universe), '' if none."""
        for frame in self.model.frames:
            if frame.parentJoint == 0 and frame.name != 'universe' and str(frame.type).endswith('BODY'):
                return frame.name
        return ''


def _remove_adjacent_pairs(model: pin.Model, geometry: pin.GeometryModel) -> None:
    """Drop pairs of geometries whose joints are parent and child (MoveIt's 'Adjacent' rule).

    Links welded by fixed joints share their moving joint in pinocchio, so "adjacent joints" covers
    the links a fixed chain connects as well.
    """
    for k in reversed(range(len(geometry.collisionPairs))):
        pair = geometry.collisionPairs[k]
        a = geometry.geometryObjects[pair.first].parentJoint
        b = geometry.geometryObjects[pair.second].parentJoint
        if model.parents[a] == b or model.parents[b] == a:
            geometry.removeCollisionPair(pair)
