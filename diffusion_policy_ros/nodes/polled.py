"""Subscriptions whose messages are taken when the node needs them, not by the executor.

rclpy's executor rebuilds its wait set in Python on every wake-up: about 1.4 ms of CPU per message
on this 2-core machine, so 100 Hz joint states alone kept a node at 15 % of a core while idle. A
high-rate stream that is only read at the control rate (joint states for the guard, sensors for the
policy tick) is cheaper taken in one batch when it is needed, as rclcpp's `Subscription::take()` and
Autoware's topic-handling guidelines do: one executor wake-up per tick instead of one per message,
and each message still carries the middleware's receive time, so freshness is judged by arrival.
"""
from __future__ import annotations

from typing import Any

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
        """`raw`: take the serialized (CDR) bytes instead of a message object."""
        self.topic = topic
        self.depth = max(1, int(qos.depth))
        self._node = node
        self._subscription = node.create_subscription(msg_type, topic, _never_called, qos,
                                                      callback_group=_NeverExecuted(), raw=raw)

    def take(self) -> list[tuple[Any, MessageInfo]]:
        taken = []
        sub = self._subscription
        with sub.handle:
            while len(taken) < self.depth and (result := sub.handle.take_message(sub.msg_type, sub.raw)) is not None:
                taken.append(result)
        return taken

    def destroy(self) -> None:
        self._node.destroy_subscription(self._subscription)


def _never_called(msg: Any) -> None:  # pragma: no cover - the executor never runs this group
    raise AssertionError('a polled subscription was executed')

