"""Simulated Panda + policy + collision guard: `ros2 launch diffusion_policy_ros sim.launch.py`.

Reads config/sim_robot.yaml, config/policy.yaml, config/collision_guard.yaml and the overrides in
config/sim.yaml: the same files `bringup --config config/sim.yaml` (and `make demo`) use.
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
    sim_params = LaunchConfiguration('sim_params')
    return LaunchDescription([
        # Fast DDS transports that deliver large camera frames whole (config/dds/fastdds.xml), unless
        # the environment names a profile already; start the camera driver with it too.
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', EnvironmentVariable(
            'FASTDDS_DEFAULT_PROFILES_FILE', default_value=os.path.join(config, 'dds', 'fastdds.xml'))),
        DeclareLaunchArgument('sim_params', default_value=os.path.join(config, 'sim.yaml')),
        Node(package='diffusion_policy_ros', executable='sim_robot_node', name='sim_robot_node',
             output='screen', parameters=[os.path.join(config, 'sim_robot.yaml'), sim_params]),
        Node(package='diffusion_policy_ros', executable='collision_guard_node', name='collision_guard_node',
             output='screen', parameters=[os.path.join(config, 'collision_guard.yaml'), sim_params]),
        Node(package='diffusion_policy_ros', executable='policy_node', name='policy_node', output='screen',
             parameters=[os.path.join(config, 'policy.yaml'), sim_params]),
    ])
