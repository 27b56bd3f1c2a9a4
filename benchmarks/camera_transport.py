"""Share of large camera frames that reach a subscriber in another process, per DDS transport set-up.

A publisher process (the camera driver's role) sends rgb8 frames at 30 Hz with sensor-data QoS (best
effort, what camera drivers use); this process subscribes the way policy_node does and counts the
frames that arrive (each carries its sequence number in `header.frame_id`). Each size runs once with
the transport profile this package ships (`config/dds/fastdds.xml`, applied by env.sh, bringup, dp-ros
and the launch files) and once with Fast DDS's defaults, in the same run. Prints one JSON object.

    python benchmarks/camera_transport.py [--seconds 6] [--sizes 640x480 1280x720]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from diffusion_policy_ros.nodes.dds import DDS_VARIABLES, apply_dds_profile, profile_path

CAMERA_TOPIC = '/bench/camera/image_raw'


def publisher(width: int, height: int, rate_hz: float, frames: int) -> None:
    """The camera driver: `frames` frames at `rate_hz` once a subscriber has matched."""
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from diffusion_policy_ros.nodes.messages import make_image
    rclpy.init()
    node = rclpy.create_node('camera_transport_publisher')
    pub = node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    msg = make_image(rgb, node.get_clock().now().to_msg())
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # discovery of the data path settles
    start = time.monotonic()
    for i in range(frames):
        time.sleep(max(0.0, start + i / rate_hz - time.monotonic()))
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = str(i)
        pub.publish(msg)
    time.sleep(1.0)  # let the last frames drain before the participant goes away
    node.destroy_node()
    rclpy.shutdown()


def measure(width: int, height: int, rate_hz: float, seconds: float, env: dict[str, str]) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    frames = int(round(seconds * rate_hz))
    received: set[int] = set()
    latencies: list[float] = []
    done = threading.Event()
    rclpy.init()
    node = rclpy.create_node('camera_transport_subscriber')

    def on_image(msg: Image) -> None:
        now = node.get_clock().now().nanoseconds * 1e-9
        received.add(int(msg.header.frame_id))
        latencies.append(now - msg.header.stamp.sec - msg.header.stamp.nanosec * 1e-9)
        if int(msg.header.frame_id) == frames - 1:
            done.set()

    node.create_subscription(Image, CAMERA_TOPIC, on_image, qos_profile_sensor_data)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    proc = subprocess.Popen([sys.executable, __file__, '--publish', f'{width}x{height}', '--rate', str(rate_hz),
                             '--frames', str(frames)], env=env)
    proc.wait(timeout=seconds + 60)
    done.wait(2.0)
    lat = sorted(latencies)
    return {'frames_sent': frames, 'frames_received': len(received),
            'share_received': round(len(received) / frames, 4),
            'latency_p50_ms': round(1e3 * lat[len(lat) // 2], 2) if lat else None,
            'latency_p99_ms': round(1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=6.0, help='seconds of frames per measurement')
    parser.add_argument('--rate', type=float, default=30.0, help='frames per second')
    parser.add_argument('--sizes', nargs='+', default=['640x480', '1280x720'], help='WIDTHxHEIGHT')
    parser.add_argument('--publish', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--frames', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--subscribe', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--extra-env', nargs='*', default=[], metavar='LABEL:VAR=VALUE',
                        help='more set-ups to compare, e.g. large_data:FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA')
    args = parser.parse_args()
    if args.publish:
        width, height = (int(v) for v in args.publish.split('x'))
        publisher(width, height, args.rate, args.frames)
        return
    if args.subscribe:
        width, height = (int(v) for v in args.subscribe.split('x'))
        print(json.dumps(measure(width, height, args.rate, args.seconds, dict(os.environ))), flush=True)
        os._exit(0)  # the spinning executor thread is a daemon: no orderly teardown needed
    base = {k: v for k, v in os.environ.items() if k not in DDS_VARIABLES}
    setups = {'shipped_profile': apply_dds_profile(dict(base)), 'fastdds_defaults': base}
    for extra in args.extra_env:
        label, _, assignment = extra.partition(':')
        key, _, value = assignment.partition('=')
        setups[label] = {**base, key: value}
    results: dict = {'benchmark': 'camera_transport', 'rate_hz': args.rate, 'seconds': args.seconds,
                     'profile': str(profile_path()), 'target': 'share_received >= 0.99 with the shipped profile'}
    for size in args.sizes:
        for label, env in setups.items():
            # Fast DDS reads its profile once per process: each set-up gets its own subscriber process.
            out = subprocess.run([sys.executable, __file__, '--subscribe', size, '--rate', str(args.rate),
                                  '--seconds', str(args.seconds)], env=env, capture_output=True, text=True,
                                 timeout=args.seconds + 120)
            lines = out.stdout.strip().splitlines()
            results.setdefault(size, {})[label] = (json.loads(lines[-1]) if out.returncode == 0 and lines
                                                   else {'error': out.stderr[-500:]})
    print(json.dumps(results, indent=2))


if __name__ == '__main__':
    main()
