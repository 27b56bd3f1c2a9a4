"""`dp-ros`: the user command line.

Each sub-command lives next to the code it drives and is imported only when it runs, so
`dp-ros --help` stays fast and one broken optional dependency cannot take every command down.
A command module provides `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help). Keep in the order a user meets them.
COMMANDS: dict[str, tuple[str, str]] = {
    'demo': ('diffusion_policy_ros.nodes.demo', 'run the closed-loop demo (sim robot + policy + guard)'),
    'demos': ('diffusion_policy_ros.sim.record_demos', 'record scripted expert demonstrations as rosbag2'),
    'dataset': ('diffusion_policy_ros.data.convert', 'convert rosbag2 demonstrations to a zarr dataset'),
    'train': ('diffusion_policy_ros.training.train', 'train a policy on a zarr dataset'),
    'distill': ('diffusion_policy_ros.training.distill', 'distil a trained policy into a 1- or 2-step student'),
    'export': ('diffusion_policy_ros.training.export', 'write a checkpoint with half-precision weights for release'),
    'eval': ('diffusion_policy_ros.sim.evaluate', 'closed-loop success rate of a checkpoint in sim'),
    'bench-planning': ('diffusion_policy_ros.sim.bench_planning',
                       'diffusion alone vs + collision guard vs classical planning, static and moving obstacles'),
    'sweep': ('diffusion_policy_ros.sim.sweeps', 'DDIM-steps / action-horizon sweeps in sim'),
    'viz-denoise': ('diffusion_policy_ros.core.visualize', 'plot an action chunk going from noise to actions'),
    'replay': ('diffusion_policy_ros.nodes.replay', 'replay a rosbag through the nodes and score them'),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dp-ros', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (module, help_text) in _available().items():
        # add_help=False: `dp-ros NAME --help` must reach the command's own parser (built below).
        sub.add_parser(name, help=help_text, add_help=False).set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    head = parser.parse_known_args(argv)[0]
    if head.command is None:
        parser.print_help()
        return 2
    from diffusion_policy_ros.nodes.dds import apply_dds_profile
    apply_dds_profile()  # before any command starts DDS (demo, replay) or a node process
    module = importlib.import_module(head._module)
    sub = argparse.ArgumentParser(prog=f'dp-ros {head.command}', description=COMMANDS[head.command][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
