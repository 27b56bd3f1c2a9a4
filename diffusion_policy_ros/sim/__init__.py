"""The MuJoCo simulator: the Panda on a table, tasks, scripted experts and demo recording.

No ROS here; `nodes/` wraps it. MuJoCo reads MUJOCO_GL when it is first imported, so the
headless EGL default is set before any submodule imports it.
"""
import os

os.environ.setdefault('MUJOCO_GL', 'egl')
