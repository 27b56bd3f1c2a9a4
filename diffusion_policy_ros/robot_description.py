"""Where the robot model comes from: one place for the URDF/SRDF the simulator and collision guard share.

The default robot is the Franka Panda of the `example-robot-data` pip package, so everything runs
offline. A real robot passes its own `robot_description` string (URDF) instead.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ARM_JOINTS: tuple[str, ...] = tuple(f'panda_joint{i}' for i in range(1, 8))
GRIPPER_JOINT = 'panda_finger_joint1'
# The joints the policy commands and the sim publishes, in this order.
PANDA_JOINTS: tuple[str, ...] = (*ARM_JOINTS, GRIPPER_JOINT)
# A comfortable, collision-free start pose (the SRDF's "default" group state, gripper open).
PANDA_HOME: tuple[float, ...] = (0.0, -0.785398, 0.0, -2.35619, 0.0, 1.5707, 0.785398, 0.04)


@dataclass(frozen=True)
class RobotDescription:
    urdf_path: Path
    srdf_path: Path | None
    package_root: Path  # the folder that `package://` URIs are resolved against

    def urdf_text(self, resolve_package_uris: bool = True) -> str:
        """The URDF as a string; `package://` mesh URIs become absolute paths when asked."""
        text = self.urdf_path.read_text()
        if resolve_package_uris:
            text = re.sub(r'package://([^/"]+)/', lambda m: f'{self.package_root / m.group(1)}/', text)
        return text

    def srdf_text(self) -> str | None:
        return self.srdf_path.read_text() if self.srdf_path else None


def _example_robot_data_share() -> Path:
    candidates = [Path(p) / 'cmeel.prefix' / 'share' for p in sys.path if p]
    candidates.append(Path(sys.prefix) / 'lib' / f'python{sys.version_info.major}.{sys.version_info.minor}'
                      / 'site-packages' / 'cmeel.prefix' / 'share')
    for share in candidates:
        if (share / 'example-robot-data' / 'robots' / 'panda_description').is_dir():
            return share
    raise FileNotFoundError(
        'Panda description not found: install the pip package example-robot-data (see requirements.txt)')


def panda_description() -> RobotDescription:
    share = _example_robot_data_share()
    root = share / 'example-robot-data' / 'robots' / 'panda_description'
    return RobotDescription(urdf_path=root / 'urdf' / 'panda.urdf', srdf_path=root / 'srdf' / 'panda.srdf',
                            package_root=share)
