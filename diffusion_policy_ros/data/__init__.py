"""Demonstration data: rosbag2 I/O (`bags`), image message <-> array (`image_codec`), bags -> zarr
episodes (`convert`, `dp-ros dataset`) and training windows (`episodes`).

Nothing is imported here, so `image_codec` stays light for the ROS nodes (no torch, no zarr).
"""
