"""The MuJoCo model: the shared Panda URDF plus a table, task objects, cameras and actuators.

The arm is compiled FROM `robot_description.panda_description()` (the URDF the collision guard
loads with pinocchio), so simulator and guard never disagree about link geometry. MuJoCo cannot
read the DAE visual meshes, so visuals are stripped and the collision STLs are drawn instead.
Everything the URDF lacks (scene, cameras, position servos, gravity compensation) is added with
`mujoco.MjSpec` edits, which keeps this file free of hand-copied robot XML.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

# Offscreen rendering without a display; must be set before mujoco is imported anywhere.
os.environ.setdefault('MUJOCO_GL', 'egl')

import mujoco  # noqa: E402

from ..robot_description import ARM_JOINTS, GRIPPER_JOINT, panda_description  # noqa: E402

TASKS: tuple[str, ...] = ('reach_around', 'pick_place')
# Each task with an obstacle crossing the workspace on a seeded schedule (sim/tasks.py MovingObstacle).
DYNAMIC_SUFFIX = '_dynamic'
ALL_TASKS: tuple[str, ...] = TASKS + tuple(t + DYNAMIC_SUFFIX for t in TASKS)


def base_task(task: str) -> str:
    """The static task a (possibly dynamic) task name is built on; raises ValueError when unknown."""
    if task not in ALL_TASKS:
        raise ValueError(f'unknown task {task!r}; expected one of {ALL_TASKS}')
    return task.removesuffix(DYNAMIC_SUFFIX)


def is_dynamic(task: str) -> bool:
    return base_task(task) != task

# World frame == panda_link0 (the robot base); the table top is the plane z = 0.
TABLE_SIZE = (1.3, 1.2, 0.05)  # full extents (m)
TABLE_CENTER = (0.35, 0.0, -0.025)
TCP_BODY = 'panda_hand_tcp'  # between the finger pads, 0.1034 m below the hand
HAND_BODY = 'panda_hand'
FINGER_BODIES = ('panda_leftfinger', 'panda_rightfinger')

# reach_around objects (positions are set per seed by the task, sizes are fixed).
OBSTACLE = 'obstacle'
OBSTACLE_SIZE = (0.06, 0.16, 0.20)  # depth (x), width (y), height (z): full extents
TARGET = 'target'
TARGET_RADIUS = 0.025  # visual only; success is REACH_TOLERANCE
# pick_place objects.
CUBE = 'cube'
CUBE_SIZE = 0.04  # edge length
CUBE_MASS = 0.05
ZONE = 'zone'
ZONE_SIZE = 0.10  # side of the square target zone
# the dynamic tasks' moving obstacle: a mocap body, moved kinematically every physics step
MOVING_OBSTACLE = 'moving_obstacle'
MOVING_OBSTACLE_SIZE = (0.08, 0.08, 0.20)  # full extents: a box standing on the table, like a person's arm

# Stiff PD servos per arm joint (Franka Menagerie magnitudes); gravity is compensated separately,
# so the servo only has to track, and the URDF effort limits clamp the torque like the real arm.
ARM_KP = (4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0)
ARM_KV = (450.0, 450.0, 350.0, 350.0, 200.0, 200.0, 200.0)
ARM_EFFORT = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
GRIPPER_KP = 800.0
GRIPPER_KV = 20.0
GRIPPER_FORCE = 30.0  # N: enough to hold the cube by friction, like the Franka hand's 70 N max
ARM_ARMATURE = 0.1  # rotor inertia; also what keeps stiff servos stable at 200 Hz

_ARM_RGBA = (0.92, 0.92, 0.92, 1.0)
_DARK_RGBA = (0.25, 0.25, 0.28, 1.0)


@dataclass(frozen=True)
class CameraSpec:
    name: str
    body: str | None  # None: fixed in the world
    position: tuple[float, float, float]
    look_at: tuple[float, float, float] | None  # world point (fixed cameras)
    quaternion_wxyz: tuple[float, float, float, float] | None = None  # body-mounted cameras
    fovy_deg: float = 45.0


# Framed on the workspace (cube, zone and the hand over them) rather than the whole table: at the 64x64
# the camera policy trains on, the 4 cm cube is ~5 px wide instead of ~2.5, which is what a grasp needs.
SCENE_CAMERA = CameraSpec('scene', None, (0.95, 0.0, 0.6), (0.5, 0.0, 0.04), fovy_deg=48.0)
# On the hand, looking along the fingers (camera -z = hand +z).
WRIST_CAMERA = CameraSpec('wrist', HAND_BODY, (0.06, 0.0, 0.02), None, (0.0, 1.0, 0.0, 0.0), fovy_deg=70.0)


def _look_at_quaternion(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera orientation (MuJoCo cameras look along -z with +y up) that faces ``target``."""
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rotation = np.column_stack([right, up, -forward])
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rotation.reshape(-1))
    return quat


def panda_urdf_for_mujoco() -> str:
    """The shared Panda URDF with DAE visuals stripped and MuJoCo compiler hints added."""
    text = panda_description().urdf_text(resolve_package_uris=True)
    text = re.sub(r'<visual>.*?</visual>', '', text, flags=re.S)
    hints = ('<mujoco><compiler strippath="false" fusestatic="false" discardvisual="false" '
             'balanceinertia="true"/></mujoco>')
    text, count = re.subn(r'(<robot\b[^>]*>)', r'\1' + hints, text, count=1)
    if count != 1:
        raise ValueError('Panda URDF has no <robot> element')
    return text


def build_spec(task: str, *, wrist_camera: bool = False, physics_hz: float = 500.0) -> mujoco.MjSpec:
    """An editable spec of the arm on its table with ``task``'s objects (placed at the origin;
    the task moves them per seed). A dynamic task adds the moving obstacle (size set per seed)."""
    dynamic, task = is_dynamic(task), base_task(task)
    spec = mujoco.MjSpec.from_string(panda_urdf_for_mujoco())
    spec.modelname = f'panda_{task}'
    spec.option.timestep = 1.0 / physics_hz
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC  # less slip in grasps than pyramidal
    spec.option.impratio = 10.0
    spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, 640)
    spec.visual.global_.offheight = max(spec.visual.global_.offheight, 480)
    spec.visual.quality.shadowsize = 0
    # No multisampling: on a CPU rasteriser (llvmpipe) it triples the cost of a 96x96 frame.
    spec.visual.quality.offsamples = 0

    arm_bodies = [b for b in spec.bodies if b.name.startswith('panda_') and b.name != 'panda_link0']
    for body in arm_bodies:
        body.gravcomp = 1.0
    for geom in spec.geoms:
        # Arm geoms hit the world and objects but not each other (self-collision is the guard's job;
        # skipping it keeps the step cheap). contype=1/conaffinity=0 does exactly that.
        geom.contype, geom.conaffinity = 1, 0
        dark = geom.parent.name in (HAND_BODY, 'panda_link7', *FINGER_BODIES)
        geom.rgba = _DARK_RGBA if dark else _ARM_RGBA
        if geom.parent.name in FINGER_BODIES:
            geom.friction = (1.5, 0.01, 0.001)
            geom.condim = 4
    for name in ARM_JOINTS:
        joint = spec.joint(name)
        joint.armature = ARM_ARMATURE
        joint.damping = [1.0, 0.0, 0.0]  # linear viscous damping (MuJoCo 4 takes a polynomial)
    for name in ('panda_finger_joint1', 'panda_finger_joint2'):
        spec.joint(name).armature = 0.01

    # One PD actuator per commanded joint: force = kp*ctrl - kp*q - kv*qdot, so ctrl = q* + (kv/kp)*qdot*
    # gives PD with velocity feed-forward in a single actuator whose damping MuJoCo integrates implicitly.
    gains = list(zip(ARM_JOINTS, ARM_KP, ARM_KV, ARM_EFFORT)) + [(GRIPPER_JOINT, GRIPPER_KP, GRIPPER_KV, GRIPPER_FORCE)]
    for joint_name, kp, kv, effort in gains:
        actuator = spec.add_actuator(name=f'servo_{joint_name}', target=joint_name,
                                     trntype=mujoco.mjtTrn.mjTRN_JOINT)
        actuator.gaintype = mujoco.mjtGain.mjGAIN_FIXED
        actuator.biastype = mujoco.mjtBias.mjBIAS_AFFINE
        actuator.gainprm[0] = kp
        actuator.biasprm[0:3] = [0.0, -kp, -kv]
        actuator.ctrllimited = False
        actuator.forcelimited = True
        actuator.forcerange = [-effort, effort]

    world = spec.worldbody
    world.add_light(name='top', pos=[0.4, 0.0, 2.0], dir=[0.0, 0.0, -1.0], castshadow=False,
                    diffuse=[0.6, 0.6, 0.6])
    world.add_light(name='front', pos=[1.5, 0.0, 1.5], dir=[-0.7, 0.0, -0.7], castshadow=False,
                    diffuse=[0.4, 0.4, 0.4])
    world.add_geom(name='table', type=mujoco.mjtGeom.mjGEOM_BOX, size=[s / 2 for s in TABLE_SIZE],
                   pos=list(TABLE_CENTER), rgba=[0.62, 0.5, 0.38, 1.0], contype=1, conaffinity=1,
                   friction=[1.0, 0.005, 0.0001])
    tcp = spec.body(TCP_BODY)
    tcp.add_site(name='tcp', size=[0.005, 0.005, 0.005], rgba=[1, 0, 0, 0], group=3)

    if task == 'reach_around':
        obstacle = world.add_body(name=OBSTACLE, pos=[0.53, 0.0, OBSTACLE_SIZE[2] / 2])
        obstacle.add_geom(name=OBSTACLE, type=mujoco.mjtGeom.mjGEOM_BOX, size=[s / 2 for s in OBSTACLE_SIZE],
                          rgba=[0.8, 0.2, 0.15, 1.0], contype=1, conaffinity=1)
        target = world.add_body(name=TARGET, pos=[0.72, 0.0, 0.10])
        target.add_geom(name=TARGET, type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[TARGET_RADIUS, 0, 0],
                        rgba=[0.1, 0.85, 0.2, 1.0], contype=0, conaffinity=0)
    else:
        zone = world.add_body(name=ZONE, pos=[0.5, 0.15, 0.0005])
        zone.add_geom(name=ZONE, type=mujoco.mjtGeom.mjGEOM_BOX, size=[ZONE_SIZE / 2, ZONE_SIZE / 2, 0.0005],
                      rgba=[0.1, 0.75, 0.2, 1.0], contype=0, conaffinity=0)
        cube = world.add_body(name=CUBE, pos=[0.5, -0.1, CUBE_SIZE / 2])
        cube.add_freejoint(name=CUBE)
        cube.add_geom(name=CUBE, type=mujoco.mjtGeom.mjGEOM_BOX, size=[CUBE_SIZE / 2] * 3, mass=CUBE_MASS,
                      rgba=[0.15, 0.35, 0.9, 1.0], contype=1, conaffinity=1, condim=4,
                      friction=[1.5, 0.01, 0.001])

    if dynamic:
        mover = world.add_body(name=MOVING_OBSTACLE, pos=[0.5, 0.8, 0.1], mocap=True)
        mover.add_geom(name=MOVING_OBSTACLE, type=mujoco.mjtGeom.mjGEOM_BOX, size=[s / 2 for s in MOVING_OBSTACLE_SIZE],
                       rgba=[0.95, 0.6, 0.1, 1.0], contype=1, conaffinity=1)

    cameras = [SCENE_CAMERA] + ([WRIST_CAMERA] if wrist_camera else [])
    for cam in cameras:
        if cam.body is None:
            quat = _look_at_quaternion(np.array(cam.position), np.array(cam.look_at))
            parent = world
        else:
            quat = np.array(cam.quaternion_wxyz)
            parent = spec.body(cam.body)
        parent.add_camera(name=cam.name, pos=list(cam.position), quat=list(quat), fovy=cam.fovy_deg)
    return spec


def build_model(task: str, *, wrist_camera: bool = False, physics_hz: float = 500.0) -> mujoco.MjModel:
    return build_spec(task, wrist_camera=wrist_camera, physics_hz=physics_hz).compile()
