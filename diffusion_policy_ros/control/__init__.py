"""Real-time execution without ROS: chunk executor, limits, observation history, health, worker.

`nodes/policy_node.py` is a thin rclpy adapter over these; everything here runs and is tested
without a ROS graph.
"""
from diffusion_policy_ros.control.chunks import ActionChunk, ChunkExecutor, ExecutorConfig, ExecutorStats
from diffusion_policy_ros.control.controller import ControllerConfig, PolicyController, TickResult
from diffusion_policy_ros.control.health import (HealthMonitor, HealthState, HealthVerdict, HoldCode,
                                                 HoldReason, stream_age_reason)
from diffusion_policy_ros.control.inference_worker import InferenceWorker, WorkerStats
from diffusion_policy_ros.control.limits import JointLimits, clamp_trajectory
from diffusion_policy_ros.control.observation import (JOINT_STATE_STREAM, ObservationHistory,
                                                      ObservationWindow, StampedRingBuffer)
from diffusion_policy_ros.control.stats import RollingPercentiles

__all__ = [
    'ActionChunk', 'ChunkExecutor', 'ExecutorConfig', 'ExecutorStats', 'HealthMonitor', 'HealthState',
    'HealthVerdict', 'HoldCode', 'HoldReason', 'stream_age_reason', 'InferenceWorker', 'WorkerStats',
    'JointLimits', 'clamp_trajectory', 'JOINT_STATE_STREAM', 'ObservationHistory', 'ObservationWindow',
    'StampedRingBuffer', 'RollingPercentiles', 'ControllerConfig', 'PolicyController', 'TickResult',
]
