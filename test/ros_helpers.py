"""Helpers for integration tests over real DDS on loopback: node subprocesses, a spinning test node,
and waiting on conditions (never fixed sleeps)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

ROOT = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')


class NodeProcess:
    """A node run as `python -m MODULE --ros-args ...` with the whole environment passed on (the ROS
    wheels' bootstrap needs LD_LIBRARY_PATH); its output is kept for assertion messages."""

    def __init__(self, module: str, params: dict[str, object] | None = None, extra_args: list[str] | None = None):
        args = [sys.executable, '-m', module, '--ros-args']
        for key, value in (params or {}).items():
            args += ['-p', f'{key}:={_param_text(value)}']
        args += extra_args or []
        self.proc = subprocess.Popen(args, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return ''.join(self.lines[-80:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _param_text(value: object) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(_param_text(v) for v in value) + ']'
    return str(value)


class SpinningNode:
    """A test-side rclpy node spun by a background executor."""

    def __init__(self, name: str):
        if not rclpy.ok():
            rclpy.init()
        self.node = Node(name)
        self.executor = SingleThreadedExecutor()  # the multi-threaded one busy-polls a core
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def watch_sim_and_guard(node: Node) -> tuple[dict, dict[str, str]]:
    """Subscribe `node` to the sim's task status (latched JSON) and the guard's /diagnostics values;
    returns the two dicts the callbacks keep up to date."""
    import json

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from std_msgs.msg import String
    status: dict = {}
    guard_diag: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.startswith('collision_guard_node'):
                guard_diag.update({kv.key: kv.value for kv in s.values})

    node.create_subscription(String, '/sim_robot_node/task_status', lambda msg: status.update(json.loads(msg.data)),
                             QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)
    return status, guard_diag
