"""diffusion_policy_ros: a diffusion policy for robot arms, from rosbags to a real-time ROS 2 node.

Layout (see README.md): core/ (PyTorch policy), control/ (real-time chunk execution), data/ (bags and
datasets), training/, collision/, sim/ are ROS-free; nodes/ holds the thin rclpy adapters.
"""
__version__ = '0.1.0'
