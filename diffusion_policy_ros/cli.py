"""`dp-ros`: the user command line.

Each sub-command lives next to the code it drives and is imported only when it runs, so
`dp-ros --help` stays fast and one broken optional dependency cannot take every command down.
A command module provides `add_arguments(parser)` and `run(args) -> int`, and may set `EXIT_CODES`
(the epilog of its --help) when its codes differ from the common ones below.

Every command: a user error (a `UserError`, a ValueError, a path that does not exist) prints one line and exits 2
without a traceback (`--debug` shows it); SIGINT and SIGTERM stop it as Ctrl-C does, with exit code 0;
an output folder the command created and left empty is removed.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import signal
import sys
import traceback
from pathlib import Path

from diffusion_policy_ros import __version__
from diffusion_policy_ros.errors import UserError, stop_on_signals

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
    'viz-denoise': ('diffusion_policy_ros.sim.visualize', 'plot an action chunk going from noise to actions'),
    'replay': ('diffusion_policy_ros.nodes.replay', 'replay a rosbag through the nodes and score them'),
}

DESCRIPTION = ('diffusion policies on ROS 2: record demonstrations, train, evaluate in sim, replay bags, '
               'and run the closed-loop demo. "dp-ros COMMAND --help" explains each command.')
EXIT_CODES = ('exit codes: 0 done (also when stopped by SIGINT/SIGTERM); 1 the job ran and failed, '
              'its summary says why; 2 a usage or input error, named in one line')
# Errors from paths the user typed, and the ValueErrors input validation raises throughout (a wrong
# setting, a checkpoint of the wrong kind): one line is the whole story, --debug has the traceback.
PLAIN_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, ValueError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default unless it is None/False or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or default == [] or 'default' in text
                or not action.option_strings):
            return text
        shown = ' '.join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f'{text} (default: {shown})'.lstrip()


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dp-ros', description=DESCRIPTION, epilog=EXIT_CODES,
                                     formatter_class=HelpFormatter)
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    parser.add_argument('--debug', action='store_true', help='show the traceback of a user error')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (module, help_text) in _available().items():
        # add_help=False: `dp-ros NAME --help` must reach the command's own parser (built below).
        sub.add_parser(name, help=help_text, add_help=False).set_defaults(_module=module)
    return parser


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The parser of one command, and its module."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f'dp-ros {name}', description=COMMANDS[name][1],
                                     epilog=getattr(module, 'EXIT_CODES', EXIT_CODES), formatter_class=HelpFormatter)
    parser.add_argument('--debug', action='store_true', help='show the traceback of a user error')
    module.add_arguments(parser)
    return parser, module


def _empty_tree(path: Path) -> bool:
    return path.is_dir() and all(p.is_dir() for p in path.rglob('*'))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    head, unknown = parser.parse_known_args(argv)
    if unknown and (head.command is None or argv.index(unknown[0]) < argv.index(head.command)):
        parser.error(f'unrecognized arguments: {" ".join(unknown)}')
    if head.command is None:
        parser.print_help()
        parser.exit(2, f'\n{parser.prog}: error: give a COMMAND\n')
    from diffusion_policy_ros.nodes.dds import apply_dds_profile
    apply_dds_profile()  # before any command starts DDS (demo, replay) or a node process
    command_index = argv.index(head.command)
    sub, module = command_parser(head.command)
    args = sub.parse_args(argv[command_index + 1:])
    debug = head.debug or args.debug
    out = getattr(args, 'out', None)
    out = Path(out) if isinstance(out, (str, Path)) else None
    out_existed = out is not None and out.exists()
    previous_handlers = stop_on_signals()  # SIGTERM stops a command as Ctrl-C does
    code = 1
    try:
        code = int(module.run(args) or 0)
    except KeyboardInterrupt as stop:
        print(f'{sub.prog}: stopped by {str(stop) or "SIGINT"}', flush=True)
        code = 0
    except (UserError, *PLAIN_ERRORS) as err:
        if debug:
            traceback.print_exc()
        hint = '' if debug else ' (--debug shows the traceback)'
        print(f'{sub.prog}: error: {err}{hint}', file=sys.stderr, flush=True)
        code = 2
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if code != 0 and out is not None and not out_existed and _empty_tree(out):
            shutil.rmtree(out, ignore_errors=True)  # a failed command leaves nothing behind
    return code


if __name__ == '__main__':
    sys.exit(main())
