"""rosbag2 reading and writing (MCAP and sqlite3) through `rosbags`, so no ROS install is needed.

The simulator records demonstrations with `BagWriter`, tests build their fixtures with it, and
dataset conversion reads any rosbag2 with `read_messages`. Every failure to read a bag becomes a
`BagError` that names the bag, so a batch conversion can report it and go on with the rest.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from .image_codec import ENCODINGS, encode_rgb8
from ..errors import UserError

# The distro of the rclpy wheels this project runs on; older rosbags lack it.
TYPESTORE: Typestore = get_typestore(getattr(Stores, 'ROS2_KILTED', Stores.ROS2_JAZZY))

_STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


class BagError(UserError, RuntimeError):
    """A bag that is missing, truncated or corrupt; the message names the bag."""


class BagMessage(NamedTuple):
    topic: str
    msgtype: str
    stamp_ns: int  # header.stamp if the message has a non-zero one, else the bag's log time
    msg: Any


def msg_class(msgtype: str) -> type:
    """The rosbags dataclass for a ROS type name such as 'sensor_msgs/msg/Image'."""
    try:
        return TYPESTORE.types[msgtype]
    except KeyError:
        raise KeyError(f'unknown message type {msgtype!r}') from None


def _time(stamp_ns: int) -> Any:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return msg_class('builtin_interfaces/msg/Time')(sec=sec, nanosec=nanosec)


def _duration(seconds: float) -> Any:
    sec, nanosec = divmod(int(round(seconds * 1e9)), 1_000_000_000)
    return msg_class('builtin_interfaces/msg/Duration')(sec=sec, nanosec=nanosec)


def header(stamp_ns: int, frame_id: str = '') -> Any:
    return msg_class('std_msgs/msg/Header')(stamp=_time(stamp_ns), frame_id=frame_id)


def stamp_ns_of(msg: Any) -> int | None:
    """Header stamp in ns, or None for header-less messages."""
    stamp = getattr(getattr(msg, 'header', None), 'stamp', None)
    if stamp is None:
        return None
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_msg(stamp_ns: int, image: np.ndarray, *, encoding: str = 'rgb8', frame_id: str = 'camera',
              step: int | None = None, is_bigendian: bool = False) -> Any:
    """A rosbags `sensor_msgs/Image` holding ``image`` (H, W[, C]) as-is in ``encoding``.

    ``step`` larger than the packed row adds zero padding at each row end (as some drivers do).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f'image_msg: unknown encoding {encoding!r}')
    height, width = image.shape[:2]
    wire = image.astype(image.dtype.newbyteorder('>' if is_bigendian else '<'), copy=False)
    rows = np.ascontiguousarray(wire).view(np.uint8).reshape(height, -1)
    step = rows.shape[1] if step is None else int(step)
    if step > rows.shape[1]:
        rows = np.pad(rows, ((0, 0), (0, step - rows.shape[1])))
    return msg_class('sensor_msgs/msg/Image')(
        header=header(stamp_ns, frame_id), height=int(height), width=int(width), encoding=encoding,
        is_bigendian=int(is_bigendian), step=step, data=rows.reshape(-1).copy())


class BagWriter:
    """Write a rosbag2 directory (one topic = one connection, created on first use).

    The log time of each message is its header stamp, so bag order and stamp order agree.
    """

    def __init__(self, path: str | Path, storage: Literal['mcap', 'sqlite3'] = 'mcap') -> None:
        if storage not in _STORAGES:
            raise ValueError(f'BagWriter: storage must be one of {sorted(_STORAGES)}, got {storage!r}')
        self.path = Path(path)
        self._writer = Writer(self.path, version=9, storage_plugin=_STORAGES[storage])
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._writer.close()

    def write(self, topic: str, msgtype: str, msg: Any, stamp_ns: int) -> None:
        """Serialise any rosbags message of type ``msgtype`` and log it at ``stamp_ns``."""
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            self._connections[topic] = connection
        elif connection.msgtype != msgtype:
            raise ValueError(f'topic {topic!r} already carries {connection.msgtype}, not {msgtype}')
        self._writer.write(connection, int(stamp_ns), TYPESTORE.serialize_cdr(msg, msgtype))

    def write_image(self, topic: str, stamp_ns: int, rgb: np.ndarray, frame_id: str = 'camera', *,
                    encoding: str = 'rgb8', step: int | None = None, is_bigendian: bool = False) -> None:
        """An (H, W, 3) uint8 RGB frame (the simulator's renderer output); other ``encoding``s take
        ``rgb`` as the pixel array already in that encoding (bgr8 order, uint16 mono, ...)."""
        if encoding == 'rgb8' and step is None:
            fields = encode_rgb8(rgb)
            msg = msg_class('sensor_msgs/msg/Image')(
                header=header(stamp_ns, frame_id), height=fields['height'], width=fields['width'],
                encoding='rgb8', is_bigendian=0, step=fields['step'],
                data=np.frombuffer(fields['data'], dtype=np.uint8))
        else:
            msg = image_msg(stamp_ns, rgb, encoding=encoding, frame_id=frame_id, step=step,
                            is_bigendian=is_bigendian)
        self.write(topic, 'sensor_msgs/msg/Image', msg, stamp_ns)

    def write_compressed_image(self, topic: str, stamp_ns: int, rgb: np.ndarray,
                               fmt: Literal['jpeg', 'png'] = 'png', frame_id: str = 'camera') -> None:
        """An RGB frame as `sensor_msgs/CompressedImage` (what image_transport's compressed plugin records)."""
        import io

        from PIL import Image as PILImage
        buffer = io.BytesIO()
        PILImage.fromarray(rgb).save(buffer, format='JPEG' if fmt == 'jpeg' else 'PNG')
        msg = msg_class('sensor_msgs/msg/CompressedImage')(
            header=header(stamp_ns, frame_id), format=f'rgb8; {fmt} compressed rgb8',
            data=np.frombuffer(buffer.getvalue(), dtype=np.uint8))
        self.write(topic, 'sensor_msgs/msg/CompressedImage', msg, stamp_ns)

    def write_joint_state(self, topic: str, stamp_ns: int, names: Sequence[str], positions: Iterable[float],
                          velocities: Iterable[float] | None = None) -> None:
        position = np.asarray(list(positions), dtype=np.float64)
        if len(names) != position.size:
            raise ValueError(f'{topic}: {len(names)} joint names but {position.size} positions')
        velocity = np.asarray(list(velocities), dtype=np.float64) if velocities is not None else np.zeros(0)
        msg = msg_class('sensor_msgs/msg/JointState')(
            header=header(stamp_ns), name=list(names), position=position, velocity=velocity,
            effort=np.zeros(0))
        self.write(topic, 'sensor_msgs/msg/JointState', msg, stamp_ns)

    def write_joint_trajectory(self, topic: str, stamp_ns: int, joint_names: Sequence[str], points: np.ndarray,
                               dt: float, *, start_s: float | None = None) -> None:
        """Points (K, J) due at ``start_s + k * dt`` after the stamp (``start_s`` defaults to ``dt``:
        the first point lies one control period ahead, as a controller expects)."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if points.shape[1] != len(joint_names):
            raise ValueError(f'{topic}: {len(joint_names)} joint names but points have {points.shape[1]} columns')
        start = dt if start_s is None else start_s
        point_cls = msg_class('trajectory_msgs/msg/JointTrajectoryPoint')
        empty = np.zeros(0)
        msg = msg_class('trajectory_msgs/msg/JointTrajectory')(
            header=header(stamp_ns), joint_names=list(joint_names),
            points=[point_cls(positions=row.copy(), velocities=empty, accelerations=empty, effort=empty,
                              time_from_start=_duration(start + k * dt)) for k, row in enumerate(points)])
        self.write(topic, 'trajectory_msgs/msg/JointTrajectory', msg, stamp_ns)

    def write_bool(self, topic: str, stamp_ns: int, value: bool) -> None:
        self.write(topic, 'std_msgs/msg/Bool', msg_class('std_msgs/msg/Bool')(data=bool(value)), stamp_ns)


def is_bag(path: str | Path) -> bool:
    """A rosbag2 directory (has metadata.yaml) or a bare .mcap/.db3 storage file."""
    path = Path(path)
    return (path.is_dir() and (path / 'metadata.yaml').is_file()) or (
        path.is_file() and path.suffix in ('.mcap', '.db3'))


def find_bags(paths: Iterable[str | Path]) -> list[Path]:
    """Bags among ``paths``; a directory that is not itself a bag is scanned recursively."""
    found: list[Path] = []
    for path in map(Path, paths):
        if is_bag(path):
            found.append(path)
        elif path.is_dir():
            inside = sorted(meta.parent for meta in path.rglob('metadata.yaml'))
            if not inside:
                raise BagError(f'no rosbag2 directory (with metadata.yaml) under {str(path)!r}')
            found.extend(inside)
        else:
            raise BagError(f'bag {str(path)!r} does not exist or is not a rosbag2 directory/.mcap/.db3 file')
    return found


def _open_reader(bag_path: Path) -> AnyReader:
    if not bag_path.exists():
        raise BagError(f'bag {str(bag_path)!r} does not exist')
    try:
        reader = AnyReader([bag_path], default_typestore=TYPESTORE)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises many types for broken files
        raise BagError(f'bag {str(bag_path)!r} cannot be opened: {type(exc).__name__}: {exc}') from exc
    return reader


def bag_topics(bag_path: str | Path) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count), from the bag's metadata."""
    reader = _open_reader(Path(bag_path))
    try:
        return {topic: (info.msgtype or '?', int(info.msgcount)) for topic, info in reader.topics.items()}
    finally:
        reader.close()


def read_messages(bag_path: str | Path, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Deserialised messages of ``topics`` (all if None) in log-time order, stamped by header
    (log time for header-less messages and zero header stamps).

    Raises `BagError` naming the bag when it cannot be opened or a message cannot be read
    (truncated or corrupt storage), even part-way through.
    """
    bag_path = Path(bag_path)
    reader = _open_reader(bag_path)
    wanted = None if topics is None else set(topics)
    try:
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not connections:
            return
        iterator = reader.messages(connections=connections)
        while True:
            try:
                item = next(iterator, None)
                if item is None:
                    return
                connection, log_time, raw = item
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as exc:  # noqa: BLE001 - storage backends raise many types
                raise BagError(f'bag {str(bag_path)!r} is truncated or corrupt: {type(exc).__name__}: {exc}') from exc
            # a zero stamp means 'unset' / 'now' in ROS (JointTrajectory commands often carry it):
            # the time it was recorded is then the best time it has
            stamp = stamp_ns_of(msg)
            yield BagMessage(connection.topic, connection.msgtype, stamp if stamp else int(log_time), msg)
    finally:
        try:
            reader.close()
        except Exception:  # noqa: BLE001 - closing a broken bag must not hide the real error
            pass
