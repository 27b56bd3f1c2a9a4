"""The planning benchmark's arms (sim/hybrid.py) and its quick mode, as CI runs it."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from diffusion_policy_ros.sim.bench_planning import ARMS, SCENES, add_arguments, run, run_classical
from diffusion_policy_ros.sim.hybrid import on_control_grid


@pytest.mark.parametrize('task', ['reach_around', 'pick_place'])
def test_the_classical_pipeline_succeeds_on_the_static_tasks(task):
    outcomes, costs = run_classical(task, list(range(1000, 1010)))
    assert sum(o.success for o in outcomes) >= 9, [(o.seed, o.info) for o in outcomes if not o.success]
    assert costs.fallbacks >= len(outcomes) and costs.plan_s  # it planned every episode


def test_trajectories_are_resampled_on_the_control_grid():
    start = np.zeros(2)
    grid = on_control_grid(start, np.array([[1.0, 2.0], [1.0, 4.0]]), np.array([0.15, 0.3]), 0.1)
    np.testing.assert_allclose(grid, [[2 / 3, 4 / 3], [1.0, 2 + 2 / 3], [1.0, 4.0]])


def test_quick_mode_writes_every_field(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(['--quick', '--out', str(tmp_path)])) == 0
    document = json.loads((tmp_path / 'bench_planning.json').read_text())
    cells = document['results']['reach_around']
    assert set(cells) == set(SCENES)
    fields = {'episodes', 'successes', 'success_rate', 'success_ci95', 'episodes_with_contact', 'contacts',
              'time_to_success_s', 'path_length_rad', 'mean_squared_jerk', 'inference_ms', 'check_ms', 'plan_ms',
              'fallbacks', 'replans', 'holds', 'evasions', 'seeds', 'failed_seeds'}
    for scene in SCENES:
        assert set(cells[scene]) == set(ARMS)
        for arm in ARMS:
            row = cells[scene][arm]
            assert fields <= set(row) and row['episodes'] == 2, (scene, arm, row)
            assert row['path_length_rad'] > 0
        assert cells[scene]['policy']['inference_ms']['p50'] > 0 and cells[scene]['hybrid']['check_ms']['p50'] > 0
        assert cells[scene]['classical']['plan_ms']['p50'] > 0
    table = (tmp_path / 'table.md').read_text()
    assert table.count('| reach_around |') == len(ARMS) * len(SCENES)
    assert (tmp_path / 'bench_planning.png').stat().st_size > 10_000
