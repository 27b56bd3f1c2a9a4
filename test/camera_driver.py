"""A camera driver for DDS tests: `python test/camera_driver.py TOPIC WIDTHxHEIGHT [RATE_HZ]` publishes
rgb8 frames (sensor-data QoS, stamped now) until it is killed, from a process of its own like a real
driver."""
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from diffusion_policy_ros.nodes.messages import make_image


def main() -> None:
    topic, size = sys.argv[1], sys.argv[2]
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    width, height = (int(v) for v in size.split('x'))
    rclpy.init()
    node = rclpy.create_node('test_camera_driver')
    pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
    msg = make_image(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8),
                     node.get_clock().now().to_msg())
    start = time.monotonic()
    for i in range(10 ** 9):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)


if __name__ == '__main__':
    main()
