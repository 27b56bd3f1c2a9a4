"""The whole stack over DDS: sim_robot_node + policy_node (shipped reach_around checkpoint) +
collision_guard_node, on sim time. A box is added to the guard's scene at run time, right where the
policy wants to go: the guard must block those chunks and the arm must never enter the box."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from visualization_msgs.msg import Marker, MarkerArray

from diffusion_policy_ros.collision.checker import CollisionChecker
from diffusion_policy_ros.collision.robot_model import RobotModel
from diffusion_policy_ros.collision.scene import Scene, SceneObject
from diffusion_policy_ros.robot_description import panda_description

from ros_helpers import ROOT, NodeProcess, SpinningNode, wait_for, watch_sim_and_guard

pytestmark = pytest.mark.ros
CHECKPOINT = ROOT / 'models' / 'reach_around'
# Around the reach_around target (0.72, 0, 0.10): every path of the policy ends inside it.
BOX_CENTER, BOX_SIZE = (0.72, 0.0, 0.10), (0.16, 0.16, 0.12)


def box_marker() -> MarkerArray:
    marker = Marker(ns='perception', id=1, type=Marker.CUBE, action=Marker.ADD, text='test_box')
    marker.header.frame_id = 'panda_link0'
    marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = BOX_CENTER
    marker.pose.orientation.w = 1.0
    marker.scale.x, marker.scale.y, marker.scale.z = BOX_SIZE
    return MarkerArray(markers=[marker])


def test_arm_never_enters_an_obstacle_added_to_the_scene():
    assert (CHECKPOINT / 'config.json').is_file(), 'the shipped reach_around checkpoint is missing'
    sim = NodeProcess('diffusion_policy_ros.nodes.sim_robot_node',
                      {'task': 'reach_around', 'seed': 1000, 'camera_rate_hz': 2.0})
    guard = NodeProcess('diffusion_policy_ros.nodes.collision_guard_node', {'use_sim_time': True})
    policy = NodeProcess('diffusion_policy_ros.nodes.policy_node', {
        'checkpoint': str(CHECKPOINT), 'camera_topics': [], 'use_sim_time': True, 'torch_threads': 1,
        'output_topic': '/policy/joint_trajectory', 'num_inference_steps': 5})
    probe = SpinningNode('stack_probe')
    lock = threading.Lock()
    states: list[np.ndarray] = []
    recording = threading.Event()

    def on_joints(msg: JointState) -> None:
        if recording.is_set():
            with lock:
                states.append(np.array(msg.position))

    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node = probe.node
    node.create_subscription(JointState, '/joint_states', on_joints, qos_profile_sensor_data)
    status, guard_diag = watch_sim_and_guard(node)
    scene_pub = node.create_publisher(MarkerArray, '/collision_scene', latched)
    try:
        wait_for(lambda: guard_diag.get('scene_objects') is not None or not guard.alive(), 90, 'guard diagnostics')
        # The box first, as a perception node would add it (its own ns: the sim's reset republishes only
        # the sim's scene), and only then a fresh episode: the arm starts at home, outside the box, so
        # however late a loaded machine runs the nodes, every state recorded must be outside it.
        scene_pub.publish(box_marker())
        wait_for(lambda: 'test_box' in guard_diag.get('scene_objects', ''), 30,
                 f'the guard to take the box into its scene (diagnostics {guard_diag})')
        from std_srvs.srv import Trigger
        reset = node.create_client(Trigger, '/sim_robot_node/reset')
        assert reset.wait_for_service(timeout_sec=30)
        episode = status.get('episode', 0)
        reset.call_async(Trigger.Request())
        wait_for(lambda: status.get('episode', 0) > episode, 30, 'the episode to restart')
        recording.set()
        wait_for(lambda: 'test_box' in guard_diag.get('scene_objects', ''), 5, 'the box to outlive the reset')
        wait_for(lambda: status.get('done') or not (sim.alive() and policy.alive() and guard.alive()),
                 120, 'the episode to end')
        recording.clear()
        assert sim.alive() and policy.alive() and guard.alive(), policy.output + guard.output
        assert int(guard_diag.get('blocked_chunks', '0')) > 0, f'the guard blocked nothing: {guard_diag}'
        assert not status.get('success'), 'the target is inside the box: reaching it means entering it'
        # Independent check of every measured state against the box alone, with no padding.
        description = panda_description()
        model = RobotModel.from_urdf(description.urdf_text(), description.srdf_text())
        checker = CollisionChecker(model, Scene([SceneObject('test_box', 'box', BOX_SIZE, BOX_CENTER)]))
        with lock:
            measured = list(states)
        assert len(measured) > 100
        inside = [i for i, q in enumerate(measured) if checker.check_state(q).kind == 'scene_collision']
        assert inside == [], f'{len(inside)} measured states inside the box'
    finally:
        probe.close()
        for proc in (policy, guard, sim):
            proc.stop()
