"""Stamped history of each input stream, and the observation window the policy sees at a tick.

Subscriptions push messages as they arrive (any thread); the inference worker asks for a window of
`n_obs_steps` samples at the policy's rate, each the latest message not newer than its sample time.
Joint states are stored with their names and mapped to the model's joint order here, so a driver that
publishes joints in another order, or with extra joints, just works. Camera frames may be pushed raw
(the message as received) and are decoded only when a window uses them, on the worker thread: a frame
that is never used is never decoded, and decoding never delays the thread that pushes.
"""
from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from diffusion_policy_ros.control.health import HoldCode, HoldReason

T = TypeVar('T')

JOINT_STATE_STREAM = 'joint_states'


STAMP_TOLERANCE_S = 1e-6


class StampedRingBuffer(Generic[T]):
    """The last `capacity` (stamp, value) pairs of one stream, ordered by stamp, thread-safe.

    Kept sorted on insert (bisect) because messages from a bag replay or a multi-threaded executor can
    arrive slightly out of order; lookups are then a binary search. With `span_s`, entries that can no
    longer be the latest one at or before `newest stamp - span_s` are dropped too (time-bounded memory
    for large raw camera frames, whatever the camera's rate).
    """

    def __init__(self, capacity: int, span_s: float | None = None) -> None:
        if capacity < 1:
            raise ValueError(f'StampedRingBuffer capacity must be >= 1, got {capacity}')
        if span_s is not None and not span_s > 0:
            raise ValueError(f'StampedRingBuffer span_s must be > 0 seconds, got {span_s}')
        self.capacity = capacity
        self.span_s = span_s
        self._stamps: list[float] = []
        self._values: list[T] = []
        self._lock = threading.Lock()

    def push(self, stamp: float, value: T) -> None:
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f'StampedRingBuffer.push got a non-finite stamp {stamp}')
        with self._lock:
            i = bisect.bisect_right(self._stamps, stamp)
            if i == 0 and len(self._stamps) == self.capacity:
                return  # older than everything kept: it would be evicted at once
            self._stamps.insert(i, stamp)
            self._values.insert(i, value)
            if len(self._stamps) > self.capacity:
                del self._stamps[0]
                del self._values[0]
            if self.span_s is not None:
                cutoff = self._stamps[-1] - self.span_s
                keep_from = max(0, bisect.bisect_right(self._stamps, cutoff) - 1)
                del self._stamps[:keep_from]
                del self._values[:keep_from]

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._values.clear()

    def latest(self) -> tuple[float, T] | None:
        with self._lock:
            return (self._stamps[-1], self._values[-1]) if self._stamps else None

    def latest_stamp(self) -> float | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def latest_not_newer(self, t: float) -> tuple[float, T] | None:
        """The newest entry with stamp <= t (a message stamped exactly t counts), or None.

        Stamps and query times come from float seconds built in different ways (sec + nsec * 1e-9,
        ns / 1e9): a microsecond of slack keeps a message stamped at t from being missed by an ulp."""
        with self._lock:
            i = bisect.bisect_right(self._stamps, t + STAMP_TOLERANCE_S)
            return (self._stamps[i - 1], self._values[i - 1]) if i else None


@dataclass(frozen=True)
class ObservationWindow:
    """What the policy gets: `n_obs` samples, oldest first, with the stamps they came from."""

    images: dict[str, np.ndarray]  # camera key -> uint8 (n_obs, H, W, 3)
    state: np.ndarray  # (n_obs, n_joints) float32, the model's joint order
    obs_time: float  # the newest stamp used: the time the chunk's newest-obs row refers to
    sample_times: np.ndarray  # (n_obs,)
    stamps: dict[str, np.ndarray]  # stream -> (n_obs,) stamps of the messages used

    def as_policy_input(self) -> dict[str, np.ndarray]:
        """The dict `predict_action_chunk` takes: camera keys plus 'state'."""
        return {**self.images, 'state': self.state}


@dataclass(frozen=True)
class JointStateSample:
    names: tuple[str, ...]
    positions: np.ndarray


class _Frame:
    """A camera frame as pushed (an image, or a raw message to decode once a window needs it)."""

    __slots__ = ('raw', 'image', 'error')

    def __init__(self, frame: Any) -> None:
        decoded = isinstance(frame, np.ndarray)
        self.raw = None if decoded else frame
        self.image: np.ndarray | None = frame if decoded else None
        self.error: str | None = None


ImageDecoder = Callable[[Any, str], np.ndarray]  # (raw frame, stream name) -> image


class ObservationHistory:
    """One ring buffer per camera (by the checkpoint's camera key) and one for joint states.

    Images are pushed preprocessed (an array at the model's size, made with the dataset's own
    function) or raw, with `decode_image` turning a raw frame into that array when a window first
    uses it, so the window holds exactly what training saw either way.
    """

    def __init__(self, camera_keys: Sequence[str], joint_names: Sequence[str], capacity: int = 64,
                 stream_names: Mapping[str, str] | None = None, decode_image: ImageDecoder | None = None,
                 camera_span_s: float | None = None) -> None:
        """`stream_names` maps a camera key (or 'joint_states') to a human name such as the topic,
        used in hold reasons. `camera_span_s` bounds camera buffers in time (see StampedRingBuffer):
        the window reaches back (n_obs_steps - 1) periods, so a little more than that is enough."""
        if len(set(camera_keys)) != len(camera_keys):
            raise ValueError(f'duplicate camera keys: {list(camera_keys)}')
        if JOINT_STATE_STREAM in camera_keys:
            raise ValueError(f'camera key {JOINT_STATE_STREAM!r} is reserved for joint states')
        if not joint_names or len(set(joint_names)) != len(joint_names):
            raise ValueError(f'joint_names must be non-empty and unique, got {list(joint_names)}')
        self.camera_keys = tuple(camera_keys)
        self.joint_names = tuple(joint_names)
        self._cameras = {k: StampedRingBuffer[_Frame](capacity, camera_span_s) for k in self.camera_keys}
        self._decode_image = decode_image
        self._joints = StampedRingBuffer[JointStateSample](capacity)
        self._names = {k: k for k in (*self.camera_keys, JOINT_STATE_STREAM)}
        self._names.update(stream_names or {})
        self._index_cache: dict[tuple[str, ...], np.ndarray | list[str]] = {}

    def stream_name(self, stream: str) -> str:
        return self._names.get(stream, stream)

    def push_image(self, camera_key: str, stamp: float, image: Any) -> None:
        """`image`: a preprocessed (H, W, 3) uint8 array, or a raw frame for `decode_image`."""
        try:
            buffer = self._cameras[camera_key]
        except KeyError:
            raise KeyError(f'unknown camera key {camera_key!r} '
                           f'(expected one of {self.camera_keys})') from None
        if not isinstance(image, np.ndarray) and self._decode_image is None:
            raise TypeError(f'camera {camera_key!r}: a raw frame needs ObservationHistory(decode_image=...)')
        buffer.push(stamp, _Frame(image))

    def _decoded(self, frame: _Frame, stream: str) -> np.ndarray | str:
        """The frame's image, decoding it on first use (the raw message is then let go); a str says
        why it cannot be decoded. Only the inference worker builds windows, so no lock is needed."""
        if frame.image is None and frame.error is None:
            try:
                frame.image = self._decode_image(frame.raw, stream)
            except (ValueError, TypeError) as err:  # ImageDecodeError is a ValueError
                frame.error = str(err)
            frame.raw = None
        return frame.image if frame.image is not None else frame.error

    def push_joint_state(self, stamp: float, names: Sequence[str], positions: Sequence[float]) -> None:
        positions = np.asarray(positions, dtype=np.float64).reshape(-1)
        if len(names) != positions.size:
            raise ValueError(f'joint state at stamp {stamp} has {len(names)} names but '
                             f'{positions.size} positions')
        self._joints.push(stamp, JointStateSample(tuple(names), positions))

    def clear(self) -> None:
        """Forget every stored message (the clock went back: they would all look future-stamped)."""
        for buffer in (*self._cameras.values(), self._joints):
            buffer.clear()

    def latest_stamps(self) -> dict[str, float | None]:
        """Latest stamp per stream, named for humans (topic), for the health monitor."""
        stamps = {self.stream_name(k): b.latest_stamp() for k, b in self._cameras.items()}
        stamps[self.stream_name(JOINT_STATE_STREAM)] = self._joints.latest_stamp()
        return stamps

    def latest_joint_positions(self) -> np.ndarray | HoldReason:
        """Measured positions in the model's joint order: what HOLD publishes and the clamp starts from."""
        entry = self.latest_joint_state()
        return entry if isinstance(entry, HoldReason) else entry[1]

    def latest_joint_state(self) -> tuple[float, np.ndarray] | HoldReason:
        """(stamp, positions in the model's joint order) of the newest joint state."""
        entry = self._joints.latest()
        if entry is None:
            return HoldReason(HoldCode.NO_OBSERVATION,
                              f'no message received yet on {self.stream_name(JOINT_STATE_STREAM)}',
                              self.stream_name(JOINT_STATE_STREAM))
        positions = self._model_order(entry[0], entry[1])
        return positions if isinstance(positions, HoldReason) else (entry[0], positions)

    def _model_order(self, stamp: float, sample: JointStateSample) -> np.ndarray | HoldReason:
        index = self._index_cache.get(sample.names)
        if index is None:
            lookup = {n: i for i, n in enumerate(sample.names)}
            missing = [n for n in self.joint_names if n not in lookup]
            index = missing or np.array([lookup[n] for n in self.joint_names])
            if len(self._index_cache) > 16:  # a misbehaving publisher must not grow this forever
                self._index_cache.clear()
            self._index_cache[sample.names] = index
        topic = self.stream_name(JOINT_STATE_STREAM)
        if isinstance(index, list):
            return HoldReason(HoldCode.MISSING_JOINT,
                              f'{topic} at stamp {stamp:.3f} lacks joints {index}', topic)
        positions = sample.positions[index]
        if not np.all(np.isfinite(positions)):
            bad = [self.joint_names[i] for i in np.flatnonzero(~np.isfinite(positions))]
            return HoldReason(HoldCode.NON_FINITE,
                              f'{topic} at stamp {stamp:.3f} has non-finite positions for {bad}', topic)
        return positions

    def build_window(self, now: float, n_obs_steps: int, period: float,
                     max_age_s: float | None = None) -> ObservationWindow | HoldReason:
        """Sample every stream at times `now - period * (n_obs_steps - 1 - i)`, i = 0..n_obs_steps-1.

        Each sample is the latest message not newer than its time. With `max_age_s`, a message older
        than that relative to its sample time makes the window stale (the stream stopped).
        """
        if n_obs_steps < 1:
            raise ValueError(f'n_obs_steps must be >= 1, got {n_obs_steps}')
        if not period > 0:
            raise ValueError(f'period must be > 0 seconds, got {period}')
        sample_times = now - period * np.arange(n_obs_steps - 1, -1, -1, dtype=np.float64)
        stamps: dict[str, np.ndarray] = {}

        def pick(stream: str, buffer: StampedRingBuffer) -> list | HoldReason:
            entries, used = [], np.empty(n_obs_steps)
            name = self.stream_name(stream)
            for i, t in enumerate(sample_times):
                entry = buffer.latest_not_newer(float(t))
                if entry is None:
                    return HoldReason(HoldCode.NO_OBSERVATION,
                                      f'no message on {name} at or before t={t:.3f}', name)
                if max_age_s is not None and t - entry[0] > max_age_s:
                    return HoldReason(HoldCode.STALE_OBSERVATION,
                                      f'{name} is {t - entry[0]:.3f} s old at t={t:.3f} '
                                      f'(max_obs_age_s {max_age_s:g})', name)
                used[i] = entry[0]
                entries.append(entry)
            stamps[stream] = used
            return entries

        images: dict[str, np.ndarray] = {}
        for key, buffer in self._cameras.items():
            entries = pick(key, buffer)
            if isinstance(entries, HoldReason):
                return entries
            name = self.stream_name(key)
            frames = []
            for stamp, frame in entries:
                image = self._decoded(frame, name)
                if isinstance(image, str):
                    return HoldReason(HoldCode.BAD_IMAGE, image, name)
                frames.append(image)
            first = frames[0]
            for (stamp, _), frame in zip(entries, frames):
                if (not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3
                        or frame.shape[2] != 3 or frame.shape != first.shape):
                    shape = getattr(frame, 'shape', None)
                    dtype = getattr(frame, 'dtype', type(frame).__name__)
                    return HoldReason(HoldCode.BAD_IMAGE,
                                      f'{name} image at stamp {stamp:.3f} is {dtype} {shape}, expected '
                                      f'uint8 (H, W, 3) like {first.shape}', name)
            images[key] = np.stack(frames)

        entries = pick(JOINT_STATE_STREAM, self._joints)
        if isinstance(entries, HoldReason):
            return entries
        rows = []
        for stamp, sample in entries:
            positions = self._model_order(stamp, sample)
            if isinstance(positions, HoldReason):
                return positions
            rows.append(positions)
        state = np.stack(rows).astype(np.float32)
        obs_time = float(max(s[-1] for s in stamps.values()))
        return ObservationWindow(images=images, state=state, obs_time=obs_time,
                                 sample_times=sample_times, stamps=stamps)


def example_observation(camera_keys: Sequence[str], image_shape: Sequence[int], n_obs_steps: int,
                        limits: Any) -> dict[str, np.ndarray]:
    """A well-formed policy input (black frames, every joint mid-range, 0 for an unbounded one) for
    warm-up inference, so the first call's allocations and kernel choices happen before the first real
    observation arrives."""
    h, w = image_shape
    obs = {key: np.zeros((n_obs_steps, h, w, 3), np.uint8) for key in camera_keys}
    bounds = limits.lower + limits.upper
    middle = np.where(np.isfinite(bounds), bounds / 2, 0.0)
    obs['state'] = np.tile(middle[None], (n_obs_steps, 1)).astype(np.float32)
    return obs
