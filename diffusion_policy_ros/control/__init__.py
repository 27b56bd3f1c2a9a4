"""Real-time execution without ROS: chunk executor, limits, observation history, health, worker.

`nodes/policy_node.py` is a thin rclpy adapter over these; everything here runs and is tested
without a ROS graph.

Nothing is imported here: the collision guard uses `health`, `limits` and `measurement` and must not
pay for PyTorch (`controller` and `inference_worker` reach it through `core`): 200 MB of RSS and
2.6 s of start-up it never uses.
"""
