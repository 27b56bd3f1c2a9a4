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
from diffusion_policy_ros.nodes.polled import CAMERA_QOS, PolledSubscription, gil_free_take_unavailable
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
        publisher.publish(frame)
        wait_for(lambda: bool(taken := subscription.take()) and not got.append(taken[0][0]), 10, 'a frame')
        return got.pop()

    got: list[np.ndarray] = []
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
