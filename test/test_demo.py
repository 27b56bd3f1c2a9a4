"""`make demo`'s job, one episode: the stack comes up from config/sim.yaml, runs, and reports."""
import json
import os
import subprocess
import sys

import pytest

from ros_helpers import ROOT

pytestmark = pytest.mark.ros
REPORT_FIELDS = {'task', 'episodes', 'success_rate', 'successes', 'inference_latency_p50_ms',
                 'inference_latency_p99_ms', 'publish_rate_hz', 'hold_seconds', 'blocked_chunks',
                 'fallbacks_planned', 'guard_backend', 'stack_ok', 'gif', 'wall_seconds'}


def test_demo_one_episode_writes_a_complete_report(tmp_path):
    out = tmp_path / 'demo'
    proc = subprocess.run([sys.executable, '-m', 'diffusion_policy_ros.cli', 'demo', '--episodes', '1',
                           '--out', str(out)], cwd=ROOT, env=os.environ.copy(), capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads((out / 'demo_report.json').read_text())
    assert REPORT_FIELDS <= set(report), REPORT_FIELDS - set(report)
    assert report['stack_ok'] is True
    assert len(report['episodes']) == 1 and {'seed', 'success', 'sim_seconds'} <= set(report['episodes'][0])
    assert 9.0 <= report['publish_rate_hz'] <= 11.0
    assert report['guard_backend'] == 'embedded'
    assert (out / 'demo_episode1.gif').stat().st_size > 1000
    assert 'episode 1/1' in proc.stdout and 'stack OK' in proc.stdout
    # Quiet: only the demo's own lines on the terminal, the nodes' logs in a file beside the report.
    assert all(line.startswith('[demo] ') for line in proc.stdout.splitlines() if line), proc.stdout
    assert proc.stderr == '', proc.stderr
    assert '[policy_node]' in (out / 'nodes.log').read_text()
    # Rounded numbers in the report (no 17-digit floats): six significant digits at most, so 0.000591452
    # (a short hold) is as rounded as 22.2288 (a regex on decimal places failed on the former).
    def floats(value):
        if isinstance(value, float):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from floats(v)
        elif isinstance(value, list):
            for v in value:
                yield from floats(v)
    unrounded = [v for v in floats(report) if float(f'{v:.6g}') != v]
    assert not unrounded, unrounded
    # The GIF plays at the camera's sim-time rate (10 Hz here), not at a viewer's default.
    from PIL import Image
    with Image.open(out / 'demo_episode1.gif') as gif:
        durations = []
        for index in range(gif.n_frames):  # (Pillow merges identical frames, adding their delays)
            gif.seek(index)
            durations.append(gif.info['duration'])
    assert durations[0] >= 100 and all(d % 100 == 0 for d in durations), durations  # 10 Hz camera
