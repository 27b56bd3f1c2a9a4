"""`bringup`: start the package's nodes from the same params files the launch files use, and drive
their lifecycle to active. It stands in for `ros2 launch` where launch_ros is not installed.

    bringup --config config/sim.yaml     # sim robot + policy + collision guard
    bringup --robot                      # policy + collision guard for a real arm

A bring-up file is an ordinary ROS 2 params file; its `bringup.ros__parameters.nodes` lists the nodes
to start, each with the params files it reads (default: the bring-up file itself). Ctrl-C stops all.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

from diffusion_policy_ros.errors import ignore_stop_signals, stop_on_signals
from diffusion_policy_ros.nodes.dds import apply_dds_profile, clean_stale_shared_memory
from diffusion_policy_ros.nodes.params import load_params_file
from diffusion_policy_ros.paths import share_dir

# Executable name -> module, and whether the node is a LifecycleNode bring-up has to drive.
NODES: dict[str, tuple[str, bool]] = {
    'sim_robot_node': ('diffusion_policy_ros.nodes.sim_robot_node', False),
    'collision_guard_node': ('diffusion_policy_ros.nodes.collision_guard_node', True),
    'policy_node': ('diffusion_policy_ros.nodes.policy_node', True),
}


def resolve_config(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p.resolve()
    candidate = share_dir() / p
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f'bring-up file not found: {path} (also looked in {share_dir()})')


NODE_LOG = 'nodes.log'  # where `dp-ros demo` and `replay` put the nodes' output, in their --out folder


class NodeLog:
    """The nodes' output as a text stream: into a file, and with `echo` onto the terminal too."""

    def __init__(self, path: Path, echo: bool = False) -> None:
        self.path = path
        self._file = path.open('a', buffering=1)
        self._echo = echo

    def write(self, text: str) -> None:
        self._file.write(text)
        if self._echo:
            sys.stdout.write(text)

    def flush(self) -> None:
        self._file.flush()
        if self._echo:
            sys.stdout.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class NodeLaunch:
    executable: str
    params_files: list[Path]
    extra_args: list[str] = field(default_factory=list)

    @property
    def lifecycle(self) -> bool:
        return NODES[self.executable][1]

    def command(self) -> list[str]:
        args = [sys.executable, '-m', NODES[self.executable][0], '--ros-args']
        for params in self.params_files:
            args += ['--params-file', str(params)]
        if self.lifecycle:
            args += ['-p', 'autostart:=false']  # bring-up drives the transitions itself
        return args + self.extra_args


def plan_bringup(config: Path, overrides: list[str] | None = None) -> list[NodeLaunch]:
    """The nodes a bring-up file asks for, in start order, with their params files."""
    params = load_params_file(config, 'bringup')
    names = params.get('nodes')
    if not names:
        raise ValueError(f'{config}: bringup.ros__parameters.nodes lists no nodes')
    launches = []
    for name in names:
        if name not in NODES:
            raise ValueError(f'{config}: unknown node {name!r}; known: {sorted(NODES)}')
        files = [resolve_config(f) for f in params.get(f'{name}_params', [])] or [config]
        extra = [a for o in (overrides or []) if o.startswith(name + '.') for a in ('-p', o[len(name) + 1:])]
        launches.append(NodeLaunch(name, files, extra))
    return launches


class BringUp:
    """Runs node processes, drives lifecycle nodes to active, and stops everything on request."""

    def __init__(self, launches: list[NodeLaunch], transition_timeout_s: float = 60.0,
                 log: TextIO | None = None):
        """`log`: where the nodes' output goes, each line prefixed with the node's name (default stdout)."""
        self.launches = launches
        self.timeout = transition_timeout_s
        self.log = log
        self.processes: dict[str, subprocess.Popen] = {}
        self._node = None

    def start(self) -> None:
        print(f'[bringup] {clean_stale_shared_memory()}', file=self.log or sys.stdout, flush=True)
        for launch in self.launches:
            # The whole environment goes to the child: the ROS wheels' bootstrap needs LD_LIBRARY_PATH.
            proc = subprocess.Popen(launch.command(), env=os.environ.copy(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1)
            self.processes[launch.executable] = proc
            threading.Thread(target=self._relay, args=(launch.executable, proc, self.log or sys.stdout),
                             daemon=True).start()
        if not rclpy.ok():
            # No rclpy signal handlers: they would swallow SIGINT/SIGTERM (shut the context down without
            # raising), and bring-up would wait forever; main() turns both signals into a clean stop.
            rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        self._node = rclpy.create_node('bringup')
        for launch in self.launches:
            if launch.lifecycle:
                self._activate(launch.executable)

    @staticmethod
    def _relay(name: str, proc: subprocess.Popen, out: TextIO) -> None:
        for line in proc.stdout:
            out.write(f'[{name}] {line}')
            out.flush()

    def _call(self, client, request):
        if not client.wait_for_service(timeout_sec=self.timeout):
            raise TimeoutError(f'service {client.srv_name} did not appear within {self.timeout:.0f} s')
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self._node, future, timeout_sec=self.timeout)
        if not future.done():
            raise TimeoutError(f'service {client.srv_name} did not answer within {self.timeout:.0f} s')
        return future.result()

    def _activate(self, name: str) -> None:
        change = self._node.create_client(ChangeState, f'/{name}/change_state')
        get = self._node.create_client(GetState, f'/{name}/get_state')
        for transition, label in ((Transition.TRANSITION_CONFIGURE, 'configure'),
                                  (Transition.TRANSITION_ACTIVATE, 'activate')):
            self._check_alive(name)
            result = self._call(change, ChangeState.Request(transition=Transition(id=transition)))
            if not result.success:
                state = self._call(get, GetState.Request()).current_state.label
                raise RuntimeError(f'{name}: {label} failed (now {state}); see its log above')
        print(f'[bringup] {name} is active', file=self.log or sys.stdout, flush=True)

    def _check_alive(self, name: str) -> None:
        code = self.processes[name].poll()
        if code is not None:
            raise RuntimeError(f'{name} exited with code {code} during bring-up')

    def failed(self) -> str | None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                return f'{name} exited with code {proc.returncode}'
        return None

    def stop(self, timeout_s: float = 10.0, own_signal_after_s: float = 0.3) -> None:
        """SIGINT to every node still running after `own_signal_after_s` (a terminal's Ctrl-C has already
        reached them all: they are stopping, and a second signal at once would land in their clean-up),
        then wait up to `timeout_s` before killing."""
        grace_end = time.monotonic() + own_signal_after_s
        while time.monotonic() < grace_end and any(p.poll() is None for p in self.processes.values()):
            time.sleep(0.02)
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._node is not None:
            self._node.destroy_node()
            self._node = None


BRINGUP_EXIT_CODES = ('exit codes: 0 stopped by SIGINT/SIGTERM; 1 a node failed to start or exited; '
                      '2 a usage error')


def main(argv: list[str] | None = None) -> int:
    from diffusion_policy_ros.cli import HelpFormatter
    parser = argparse.ArgumentParser(
        prog='bringup', formatter_class=HelpFormatter, epilog=BRINGUP_EXIT_CODES,
        description="start the package's nodes from the params files the launch files use, and drive their "
                    "lifecycle to active (for where launch_ros is not installed). SIGINT or SIGTERM stops them all.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--config', default='config/sim.yaml',
                       help='bring-up params file (its bringup.ros__parameters.nodes lists the nodes)')
    group.add_argument('--robot', action='store_true', help='use config/robot.yaml (policy + guard only)')
    parser.add_argument('--set', action='append', default=[], metavar='NODE.PARAM:=VALUE',
                        help='override a parameter of one node, e.g. policy_node.device:=cpu')
    args = parser.parse_args(rclpy.utilities.remove_ros_args(sys.argv)[1:] if argv is None else argv)
    try:
        config = resolve_config('config/robot.yaml' if args.robot else args.config)
        launches = plan_bringup(config, args.set)
    except (FileNotFoundError, ValueError) as err:  # a wrong path or bring-up file: one line, no traceback
        parser.exit(2, f'bringup: error: {err}\n')
    apply_dds_profile()  # for bring-up's own participant and, inherited, for every node it starts
    bringup = BringUp(launches)

    stop_on_signals()  # SIGINT from a terminal or a supervisor, SIGTERM from systemd or `kill`: both stop all
    code = 0
    try:
        bringup.start()
        print('[bringup] all nodes up; Ctrl-C stops them', flush=True)
        while (reason := bringup.failed()) is None:
            time.sleep(0.5)
        print(f'[bringup] {reason}; stopping the others', flush=True)
        code = 1
    except KeyboardInterrupt as stop:
        print(f'[bringup] {str(stop) or "SIGINT"}: stopping every node', flush=True)
    except (RuntimeError, TimeoutError) as err:
        print(f'[bringup] {err}', file=sys.stderr, flush=True)
        code = 1
    finally:
        ignore_stop_signals()
        bringup.stop()
        if rclpy.ok():
            rclpy.shutdown()
        print('[bringup] stopped', flush=True)
    return code


if __name__ == '__main__':
    sys.exit(main())
