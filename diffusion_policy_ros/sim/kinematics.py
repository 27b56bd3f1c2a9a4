"""Inverse kinematics on the simulator's own model (MuJoCo Jacobians, damped least squares).

Used to place the arm at a task's start pose and by the scripted experts. It runs on a scratch
`MjData`, so solving never disturbs the simulation; warm-started from the previous solution it
converges in a few iterations, which is what keeps 10 Hz expert streaming cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from ..robot_description import ARM_JOINTS
from .model import TCP_BODY

# Preferred posture for the null space: elbow up, wrist centred (the SRDF's "default" pose).
REST_POSTURE = np.array([0.0, -0.785398, 0.0, -2.35619, 0.0, 1.5707, 0.785398])


def tcp_down_rotation(yaw: float) -> np.ndarray:
    """TCP frame pointing straight down, turned by ``yaw`` about world z (yaw 0: fingers along y)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


@dataclass
class IKResult:
    q: np.ndarray  # (7,) arm joints
    position_error: float  # m
    rotation_error: float  # rad
    converged: bool


class ArmIK:
    """Damped-least-squares IK of the TCP for the 7 arm joints of a compiled sim model."""

    def __init__(self, model: mujoco.MjModel, *, damping: float = 1e-2, nullspace_gain: float = 0.05,
                 max_step: float = 0.2) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.body_id = model.body(TCP_BODY).id
        self.qpos_adr = np.array([model.joint(n).qposadr[0] for n in ARM_JOINTS])
        self.dof_adr = np.array([model.joint(n).dofadr[0] for n in ARM_JOINTS])
        self.lower = np.array([model.joint(n).range[0] for n in ARM_JOINTS])
        self.upper = np.array([model.joint(n).range[1] for n in ARM_JOINTS])
        self.damping = damping
        self.nullspace_gain = nullspace_gain
        self.max_step = max_step
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and rotation (3, 3) for arm joints ``q``."""
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.xpos[self.body_id].copy(), self.data.xmat[self.body_id].reshape(3, 3).copy()

    def solve(self, q_init: np.ndarray, position: np.ndarray, rotation: np.ndarray, *, iterations: int = 100,
              position_tol: float = 1e-4, rotation_tol: float = 1e-3) -> IKResult:
        q = np.clip(np.asarray(q_init, dtype=float).copy(), self.lower, self.upper)
        target_quat = np.zeros(4)
        mujoco.mju_mat2Quat(target_quat, np.ascontiguousarray(rotation).reshape(-1))
        quat, quat_inv, quat_err, rot_err = np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(3)
        for _ in range(iterations + 1):
            self.data.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(self.model, self.data)
            mujoco.mj_comPos(self.model, self.data)
            pos_err = position - self.data.xpos[self.body_id]
            mujoco.mju_mat2Quat(quat, self.data.xmat[self.body_id])
            mujoco.mju_negQuat(quat_inv, quat)
            mujoco.mju_mulQuat(quat_err, target_quat, quat_inv)
            mujoco.mju_quat2Vel(rot_err, quat_err, 1.0)  # world-frame rotation vector
            pos_norm, rot_norm = float(np.linalg.norm(pos_err)), float(np.linalg.norm(rot_err))
            if pos_norm < position_tol and rot_norm < rotation_tol:
                return IKResult(q, pos_norm, rot_norm, True)
            mujoco.mj_jacBody(self.model, self.data, self._jacp, self._jacr, self.body_id)
            jac = np.vstack([self._jacp[:, self.dof_adr], self._jacr[:, self.dof_adr]])
            err = np.concatenate([pos_err, rot_err])
            jjt = jac @ jac.T + self.damping**2 * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            # Null space pull towards the rest posture keeps the elbow up and away from limits.
            pinv = jac.T @ np.linalg.solve(jjt, np.eye(6))
            dq += (np.eye(7) - pinv @ jac) @ (self.nullspace_gain * (REST_POSTURE - q))
            scale = np.max(np.abs(dq)) / self.max_step
            if scale > 1.0:
                dq /= scale
            q = np.clip(q + dq, self.lower, self.upper)
        return IKResult(q, pos_norm, rot_norm, False)
