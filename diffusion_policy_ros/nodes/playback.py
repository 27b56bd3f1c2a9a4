"""Bag playback and recording over rclpy for `dp-ros replay` (not a node: helpers on the replay's node).

`Player` publishes a bag's messages at their recorded stamps (scaled by a rate) with a /clock from the
same stamps; `Recorder` writes every message the nodes publish into a new rosbag2 as it arrives.
"""
from __future__ import annotations

import importlib
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusion_policy_ros.data.bags import TYPESTORE, BagWriter, read_messages
from diffusion_policy_ros.data.replay_metrics import DIAGNOSTICS_TYPE, GUARD_STATUS_SUFFIX, DiagnosticSample


def message_class(msgtype: str) -> type:
    """The rclpy class of 'pkg/msg/Type' (raises ImportError/AttributeError for unknown types)."""
    package, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


class Recorder:
    """Raw subscriptions to the nodes' topics; each message is written to the output bag on arrival,
    stamped with the replay clock (as `ros2 bag record --use-sim-time` would)."""

    def __init__(self, node: Any, writer: BagWriter, topics: dict[str, str], clock_ns: Any) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        self.writer = writer
        self.clock_ns = clock_ns
        self.counts: Counter[str] = Counter()
        self.last_received: dict[str, float] = {}
        self.guard_before_playback: DiagnosticSample | None = None
        self.playing = False
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._open = True
        self.subscriptions = {}
        for topic, msgtype in topics.items():
            self.subscriptions[topic] = node.create_subscription(
                message_class(msgtype), topic, lambda raw, t=topic, m=msgtype: self._on_message(t, m, raw),
                QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE), raw=True)

    def _on_message(self, topic: str, msgtype: str, raw: bytes) -> None:
        try:
            msg = TYPESTORE.deserialize_cdr(raw, msgtype)
        except Exception as err:  # noqa: BLE001 - keep recording the other topics
            self.failures.append(f'{topic}: cannot deserialise a {msgtype}: {err!r}')
            return
        with self._lock:
            if not self._open:
                return
            self.writer.write(topic, msgtype, msg, self.clock_ns())
            self.counts[topic] += 1
            self.last_received[topic] = time.monotonic()
            if msgtype == DIAGNOSTICS_TYPE and not self.playing:
                for status in msg.status:
                    if status.name.endswith(GUARD_STATUS_SUFFIX):
                        self.guard_before_playback = DiagnosticSample(
                            0.0, status.name, int(status.level), status.message,
                            {kv.key: kv.value for kv in status.values})

    def close(self) -> None:
        """Stop writing and flush the bag (idempotent)."""
        with self._lock:
            if self._open:
                self._open = False
                self.writer.close()


# ---------------------------------------------------------------------- playback
@dataclass
class PlaybackStats:
    published: Counter = field(default_factory=Counter)
    clock_messages: int = 0
    wall_s: float = 0.0
    sim_s: float = 0.0
    max_lag_s: float = 0.0  # how far behind the scaled schedule a publish went (machine too slow)

    @property
    def achieved_rate(self) -> float | None:
        return self.sim_s / self.wall_s if self.wall_s > 0 else None


class Player:
    """Publishes a bag's messages at their stamps (scaled by ``rate``) with /clock from the same stamps."""

    def __init__(self, node: Any, topics: dict[str, str], rate: float, clock_hz: float) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        self._clock_cls = Clock
        self.rate = rate
        self.clock_step_ns = max(1, int(round(1e9 / clock_hz)))
        self.clock_pub = node.create_publisher(Clock, '/clock', 10)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        for topic, msgtype in topics.items():
            try:
                self.publishers[topic] = node.create_publisher(message_class(msgtype), topic, qos)
            except (ImportError, AttributeError, ValueError) as err:
                self.skipped[topic] = f'{msgtype}: {err}'
        self.now_ns: int | None = None  # the last /clock published
        self.stats = PlaybackStats()
        self.stop_requested = threading.Event()

    def _publish_clock(self, stamp_ns: int) -> None:
        from builtin_interfaces.msg import Time
        sec, nanosec = divmod(stamp_ns, 1_000_000_000)
        self.clock_pub.publish(self._clock_cls(clock=Time(sec=sec, nanosec=nanosec)))
        self.now_ns = stamp_ns
        self.stats.clock_messages += 1

    def play(self, bag: Path, start_ns: int, end_ns: int) -> PlaybackStats:
        messages = read_messages(bag, topics=list(self.publishers))
        first = next(messages, None)  # opens the bag before the schedule starts (tens of ms)
        wall0 = time.monotonic()

        def wait_until(stamp_ns: int) -> None:
            target = wall0 + (stamp_ns - start_ns) * 1e-9 / self.rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.stats.max_lag_s = max(self.stats.max_lag_s, -delay)

        def advance_clock(to_ns: int) -> None:
            next_tick = start_ns if self.now_ns is None else self.now_ns + self.clock_step_ns
            while next_tick < to_ns:
                wait_until(next_tick)
                self._publish_clock(next_tick)
                next_tick += self.clock_step_ns
            if self.now_ns is None or to_ns > self.now_ns:
                wait_until(to_ns)
                self._publish_clock(to_ns)  # before the message: a node never sees a stamp from its future

        try:
            for item in itertools.chain([first] if first is not None else [], messages):
                if self.stop_requested.is_set():
                    break
                stamp = max(item.stamp_ns, self.now_ns or start_ns)  # the clock never goes backwards
                advance_clock(stamp)
                raw = bytes(TYPESTORE.serialize_cdr(item.msg, item.msgtype))
                self.publishers[item.topic].publish(raw)
                self.stats.published[item.topic] += 1
            else:
                advance_clock(end_ns)
        finally:
            self.stats.wall_s = time.monotonic() - wall0
            self.stats.sim_s = ((self.now_ns or start_ns) - start_ns) * 1e-9
        return self.stats


def wait_for(condition: Any, timeout_s: float, what: str, failed: Any = lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        problem = failed()
        if problem:
            raise RuntimeError(problem)
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout_s:.0f} s waiting for {what}')
        time.sleep(0.05)
