"""`dp-ros demos`: record scripted expert demonstrations as rosbag2, one bag per episode.

The bags carry what a real Panda setup records (`/camera/color/image_raw` sensor_msgs/Image rgb8,
`/joint_states`, the commanded `/arm_controller/joint_trajectory`) with header stamps in sim time,
so `dp-ros dataset` converts them like any robot bag. Only successful episodes are kept: a
failed attempt's bag is deleted and its seed skipped (listed in `demos.json` with the kept ones).
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .arm import SimArm, SimConfig
from .experts import ExpertConfig, ScriptedExpert
from .model import TASKS
from .rollout import rollout
from ..jsonio import write_json
from ..errors import UserError

IMAGE_TOPIC = '/camera/color/image_raw'
WRIST_IMAGE_TOPIC = '/wrist_camera/color/image_raw'
JOINT_STATES_TOPIC = '/joint_states'
COMMAND_TOPIC = '/arm_controller/joint_trajectory'
CAMERA_TOPICS = {'scene': IMAGE_TOPIC, 'wrist': WRIST_IMAGE_TOPIC}
CAMERA_FRAMES = {'scene': 'scene_camera_optical_frame', 'wrist': 'wrist_camera_optical_frame'}


class DemoWriter(Protocol):
    """What `record_episode` needs of a bag writer (`data.bags.BagWriter` provides it)."""

    def write_image(self, topic: str, stamp_ns: int, rgb: np.ndarray, frame_id: str = ...) -> None: ...
    def write_joint_state(self, topic: str, stamp_ns: int, names: Any, positions: Any,
                          velocities: Any = ...) -> None: ...
    def write_joint_trajectory(self, topic: str, stamp_ns: int, joint_names: Any, points: np.ndarray,
                               dt: float) -> None: ...


@dataclass
class EpisodeRecord:
    task: str
    seed: int
    success: bool
    duration_s: float  # sim time
    wall_s: float
    images: int
    joint_states: int
    commands: int
    side: str | None = None  # reach_around: the side the expert took
    info: dict[str, Any] = field(default_factory=dict)


def record_episode(task: str, seed: int, writer: DemoWriter, *, cfg: SimConfig | None = None,
                   arm: SimArm | None = None, expert_cfg: ExpertConfig | None = None) -> EpisodeRecord:
    """Run the expert on ``task``/``seed`` and write its observations and commands to ``writer``.

    Pass ``arm`` to reuse one simulator (and its renderer) across episodes.
    """
    cfg = cfg or SimConfig(task=task, seed=seed)
    arm = arm or SimArm(cfg)
    arm.reset(task=task, seed=seed)
    expert = ScriptedExpert(arm, expert_cfg)
    cameras = arm.cameras

    def on_joint_state(stamp_ns: int, names: tuple[str, ...], position: np.ndarray, velocity: np.ndarray) -> None:
        writer.write_joint_state(JOINT_STATES_TOPIC, stamp_ns, names, position, velocity)

    def on_image(stamp_ns: int, camera: str, rgb: np.ndarray) -> None:
        writer.write_image(CAMERA_TOPICS[camera], stamp_ns, rgb, frame_id=CAMERA_FRAMES[camera])

    def on_command(stamp_ns: int, names: tuple[str, ...], points: np.ndarray, dt: float) -> None:
        writer.write_joint_trajectory(COMMAND_TOPIC, stamp_ns, names, points, dt)

    start = time.perf_counter()
    result = rollout(arm, expert.act, on_joint_state=on_joint_state, on_image=on_image, on_command=on_command,
                     cameras=cameras)
    info = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.status.info.items()}
    return EpisodeRecord(task, seed, result.status.success, result.duration, time.perf_counter() - start,
                         result.images, result.joint_states, result.commands, expert.side, info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--task', required=True, choices=TASKS, help='sim task the scripted expert performs')
    parser.add_argument('--episodes', type=int, required=True, help='successful episodes to write')
    parser.add_argument('--out', type=Path, required=True, help='output directory (episode_0000/, ...)')
    parser.add_argument('--seed', type=int, default=0, help='first seed; each attempt takes the next one')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='rosbag2 storage plugin format')
    parser.add_argument('--wrist-camera', action='store_true', help=f'also record {WRIST_IMAGE_TOPIC}')
    parser.add_argument('--camera-hz', type=float, default=10.0, help='camera frames per sim second')
    parser.add_argument('--joint-state-hz', type=float, default=100.0, help='JointState messages per sim second')
    parser.add_argument('--image-size', type=int, nargs=2, default=(96, 96), metavar=('H', 'W'),
                        help='camera image height and width in pixels')
    parser.add_argument('--max-attempts', type=int, default=None,
                        help='give up after this many attempts (default: 2 x episodes + 10)')


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.bags import BagWriter

    if args.episodes < 1:
        raise UserError('--episodes must be >= 1')
    out: Path = args.out
    existing = sorted(out.glob('episode_*')) if out.exists() else []
    if existing:
        raise UserError(f'{out} already holds {len(existing)} episode(s); choose an empty --out')
    out.mkdir(parents=True, exist_ok=True)
    cfg = SimConfig(task=args.task, seed=args.seed, wrist_camera=args.wrist_camera, camera_hz=args.camera_hz,
                    joint_state_hz=args.joint_state_hz, camera_height=args.image_size[0],
                    camera_width=args.image_size[1])
    arm = SimArm(cfg)
    max_attempts = args.max_attempts or 2 * args.episodes + 10
    kept: list[EpisodeRecord] = []
    failed: list[EpisodeRecord] = []
    seed = args.seed
    progress = tqdm(total=args.episodes, desc=f'demos {args.task}', unit='episode')
    bag_dir = out / 'episode_0000'
    try:
        while len(kept) < args.episodes and len(kept) + len(failed) < max_attempts:
            # Written in place (rosbags names the storage file after its directory); a failed
            # attempt is deleted and its index reused.
            bag_dir = out / f'episode_{len(kept):04d}'
            with BagWriter(bag_dir, storage=args.storage) as writer:
                record = record_episode(args.task, seed, writer, cfg=cfg, arm=arm)
            if record.success:
                kept.append(record)
                progress.update(1)
            else:
                failed.append(record)
                shutil.rmtree(bag_dir)
            progress.set_postfix(retried=len(failed), sim_s=f'{record.duration_s:.1f}', wall_s=f'{record.wall_s:.2f}')
            seed += 1
    except BaseException:
        shutil.rmtree(bag_dir, ignore_errors=True)  # never leave a half-written episode behind
        raise
    finally:
        progress.close()
        arm.close()
    summary = {
        'task': args.task, 'episodes': len(kept), 'retried': len(failed), 'first_seed': args.seed,
        'storage': args.storage,
        'topics': {'image': IMAGE_TOPIC, 'joint_states': JOINT_STATES_TOPIC, 'command': COMMAND_TOPIC,
                   **({'wrist_image': WRIST_IMAGE_TOPIC} if args.wrist_camera else {})},
        'rates_hz': {'image': cfg.camera_hz, 'joint_states': cfg.joint_state_hz, 'command': cfg.control_hz},
        'kept': [asdict(r) for r in kept], 'failed': [asdict(r) for r in failed],
    }
    if args.task == 'reach_around':
        summary['sides'] = {side: sum(r.side == side for r in kept) for side in ('left', 'right')}
    write_json(out / 'demos.json', summary)
    sides = ' (' + ', '.join(f'{n} {side}' for side, n in summary['sides'].items()) + ')' if 'sides' in summary else ''
    print(f'[demos] {args.task}: {len(kept)} of {args.episodes} episodes recorded{sides}, {len(failed)} failed '
          f'attempts discarded; wrote {out}/episode_*/ and {out / "demos.json"}')
    if len(kept) < args.episodes:
        print(f'dp-ros demos: only {len(kept)} of {args.episodes} episodes succeeded in {max_attempts} attempts')
        return 1
    return 0
