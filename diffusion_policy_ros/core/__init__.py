"""The diffusion policy itself (PyTorch, no ROS): schedules, samplers, denoisers, encoders,
normaliser, policies and checkpoints.

Nothing is imported here, so `core.config` (the dataclasses every part shares) stays free of PyTorch.
"""
