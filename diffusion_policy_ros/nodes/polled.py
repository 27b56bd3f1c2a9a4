"""Subscriptions whose messages are taken when the node needs them, not by the executor.

rclpy's executor rebuilds its wait set in Python on every wake-up: about 1.4 ms of CPU per message
on this 2-core machine, so 100 Hz joint states alone kept a node at 15 % of a core while idle. A
high-rate stream that is only read at the control rate (joint states for the guard, sensors for the
policy tick) is cheaper taken in one batch when it is needed, as rclcpp's `Subscription::take()` and
Autoware's topic-handling guidelines do: one executor wake-up per tick instead of one per message,
and each message still carries the middleware's receive time, so freshness is judged by arrival.

Serialized (raw) takes of large messages bypass rclpy: its `take_message` copies the frame into a
Python bytes object while holding the GIL (65 ms for a 36 MB 4000x3000 rgb8 frame here, so every
other thread of the node, the control tick included, stopped that long). `rcl_take_serialized_message`
called through ctypes, which releases the GIL for the call, copies the frame into a buffer that rcutils
allocated and numpy then views, with no second copy (`_GilFreeTake`); the buffer is reused once the
frame is dropped, unless it is far larger than the usual message (an oversized frame's is freed).
Where that is not possible (a librcl that is not loaded, an rclpy without `handle.pointer`), rclpy's
take is used as before.
"""
from __future__ import annotations

import ctypes
import os
import statistics
import threading
import weakref
from collections import deque
from typing import Any

import numpy as np

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo

# Best effort (what camera drivers and joint-state publishers use: a reliable subscriber would not match
# them). Depths cover one control period of a 100 Hz joint-state stream and of a 30 Hz camera, so every
# message between two takes at 10 Hz is kept; beyond that KEEP_LAST drops the oldest.
JOINT_STATE_QOS = QoSProfile(depth=20, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)
CAMERA_QOS = QoSProfile(depth=3, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)


class _NeverExecuted(CallbackGroup):
    """A callback group the executor never waits on or runs: its subscriptions are polled."""

    def can_execute(self, entity: Any) -> bool:
        return False

    def beginning_execution(self, entity: Any) -> bool:
        return False

    def ending_execution(self, entity: Any) -> None:
        pass


class PolledSubscription:
    """A subscription read with `take()`: the messages queued since the last call, oldest first,
    each with its MessageInfo (`received_timestamp`: ns since the epoch, when it arrived).

    At most `qos.depth` messages wait between two calls (KEEP_LAST drops the oldest), and one call
    takes at most that many (messages arriving while it takes wait for the next call), so the depth
    bounds both memory and the work of one call. Any thread may call `take()`.
    """

    def __init__(self, node: Node, msg_type: Any, topic: str, qos: QoSProfile, raw: bool = False) -> None:
        """`raw`: take the serialized (CDR) bytes instead of a message object: a read-only uint8 array
        (taken without the GIL where `gil_free_take_unavailable()` is None) or bytes."""
        self.topic = topic
        self.depth = max(1, int(qos.depth))
        self._node = node
        self._subscription = node.create_subscription(msg_type, topic, _never_called, qos,
                                                      callback_group=_NeverExecuted(), raw=raw)
        self._gil_free = _GilFreeTake.create() if raw else None

    def take(self) -> list[tuple[Any, MessageInfo]]:
        taken = []
        sub = self._subscription
        with sub.handle:  # keeps the rcl subscription alive while it is taken from
            while len(taken) < self.depth:
                if self._gil_free is not None:
                    result = self._gil_free.take(sub.handle.pointer)
                else:
                    result = sub.handle.take_message(sub.msg_type, sub.raw)
                if result is None:
                    break
                taken.append(result)
        return taken

    def destroy(self) -> None:
        self._node.destroy_subscription(self._subscription)
        if self._gil_free is not None:
            self._gil_free.close()


def gil_free_take_unavailable() -> str | None:
    """Why serialized takes hold the GIL in this process (None: they do not)."""
    return _GilFreeTake.unavailable()


class _RcutilsAllocator(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ('allocate', 'deallocate', 'reallocate', 'zero_allocate', 'state')]


class _SerializedMessage(ctypes.Structure):
    """rcutils_uint8_array_t, which rmw_serialized_message_t and rcl_serialized_message_t name."""

    _fields_ = [('buffer', ctypes.c_void_p), ('buffer_length', ctypes.c_size_t), ('buffer_capacity', ctypes.c_size_t),
                ('allocator', _RcutilsAllocator)]


_RCL_RET_OK = 0
_RCL_RET_SUBSCRIPTION_TAKE_FAILED = 401  # nothing to take
# rmw_message_info_t begins with source_timestamp and received_timestamp (int64 ns); the space is generous
# so that the fields after them (sequence numbers, publisher gid, intra-process flag) always fit.
_MESSAGE_INFO_WORDS = 32
MAX_SPARE_BUFFERS = 4  # per subscription: a tick takes at most its depth (3) of frames
# A buffer is sized for the usual message: the median length of the last LENGTH_HISTORY ones. One far
# larger (an oversized frame: the middleware grows the buffer to fit it) is freed when its frame goes,
# not kept: kept, it circulated with its pages resident, and every later oversized frame that landed in
# another buffer grew the node by one more frame (+6 MB per 1920x1080 frame, up to the number of buffers).
LENGTH_HISTORY = 16
OVERSIZED_FACTOR = 2


def _loaded_library(stem: str) -> str | None:
    """The path of `stem`.so as this process loaded it (rclpy's own librcl, not another on the path)."""
    with open('/proc/self/maps', encoding='utf-8', errors='replace') as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith(stem + '.so'):
                return path
    return None


class _GilFreeTake:
    """`rcl_take_serialized_message` through ctypes: the copy out of the middleware runs without the GIL."""

    _libraries: tuple[ctypes.CDLL, ctypes.CDLL] | None = None
    _unavailable: str | None = None

    def __init__(self, rcl: ctypes.CDLL, rcutils: ctypes.CDLL) -> None:
        self._rcl, self._rcutils = rcl, rcutils
        self._allocator = rcutils.rcutils_get_default_allocator()
        self._lengths: deque[int] = deque(maxlen=LENGTH_HISTORY)  # of the last messages taken
        # Buffers whose frames were dropped, reused as they are: allocating and freeing a 36 MB buffer per
        # frame maps and unmaps it each time, and the kernel's page faults and unmaps serialise the whole
        # process on its memory map (the real-time tick waited up to 10 ms behind it).
        self._spare: list[_SerializedMessage] = []
        self._spare_lock = threading.Lock()
        self._closed = False

    @classmethod
    def unavailable(cls) -> str | None:
        cls._load()
        return cls._unavailable

    @classmethod
    def create(cls) -> _GilFreeTake | None:
        libraries = cls._load()
        return cls(*libraries) if libraries is not None else None

    @classmethod
    def _load(cls) -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
        if cls._libraries is None and cls._unavailable is None:
            try:
                from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
                if not hasattr(_rclpy.Subscription, 'pointer'):
                    raise OSError('this rclpy does not expose the rcl subscription (Subscription.pointer)')
                paths = [_loaded_library(stem) for stem in ('librcl', 'librcutils')]
                if None in paths:
                    raise OSError('librcl/librcutils are not loaded in this process')
                rcl, rcutils = (ctypes.CDLL(path) for path in paths)
                rcutils.rcutils_get_default_allocator.restype = _RcutilsAllocator
                rcutils.rcutils_uint8_array_init.argtypes = [ctypes.POINTER(_SerializedMessage), ctypes.c_size_t,
                                                             ctypes.POINTER(_RcutilsAllocator)]
                rcutils.rcutils_uint8_array_fini.argtypes = [ctypes.POINTER(_SerializedMessage)]
                rcl.rcl_take_serialized_message.argtypes = [ctypes.c_void_p, ctypes.POINTER(_SerializedMessage),
                                                            ctypes.c_void_p, ctypes.c_void_p]
                rcl.rcl_take_serialized_message.restype = ctypes.c_int32
                cls._libraries = (rcl, rcutils)
            except (OSError, AttributeError, ImportError) as err:
                cls._unavailable = str(err)
        return cls._libraries

    def take(self, subscription_pointer: int) -> tuple[np.ndarray, MessageInfo] | None:
        """The oldest waiting message as a read-only uint8 array that holds its buffer, or None."""
        message = self._buffer()
        info = (ctypes.c_int64 * _MESSAGE_INFO_WORDS)()
        ret = self._rcl.rcl_take_serialized_message(subscription_pointer, ctypes.byref(message), info, None)
        if ret != _RCL_RET_OK or not message.buffer:
            self._give_back(message)
            if ret in (_RCL_RET_OK, _RCL_RET_SUBSCRIPTION_TAKE_FAILED):
                return None
            self._rcutils.rcutils_reset_error()
            raise RuntimeError(f'rcl_take_serialized_message failed (rcl_ret_t {ret})')
        with self._spare_lock:
            self._lengths.append(int(message.buffer_length))
        view = (ctypes.c_uint8 * message.buffer_length).from_address(message.buffer)
        weakref.finalize(view, self._give_back, message)  # when the last view of the frame goes
        data = np.frombuffer(view, dtype=np.uint8)
        data.flags.writeable = False
        return data, {'source_timestamp': int(info[0]), 'received_timestamp': int(info[1])}

    def close(self) -> None:
        """Free the spare buffers; buffers still in use are freed when their frames go."""
        with self._spare_lock:
            self._closed, spare, self._spare = True, self._spare, []
        for message in spare:
            self._rcutils.rcutils_uint8_array_fini(ctypes.byref(message))

    def _usual_length(self) -> int:
        """The median length of the last messages (1 KiB before the first); call with the lock held."""
        return int(statistics.median_low(self._lengths)) if self._lengths else 1024

    def _buffer(self) -> _SerializedMessage:
        with self._spare_lock:
            if self._spare:
                return self._spare.pop()
            capacity = self._usual_length()
        message = _SerializedMessage()
        if self._rcutils.rcutils_uint8_array_init(ctypes.byref(message), capacity,
                                                  ctypes.byref(self._allocator)) != _RCL_RET_OK:
            raise MemoryError(f'rcutils could not allocate {capacity} bytes for a serialized message')
        return message

    def _give_back(self, message: _SerializedMessage) -> None:
        with self._spare_lock:
            if (not self._closed and len(self._spare) < MAX_SPARE_BUFFERS
                    and message.buffer_capacity <= OVERSIZED_FACTOR * self._usual_length()):
                self._spare.append(message)
                return
        self._rcutils.rcutils_uint8_array_fini(ctypes.byref(message))


def _never_called(msg: Any) -> None:  # pragma: no cover - the executor never runs this group
    raise AssertionError('a polled subscription was executed')

