"""Policy + collision guard on a real ROS 2 arm: `ros2 launch diffusion_policy_ros policy.launch.py`.

Reads the same params files as `bringup --robot` (config/robot.yaml lists them). Override with
`policy_params:=/path/to/my_policy.yaml` or `guard_params:=...`; set `use_sim_time:=true` for a
simulator that publishes /clock.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory('diffusion_policy_ros')
    config = os.path.join(share, 'config')
    policy_params = LaunchConfiguration('policy_params')
    guard_params = LaunchConfiguration('guard_params')
    use_sim_time = LaunchConfiguration('use_sim_time')
    return LaunchDescription([
        # Fast DDS transports that deliver large camera frames whole (config/dds/fastdds.xml), unless
        # the environment names a profile already; start the camera driver with it too.
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', EnvironmentVariable(
            'FASTDDS_DEFAULT_PROFILES_FILE', default_value=os.path.join(config, 'dds', 'fastdds.xml'))),
        DeclareLaunchArgument('policy_params', default_value=os.path.join(config, 'policy.yaml')),
        DeclareLaunchArgument('guard_params', default_value=os.path.join(config, 'collision_guard.yaml')),
        DeclareLaunchArgument('use_sim_time', default_value='false'),
        Node(package='diffusion_policy_ros', executable='collision_guard_node', name='collision_guard_node',
             output='screen',
             parameters=[guard_params, {'use_sim_time': use_sim_time}]),
        Node(package='diffusion_policy_ros', executable='policy_node', name='policy_node', output='screen',
             parameters=[policy_params, os.path.join(config, 'robot.yaml'), {'use_sim_time': use_sim_time}]),
    ])
