"""Polled subscriptions: serialized frames taken without the GIL are the published messages, carry
their arrival time, and give their memory back."""
from __future__ import annotations

import resource
import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image

from diffusion_policy_ros.nodes.messages import make_image
from diffusion_policy_ros.nodes.polled import (CAMERA_QOS, MAX_SPARE_BUFFERS, PolledSubscription,
                                              gil_free_take_unavailable)
from ros_helpers import wait_for

pytestmark = pytest.mark.ros


@pytest.fixture(scope='module')
def node():
    rclpy.init()
    node = rclpy.create_node('polled_test')
    yield node
    node.destroy_node()
    rclpy.shutdown()


def frames_through(node, topic: str, messages: list[Image]) -> list[tuple[np.ndarray, dict]]:
    publisher = node.create_publisher(Image, topic, qos_profile_sensor_data)
    subscription = PolledSubscription(node, Image, topic, CAMERA_QOS, raw=True)
    try:
        wait_for(lambda: publisher.get_subscription_count() >= 1, 20, 'the subscription to match')
        taken = []
        for msg in messages:
            publisher.publish(msg)
            deadline = time.monotonic() + 10
            while not (got := subscription.take()) and time.monotonic() < deadline:
                time.sleep(0.005)
            taken += got
        return taken
    finally:
        subscription.destroy()
        node.destroy_publisher(publisher)


def publish_and_take(publisher, subscription: PolledSubscription, msg: Image) -> np.ndarray:
    """`msg` published and taken back: its raw frame, which holds its buffer until dropped."""
    publisher.publish(msg)
    got: list[np.ndarray] = []
    wait_for(lambda: bool(taken := subscription.take()) and not got.append(taken[0][0]), 10, 'a frame')
    return got.pop()


def test_this_machine_takes_serialized_frames_without_the_gil():
    """The shipped rclpy/rcl expose what the GIL-free take needs; a regression here would bring back
    65 ms stalls of the control tick per 4000x3000 frame."""
    assert gil_free_take_unavailable() is None


def test_taken_frames_are_the_published_messages_with_their_arrival_time(node):
    rng = np.random.default_rng(3)
    messages = [make_image(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), node.get_clock().now().to_msg())
                for w, h in ((4, 3), (640, 480), (1280, 720), (2, 1))]  # growing, then shrinking buffers
    before = time.time_ns()
    taken = frames_through(node, '/polled_test/cdr', messages)
    assert len(taken) == len(messages)
    for (raw, info), msg in zip(taken, messages):
        assert isinstance(raw, np.ndarray) and not raw.flags.writeable
        assert len(raw) == len(serialize_message(msg))  # (alignment padding bytes may differ)
        assert deserialize_message(raw.tobytes(), Image) == msg
        assert before <= info['received_timestamp'] <= time.time_ns()
        assert info['source_timestamp'] <= info['received_timestamp']


def test_taken_frames_free_their_buffers(node):
    """Each take owns an rcutils buffer until its last view goes: 300 VGA frames (270 MB) taken and
    dropped ten at a time leave the process no more than a few frames larger."""
    frame = make_image(np.zeros((480, 640, 3), np.uint8), node.get_clock().now().to_msg())
    frames_through(node, '/polled_test/free', [frame] * 10)  # transports and caches warmed up
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(30):
        assert len(frames_through(node, '/polled_test/free', [frame] * 10)) == 10
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    assert grown_mib < 100, f'peak RSS grew {grown_mib:.0f} MiB over 300 frames: taken buffers are not freed'


def test_a_dropped_frames_buffer_is_reused_for_the_next_frame(node):
    """No allocation (and no page faults) per frame once the buffers exist: a 36 MB frame's buffer was
    mapped and unmapped every time otherwise, stalling the whole process on its memory map."""
    frame = make_image(np.zeros((480, 640, 3), np.uint8), node.get_clock().now().to_msg())
    publisher = node.create_publisher(Image, '/polled_test/reuse', qos_profile_sensor_data)
    subscription = PolledSubscription(node, Image, '/polled_test/reuse', CAMERA_QOS, raw=True)

    def next_frame() -> np.ndarray:
        return publish_and_take(publisher, subscription, frame)

    try:
        wait_for(lambda: publisher.get_subscription_count() >= 1, 20, 'the subscription to match')
        first = next_frame()
        address = first.ctypes.data
        del first
        second = next_frame()
        assert second.ctypes.data == address
        third = next_frame()  # the second frame is still held: its buffer is not handed out again
        assert third.ctypes.data != second.ctypes.data
    finally:
        subscription.destroy()
        node.destroy_publisher(publisher)


def private_mib() -> float:
    """This process's anonymous resident memory (RssAnon), MiB."""
    with open('/proc/self/status', encoding='ascii') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('RssAnon:')) / 1024


def test_an_oversized_frames_buffer_is_freed_not_kept(node):
    """A 1920x1080 frame among 96x96 ones: its buffer goes when the frame goes. Kept as a spare, it
    circulated with 6 MB resident, and each later oversized frame that landed in another buffer grew the
    node by 6 MB more (a soak's policy node: +12 MB once in 30 minutes; one every 3 s: +41 MB)."""
    from diffusion_policy_ros.heap import return_large_blocks_to_os
    return_large_blocks_to_os()  # as every node process does: a freed 6 MB block is unmapped
    stamp = node.get_clock().now().to_msg()
    usual = make_image(np.zeros((96, 96, 3), np.uint8), stamp)
    oversized = make_image(np.full((1080, 1920, 3), 7, np.uint8), stamp)
    publisher = node.create_publisher(Image, '/polled_test/oversized', qos_profile_sensor_data)
    subscription = PolledSubscription(node, Image, '/polled_test/oversized', CAMERA_QOS, raw=True)

    ring: list[np.ndarray] = []

    def frames_through_a_ring(count: int, oversized_every: int) -> None:
        """As the policy node keeps frames: the newest few held, the oldest dropped as each arrives."""
        for k in range(count):
            msg = oversized if k % oversized_every == oversized_every - 1 else usual
            ring.append(publish_and_take(publisher, subscription, msg))
            if len(ring) > MAX_SPARE_BUFFERS + 4:  # more buffers in use than are kept spare
                ring.pop(0)

    try:
        wait_for(lambda: publisher.get_subscription_count() >= 1, 20, 'the subscription to match')
        frames_through_a_ring(20, 10)  # the middleware's own buffers (this process publishes too) grow
        before_mib = private_mib()
        frames_through_a_ring(80, 10)
        grown_mib = private_mib() - before_mib  # the ring still held, as in a running node
        spare = [int(message.buffer_capacity) for message in subscription._gil_free._spare]
        assert spare and max(spare) < 2 * len(serialize_message(usual)), f'spare buffer capacities {spare}'
        assert grown_mib < 4, f'8 oversized frames grew the process by {grown_mib:.1f} MiB'
    finally:
        ring.clear()
        subscription.destroy()
        node.destroy_publisher(publisher)

