"""The command line a new user meets (issue 16): complete help, a version, one-line errors, nothing left
behind by a failed command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_policy_ros import __version__
from diffusion_policy_ros.cli import COMMANDS, command_parser

ROOT = Path(__file__).resolve().parents[1]


def dp_ros(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'diffusion_policy_ros.cli', *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_every_option_of_every_command_explains_itself(name):
    parser, _module = command_parser(name)
    for action in parser._actions:
        label = '/'.join(action.option_strings) or action.dest
        assert action.help, f'dp-ros {name} {label}: no help text'
        assert '`' not in action.help, f'dp-ros {name} {label}: markdown in help: {action.help}'
    text = parser.format_help()
    assert 'exit codes:' in text
    # A default worth knowing is shown: every option with a non-trivial default says it.
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, [], '==SUPPRESS=='):
            helped = parser._get_formatter()._get_help_string(action)
            assert 'default' in helped, f'dp-ros {name} {action.option_strings}: default {action.default!r} not shown'


def test_version_and_unknown_flags_and_no_command():
    out = dp_ros('--version')
    assert out.returncode == 0 and out.stdout.strip() == f'dp-ros {__version__}'
    out = dp_ros('--frobnicate')
    assert out.returncode == 2 and 'error: unrecognized arguments: --frobnicate' in out.stderr
    assert len(out.stderr.splitlines()) <= 3  # usage + the error, not the whole help
    out = dp_ros('demo', '--frobnicate')
    assert out.returncode == 2 and 'error: unrecognized arguments: --frobnicate' in out.stderr
    out = dp_ros()
    assert out.returncode == 2 and 'give a COMMAND' in out.stderr and 'replay' in out.stdout


def test_a_mistyped_checkpoint_is_one_line_and_leaves_no_output_folder(tmp_path):
    out_dir = tmp_path / 'eval_out'
    out = dp_ros('eval', '--checkpoint', str(tmp_path / 'runs' / 'typo'), '--task', 'reach_around', '--episodes', '1',
                 '--out', str(out_dir))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in out.stderr, out.stderr
    assert 'typo: no such checkpoint directory' in lines[0] and '--debug' in lines[0]
    assert not out_dir.exists()
    debug = dp_ros('--debug', 'eval', '--checkpoint', str(tmp_path / 'typo'), '--task', 'reach_around',
                   '--out', str(out_dir))
    assert debug.returncode == 2 and 'Traceback' in debug.stderr and 'CheckpointError' in debug.stderr


def test_bringup_help_is_whole_and_plain():
    out = subprocess.run([sys.executable, '-m', 'diffusion_policy_ros.nodes.bringup', '--help'], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and '`' not in out.stdout
    assert 'SIGINT or SIGTERM stops them all.' in ' '.join(out.stdout.split()) and 'exit codes:' in out.stdout
    missing = subprocess.run([sys.executable, '-m', 'diffusion_policy_ros.nodes.bringup', '--config', 'nope.yaml'],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr
    assert lines[0].startswith('bringup: error: bring-up file not found: nope.yaml (also looked in ')
