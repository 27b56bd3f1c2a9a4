"""Bag-building fixtures for the dataset tests: small demonstrations whose every value is known.

Each message's content encodes its own index, so a test can tell exactly which message the
resampler picked at each tick.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffusion_policy_ros.data.bags import BagWriter
from diffusion_policy_ros.data.convert import ActionConfig, CameraConfig, DatasetConfig

SEC = 1_000_000_000
MS = 1_000_000
T0 = 100 * SEC  # bags start at a non-zero time, like a real clock
ARM = ('j1', 'j2', 'j3')
# recorded order differs from the config's, with joints the config does not want
RECORDED_JOINTS = ('finger', 'j3', 'extra', 'j1', 'j2')
RAW_HW = (16, 20)
MODEL_HW = (8, 10)


def front_rgb(i: int) -> np.ndarray:
    """rgb8 camera frame i (constant colour, so resizing keeps it exactly)."""
    return np.broadcast_to(np.array([i % 256, 100, 7], np.uint8), (*RAW_HW, 3)).copy()


def wrist_rgb(i: int) -> np.ndarray:
    """What the bgr8 camera's frame i shows, in RGB order."""
    return np.broadcast_to(np.array([200, i % 256, 30], np.uint8), (*RAW_HW, 3)).copy()


def joint_positions(stamp_ns: int) -> dict[str, float]:
    t = (stamp_ns - T0) / SEC
    return {'j1': 1.0 + t, 'j2': 2.0 + t, 'j3': 3.0 + t, 'finger': 4.0 + t, 'extra': -1.0}


def command_points(m: int, k_points: int) -> np.ndarray:
    """(K, 3) points of command message m, columns in ARM order."""
    return np.array([[100.0 * (j + 1) + m + 0.1 * k for j in range(3)] for k in range(k_points)])


@dataclass
class DemoSpec:
    """Stamps (ns) of each stream; defaults give a 2 s demo with four different rates."""
    front: list[int] = field(default_factory=lambda: [T0 + i * 50 * MS for i in range(40)])  # 20 Hz
    wrist: list[int] = field(default_factory=lambda: [T0 + 50 * MS + i * 200 * MS for i in range(10)])  # 5 Hz
    joints: list[int] = field(default_factory=lambda: [T0 + 10 * MS + i * 20 * MS for i in range(100)])  # 50 Hz
    commands: list[int] = field(default_factory=lambda: [T0 + 20 * MS + i * 400 * MS for i in range(5)])  # 2.5 Hz
    command_points: int = 3
    command_dt: float = 0.1
    split: list[tuple[int, bool]] = field(default_factory=list)
    joint_names: tuple[str, ...] = RECORDED_JOINTS


def write_demo_bag(path: Path, spec: DemoSpec | None = None, storage: str = 'mcap') -> Path:
    spec = spec or DemoSpec()
    with BagWriter(path, storage) as writer:
        for i, stamp in enumerate(spec.front):
            writer.write_image('/front/image_raw', stamp, front_rgb(i))
        for i, stamp in enumerate(spec.wrist):
            writer.write_image('/wrist/image_raw', stamp, wrist_rgb(i)[:, :, ::-1], encoding='bgr8', step=64)
        for stamp in spec.joints:
            values = joint_positions(stamp)
            writer.write_joint_state('/joint_states', stamp, spec.joint_names, [values[n] for n in spec.joint_names])
        for m, stamp in enumerate(spec.commands):
            # the command names its joints in another order than the config, too
            points = command_points(m, spec.command_points)[:, [2, 0, 1]]
            writer.write_joint_trajectory('/cmd', stamp, ['j3', 'j1', 'j2'], points, spec.command_dt)
        for stamp, value in spec.split:
            writer.write_bool('/recording', stamp, value)
    return path


def demo_config(**overrides) -> DatasetConfig:
    values = dict(
        cameras=(CameraConfig('/front/image_raw', 'front'), CameraConfig('/wrist/image_raw', 'wrist')),
        joint_names=ARM, joint_states_topic='/joint_states',
        action=ActionConfig(source='joint_trajectory', topic='/cmd', point='first'),
        control_rate_hz=10.0, max_gap_s=0.5, image_size=MODEL_HW)
    values.update(overrides)
    return DatasetConfig(**values)


def latest(stamps: list[int], tick: int) -> int:
    """Brute-force oracle: index of the latest stamp not newer than tick."""
    return max(i for i, s in enumerate(stamps) if s <= tick)
