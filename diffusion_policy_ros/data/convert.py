"""rosbag2 demonstrations -> zarr episode dataset (`dp-ros dataset`).

Every stream is resampled by header stamp onto one fixed control-rate clock, so the policy
learns from observations and actions exactly as the 10 Hz controller will see them: at each
tick, the latest message not newer than the tick. Episodes with a gap longer than
`max_gap_s` in any stream are reported and skipped, never padded, because a padded gap teaches
the policy to stand still. The output uses Chi et al.'s replay-buffer layout (zarr v2,
`data/<key>`, `meta/episode_ends`), so either codebase can open it.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import yaml
import zarr
from tqdm import tqdm

from ..config_loader import ConfigError as LoaderError, from_mapping
from .bags import BagError, bag_topics, find_bags, read_messages
from .image_codec import ImageDecodeError, decode_compressed, decode_image, prepare_model_image, to_rgb8
from ..errors import UserError
from ..jsonio import json_safe

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
JOINT_STATE_TYPE = 'sensor_msgs/msg/JointState'
TRAJECTORY_TYPE = 'trajectory_msgs/msg/JointTrajectory'
BOOL_TYPE = 'std_msgs/msg/Bool'
RESERVED_KEYS = ('state', 'action', 'timestamp')
FORMAT = 'diffusion_policy_ros/episodes/v1'
NS = 1_000_000_000


class ConfigError(UserError, LoaderError):
    """A dataset config that is malformed; the message names the file and key."""


class EpisodeError(ValueError):
    """Data that cannot become a clean episode (gap, missing joint, missing topic...)."""


@dataclass(frozen=True)
class CameraConfig:
    topic: str
    key: str  # name of the zarr array and of the observation the policy sees


@dataclass(frozen=True)
class ActionConfig:
    source: Literal['joint_trajectory', 'next_joint_state'] = 'joint_trajectory'
    topic: str | None = None  # the commanded JointTrajectory topic (joint_trajectory source)
    point: Literal['first', 'due'] = 'first'  # which trajectory point is the action at a tick


@dataclass(frozen=True)
class DatasetConfig:
    cameras: tuple[CameraConfig, ...]
    joint_names: tuple[str, ...]
    action: ActionConfig = ActionConfig(source='next_joint_state')
    joint_states_topic: str = '/joint_states'
    control_rate_hz: float = 10.0
    max_gap_s: float = 0.5
    image_size: tuple[int, int] = (96, 96)  # (H, W) the model sees
    episode_split_topic: str | None = None  # std_msgs/Bool: true starts/continues, false ends

    def __post_init__(self) -> None:
        keys = [camera.key for camera in self.cameras]
        if not self.cameras:
            raise ConfigError('cameras: at least one camera is needed')
        if len(set(keys)) != len(keys) or any(key in RESERVED_KEYS or not key for key in keys):
            raise ConfigError(f'cameras: keys must be unique, non-empty and not {RESERVED_KEYS}, got {keys}')
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            raise ConfigError(f'joint_names: must be a non-empty list without repeats, got {list(self.joint_names)}')
        if not self.control_rate_hz > 0 or not self.max_gap_s > 0:
            raise ConfigError(f'control_rate_hz ({self.control_rate_hz}) and max_gap_s ({self.max_gap_s}) must be > 0')
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ConfigError(f'image_size: expected [H, W] with positive sizes, got {list(self.image_size)}')
        if self.action.source not in ('joint_trajectory', 'next_joint_state'):
            raise ConfigError(f'action.source: expected joint_trajectory or next_joint_state, got {self.action.source!r}')
        if self.action.point not in ('first', 'due'):
            raise ConfigError(f'action.point: expected first or due, got {self.action.point!r}')
        if self.action.source == 'joint_trajectory' and not self.action.topic:
            raise ConfigError('action.topic: required when action.source is joint_trajectory')


def dataset_config_from_dict(values: dict[str, Any], source: str = '<dict>') -> DatasetConfig:
    try:
        return from_mapping(DatasetConfig, values, source)
    except LoaderError as exc:
        raise ConfigError(str(exc)) from None


def load_dataset_config(path: str | Path) -> DatasetConfig:
    """Read a dataset YAML config (see config/dataset_sim.yaml)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f'{path}: cannot read dataset config: {exc}') from exc
    return dataset_config_from_dict(values or {}, str(path))


def config_to_dict(cfg: DatasetConfig) -> dict[str, Any]:
    return json_safe(dataclasses.asdict(cfg))


# ---------------------------------------------------------------------------------------------
# Reading one bag into time-stamped streams


def _stamp_text(stamp_ns: int) -> str:
    sec, nsec = divmod(int(stamp_ns), NS)
    return f'{sec}.{nsec:09d}'


@dataclass
class _Stream:
    """Messages of one role, in arrival order until `sorted_by_stamp` is called."""
    topic: str
    stamps: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    def sorted_by_stamp(self) -> tuple[np.ndarray, list[Any]]:
        stamps = np.asarray(self.stamps, dtype=np.int64)
        order = np.argsort(stamps, kind='stable')  # equal stamps keep bag order: the later wins
        return stamps[order], [self.values[i] for i in order]


@dataclass
class _BagStreams:
    cameras: dict[str, _Stream]
    joints: _Stream
    trajectory: _Stream | None  # values: (points (K,J), time_from_start ns (K,))
    split: _Stream | None  # values: bool
    last_stamp: int


def _reorder(names: Sequence[str], wanted: Sequence[str], cache: dict[tuple[str, ...], np.ndarray],
             topic: str, stamp_ns: int) -> np.ndarray:
    """Indices of ``wanted`` joints in a message's ``names``; a missing joint is an error naming it."""
    key = tuple(names)
    index = cache.get(key)
    if index is None:
        position = {name: i for i, name in enumerate(key)}
        if missing := [name for name in wanted if name not in position]:
            raise EpisodeError(f'{topic} at stamp {_stamp_text(stamp_ns)}: joint(s) {missing} missing '
                               f'(message has {list(key)})')
        index = cache[key] = np.array([position[name] for name in wanted], dtype=np.intp)
    return index


def _check_topics(bag: Path, cfg: DatasetConfig) -> dict[str, tuple[str, int]]:
    """topic -> (type, count) of the bag, after checking every configured topic is there with its type."""
    info = bag_topics(bag)
    topics = {topic: msgtype for topic, (msgtype, _count) in info.items()}
    expected: list[tuple[str, tuple[str, ...]]] = [(c.topic, (IMAGE_TYPE, COMPRESSED_TYPE)) for c in cfg.cameras]
    expected.append((cfg.joint_states_topic, (JOINT_STATE_TYPE,)))
    if cfg.action.source == 'joint_trajectory':
        expected.append((str(cfg.action.topic), (TRAJECTORY_TYPE,)))
    if cfg.episode_split_topic:
        expected.append((cfg.episode_split_topic, (BOOL_TYPE,)))
    for topic, types in expected:
        if topic not in topics:
            raise EpisodeError(f'topic {topic} is not in the bag (it has {sorted(topics)})')
        if topics[topic] not in types:
            raise EpisodeError(f'topic {topic} carries {topics[topic]}, expected {" or ".join(types)}')
    return info


def _read_bag(bag: Path, cfg: DatasetConfig, progress: bool) -> _BagStreams:
    info = _check_topics(bag, cfg)
    camera_by_topic = {c.topic: c for c in cfg.cameras}
    streams = _BagStreams(
        cameras={c.key: _Stream(c.topic) for c in cfg.cameras},
        joints=_Stream(cfg.joint_states_topic),
        trajectory=_Stream(str(cfg.action.topic)) if cfg.action.source == 'joint_trajectory' else None,
        split=_Stream(cfg.episode_split_topic) if cfg.episode_split_topic else None,
        last_stamp=0)
    wanted = list(camera_by_topic) + [cfg.joint_states_topic]
    wanted += [s.topic for s in (streams.trajectory, streams.split) if s is not None]
    joint_cache: dict[tuple[str, ...], np.ndarray] = {}
    trajectory_cache: dict[tuple[str, ...], np.ndarray] = {}
    with tqdm(total=sum(info[t][1] for t in wanted), desc=bag.name, unit='msg', leave=False,
              disable=not progress) as bar:
        for message in read_messages(bag, wanted):
            bar.update()
            topic, stamp, msg = message.topic, message.stamp_ns, message.msg
            streams.last_stamp = max(streams.last_stamp, stamp)
            if topic in camera_by_topic:
                if info[topic][0] == COMPRESSED_TYPE:
                    rgb = decode_compressed(msg, topic=topic)
                else:
                    rgb = to_rgb8(decode_image(msg, topic=topic), str(msg.encoding))
                stream = streams.cameras[camera_by_topic[topic].key]
                stream.stamps.append(stamp)
                stream.values.append(prepare_model_image(rgb, cfg.image_size))  # small: keeps memory flat
            elif topic == cfg.joint_states_topic:
                index = _reorder(msg.name, cfg.joint_names, joint_cache, topic, stamp)
                position = np.asarray(msg.position, dtype=np.float64)
                if position.size != len(msg.name):
                    raise EpisodeError(f'{topic} at stamp {_stamp_text(stamp)}: {len(msg.name)} names but '
                                       f'{position.size} positions')
                streams.joints.stamps.append(stamp)
                streams.joints.values.append(position[index])
            elif streams.trajectory is not None and topic == streams.trajectory.topic:
                index = _reorder(msg.joint_names, cfg.joint_names, trajectory_cache, topic, stamp)
                if not msg.points:
                    raise EpisodeError(f'{topic} at stamp {_stamp_text(stamp)}: trajectory has no points')
                try:
                    points = np.stack([np.asarray(p.positions, dtype=np.float64)[index] for p in msg.points])
                except IndexError:
                    raise EpisodeError(f'{topic} at stamp {_stamp_text(stamp)}: a point has fewer positions '
                                       f'than joint_names') from None
                due = np.array([int(p.time_from_start.sec) * NS + int(p.time_from_start.nanosec)
                                for p in msg.points], dtype=np.int64)
                streams.trajectory.stamps.append(stamp)
                streams.trajectory.values.append((points, due))
            elif streams.split is not None and topic == streams.split.topic:
                streams.split.stamps.append(stamp)
                streams.split.values.append(bool(msg.data))
    return streams


# ---------------------------------------------------------------------------------------------
# Episodes: split, resample, action labels


@dataclass
class Episode:
    """One resampled episode, ready to append to the dataset."""
    images: dict[str, np.ndarray]  # key -> (N, h, w, 3) uint8
    state: np.ndarray  # (N, J) float32
    action: np.ndarray  # (N, J) float32
    timestamp: np.ndarray  # (N,) float64 seconds since the first tick
    start_ns: int  # stamp of the first tick


def episode_windows(split: _Stream | None, last_stamp: int) -> list[tuple[int, int]]:
    """[start, end] stamp ranges: the whole bag without a split topic, else true..false spans."""
    if split is None:
        return [(np.iinfo(np.int64).min, last_stamp)]
    stamps, values = split.sorted_by_stamp()
    windows: list[tuple[int, int]] = []
    start: int | None = None
    for stamp, value in zip(stamps.tolist(), values):
        if value and start is None:
            start = stamp
        elif not value and start is not None:
            windows.append((start, stamp))
            start = None
    if start is not None:  # still recording when the bag ended
        windows.append((start, last_stamp))
    return windows


def resample_episode(streams: _BagStreams, cfg: DatasetConfig, window: tuple[int, int]) -> Episode:
    """Sample every stream at the control-rate ticks inside ``window`` (see module doc)."""
    lo, hi = window
    named: dict[tuple[str, str], tuple[str, np.ndarray, list[Any]]] = {}  # (role, key): a camera key
    # may be any name, so roles are tuples that cannot collide with it
    roles = [(('camera', key), s) for key, s in streams.cameras.items()] + [(('state', ''), streams.joints)]
    if streams.trajectory is not None:
        roles.append((('trajectory', ''), streams.trajectory))
    for role, stream in roles:
        stamps, values = stream.sorted_by_stamp()
        inside = (stamps >= lo) & (stamps <= hi)
        if not inside.any():
            raise EpisodeError(f'no {stream.topic} messages between stamps {_stamp_text(max(lo, 0))} '
                               f'and {_stamp_text(hi)}')
        named[role] = (stream.topic, stamps[inside], [v for v, keep in zip(values, inside) if keep])
    t0 = max(int(stamps[0]) for _t, stamps, _v in named.values())
    t_end = max(int(stamps[-1]) for _t, stamps, _v in named.values())
    period_ns = NS / cfg.control_rate_hz
    n_ticks = int(np.floor((t_end - t0) / period_ns + 1e-9)) + 1
    ticks = t0 + np.rint(np.arange(n_ticks) * period_ns).astype(np.int64)
    max_gap_ns = int(round(cfg.max_gap_s * NS))
    picks: dict[tuple[str, str], np.ndarray] = {}
    for role, (topic, stamps, _values) in named.items():
        first = int(np.searchsorted(stamps, t0, side='right')) - 1
        used = np.append(stamps[first:], t_end)  # the tail up to the last tick counts as a gap too
        gaps = np.diff(used)
        worst = int(np.argmax(gaps)) if gaps.size else 0
        if gaps.size and gaps[worst] > max_gap_ns:
            raise EpisodeError(f'gap of {gaps[worst] / NS:.3f} s in {topic} after stamp '
                               f'{_stamp_text(used[worst])} exceeds max_gap_s={cfg.max_gap_s}')
        picks[role] = np.searchsorted(stamps, ticks, side='right') - 1
    state = np.stack([named['state', ''][2][i] for i in picks['state', '']])
    if cfg.action.source == 'next_joint_state':
        action = np.concatenate([state[1:], state[-1:]])  # the last tick holds position
    else:
        _topic, traj_stamps, trajectories = named['trajectory', '']
        rows = []
        for tick, i in zip(ticks.tolist(), picks['trajectory', ''].tolist()):
            points, from_start = trajectories[i]
            if cfg.action.point == 'first':
                rows.append(points[0])
            else:  # the next point the controller is heading to at this tick; the last once all passed
                k = int(np.searchsorted(traj_stamps[i] + from_start, tick, side='right'))
                rows.append(points[min(k, len(points) - 1)])
        action = np.stack(rows)
    images = {key: np.stack([named['camera', key][2][i] for i in picks['camera', key]]) for key in streams.cameras}
    return Episode(images=images, state=state.astype(np.float32), action=action.astype(np.float32),
                   timestamp=(ticks - t0) / NS, start_ns=t0)


# ---------------------------------------------------------------------------------------------
# Writing the dataset


class EpisodeDatasetWriter:
    """Appends episodes to a zarr v2 group in Chi et al.'s replay-buffer layout."""

    # Blosc-lz4 decodes at GB/s, so loading the whole dataset into memory stays fast.
    COMPRESSOR = numcodecs.Blosc(cname='lz4', clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    CHUNK_BYTES = 2 << 20

    def __init__(self, out: Path, cfg: DatasetConfig) -> None:
        self.root = zarr.open_group(str(out), mode='w', zarr_format=2)
        data = self.root.require_group('data')
        height, width = cfg.image_size
        n_joints = len(cfg.joint_names)
        frame_chunk = max(1, self.CHUNK_BYTES // (height * width * 3))
        specs: dict[str, tuple[tuple[int, ...], str, int]] = {
            c.key: ((height, width, 3), 'uint8', frame_chunk) for c in cfg.cameras}
        specs.update(state=((n_joints,), 'float32', 4096), action=((n_joints,), 'float32', 4096),
                     timestamp=((), 'float64', 4096))
        self.arrays = {key: data.create_array(key, shape=(0, *shape), dtype=dtype, chunks=(chunk, *shape),
                                              compressors=self.COMPRESSOR)
                       for key, (shape, dtype, chunk) in specs.items()}
        self.episode_ends: list[int] = []

    def append(self, episode: Episode) -> None:
        columns = dict(episode.images, state=episode.state, action=episode.action, timestamp=episode.timestamp)
        for key, values in columns.items():
            self.arrays[key].append(values, axis=0)
        self.episode_ends.append((self.episode_ends[-1] if self.episode_ends else 0) + len(episode.state))

    def finish(self, attrs: dict[str, Any]) -> None:
        meta = self.root.require_group('meta')
        meta.create_array('episode_ends', data=np.asarray(self.episode_ends, dtype=np.int64),
                          chunks=(max(1, len(self.episode_ends)),), overwrite=True)
        self.root.attrs.update(json_safe(attrs))


@dataclass
class ConversionSummary:
    out: Path
    bags: int
    episodes: int
    frames: int
    skipped: list[tuple[str, str]]  # (bag, reason)

    def text(self) -> str:
        """The skips, one line per reason (the same missing topic in 40 bags is one line), then a summary."""
        by_reason: dict[str, list[str]] = {}
        for bag, reason in self.skipped:
            by_reason.setdefault(reason, []).append(bag)
        lines = [f'  skipped {bags[0]}: {reason}' if len(bags) == 1 else
                 f'  skipped {len(bags)} bags ({bags[0]}, ...): {reason}' for reason, bags in by_reason.items()]
        if self.episodes:
            lines.append(f'wrote {self.out}: {self.episodes} episode(s), {self.frames} frame(s) from '
                         f'{self.bags} bag(s); {len(self.skipped)} skipped')
        else:
            lines.append(f'nothing converted from {self.bags} bag(s) ({len(self.skipped)} skipped, reasons above); '
                         f'{self.out} was not written')
        return '\n'.join(lines)


def convert_bags(paths: Iterable[str | Path], cfg: DatasetConfig, out: str | Path, *, overwrite: bool = False,
                 progress: bool = True) -> ConversionSummary:
    """Convert bags (or directories of bags) into one episode dataset at ``out``.

    A bag that cannot be read, or an episode that is not clean, is listed in the summary (and
    the dataset's `skipped` attribute) with its reason; everything else still converts. The
    dataset is written beside ``out`` and moved into place at the end, so an interrupted run
    never leaves a half-written dataset under the final name.
    """
    out = Path(out)
    bags = find_bags(paths)
    if out.exists() and not overwrite:
        raise FileExistsError(f'{out} exists; pass overwrite=True (--overwrite) to replace it')
    partial = out.with_name(out.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)
    writer = EpisodeDatasetWriter(partial, cfg)
    skipped: list[tuple[str, str]] = []
    episodes_meta: list[dict[str, Any]] = []
    for bag in tqdm(bags, desc='bags', unit='bag', disable=not progress):
        try:
            streams = _read_bag(bag, cfg, progress)
        except (BagError, EpisodeError, ImageDecodeError) as exc:
            skipped.append((str(bag), str(exc)))
            continue
        windows = episode_windows(streams.split, streams.last_stamp)
        if not windows:
            skipped.append((str(bag), f'no episode started on {cfg.episode_split_topic} (no true marker)'))
        for number, window in enumerate(windows):
            try:
                episode = resample_episode(streams, cfg, window)
            except EpisodeError as exc:
                label = f'episode {number} ' if streams.split is not None else ''
                skipped.append((str(bag), f'{label}{exc}'))
                continue
            writer.append(episode)
            episodes_meta.append({'bag': str(bag), 'episode_in_bag': number, 'start_stamp_ns': episode.start_ns,
                                  'frames': len(episode.state)})
    frames = writer.episode_ends[-1] if writer.episode_ends else 0
    summary = ConversionSummary(out=out, bags=len(bags), episodes=len(writer.episode_ends), frames=frames,
                                skipped=skipped)
    if not writer.episode_ends:  # an empty dataset would only block the corrected rerun (it exists)
        shutil.rmtree(partial, ignore_errors=True)
        print(summary.text())
        return summary
    writer.finish({
        'format': FORMAT,
        'joint_names': list(cfg.joint_names),
        'camera_keys': [c.key for c in cfg.cameras],
        'control_rate_hz': cfg.control_rate_hz,
        'image_size': list(cfg.image_size),
        'action': dataclasses.asdict(cfg.action),
        'source_bags': [str(b) for b in bags],
        'episodes': episodes_meta,
        'skipped': [{'bag': bag, 'reason': reason} for bag, reason in skipped],
        'config': config_to_dict(cfg),
    })
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    print(summary.text())
    return summary


# ---------------------------------------------------------------------------------------------
# CLI adapter: `dp-ros dataset BAG_OR_DIR... --config CFG --out DATASET`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', nargs='+', metavar='BAG_OR_DIR',
                        help='rosbag2 directories / .mcap / .db3 files, or directories to scan for them')
    parser.add_argument('--config', required=True, help='dataset YAML config (e.g. config/dataset_sim.yaml)')
    parser.add_argument('--out', required=True, help='zarr dataset directory to write')
    parser.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


EXIT_CODES = ('exit codes: 0 at least one episode converted (skipped bags are listed with their reasons); '
              '1 none did, and nothing was written; 2 bad input (config, bag path, --out exists), named in one line')


def run(args: argparse.Namespace) -> int:
    cfg = load_dataset_config(args.config)  # ConfigError, BagError, FileExistsError: one line from the CLI
    summary = convert_bags(args.bags, cfg, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    return 0 if summary.episodes > 0 else 1
