"""The checkpoints in models/ load and still do their job in closed loop (a short eval on held-out
seeds, with bounds an untrained or broken policy fails)."""
import json
from pathlib import Path

import pytest

from diffusion_policy_ros.core.checkpoint import load_checkpoint
from diffusion_policy_ros.sim.evaluate import evaluate

MODELS = Path(__file__).resolve().parents[1] / 'models'


@pytest.mark.parametrize('name', ['reach_around', 'reach_around_bc', 'pick_place', 'pick_place_fast',
                                  'reach_around_fast'])
def test_shipped_checkpoint_has_weights_config_and_commands(name):
    folder = MODELS / name
    policy = load_checkpoint(folder)
    assert policy.action_spec.dim == 8
    assert (folder / 'README.md').read_text().count('dp-ros') >= 2  # the commands that made it
    assert (folder / 'model.safetensors').stat().st_size < 12 * 2**20  # small enough for git


@pytest.mark.parametrize('name', ['reach_around', 'reach_around_fast'])
def test_reach_around_diffusion_policy_succeeds_both_ways(name):
    report = evaluate(MODELS / name, 'reach_around', episodes=10, seed=2000, latency_s=0.1)
    summary = report.to_dict()
    sides = summary['reach_around']['success_sides']
    assert summary['success_rate'] >= 0.8, json.dumps(summary['reach_around'])
    assert sides.get('left', 0) >= 2 and sides.get('right', 0) >= 2, sides


def test_pick_place_camera_policy_picks_and_places():
    """The camera policy finds the cube wherever it lies (seeds 2000.. are held out from the demos)."""
    policy = load_checkpoint(MODELS / 'pick_place')
    assert policy.obs_spec.camera_keys == ['camera']
    report = evaluate(policy, 'pick_place', episodes=6, seed=2000, latency_s=0.1).to_dict()
    outcomes = [(e['seed'], e['success']) for e in report['episodes']]
    assert report['success_rate'] >= 4 / 6, outcomes


def test_an_untrained_policy_fails_the_same_evaluation():
    """The bound above means something: the same architecture with fresh weights does not pass it."""
    import torch
    policy = load_checkpoint(MODELS / 'reach_around')
    torch.manual_seed(0)
    for module in policy.denoiser.modules():
        if hasattr(module, 'reset_parameters'):
            module.reset_parameters()
    report = evaluate(policy, 'reach_around', episodes=4, seed=2000, latency_s=0.1)
    assert report.to_dict()['success_rate'] < 0.8


@pytest.mark.parametrize('student, teacher', [('pick_place_fast', 'pick_place'), ('reach_around_fast', 'reach_around')])
def test_students_sample_in_one_evaluation_with_their_teachers_network(student, teacher):
    """A distilled student is an ordinary checkpoint: one network evaluation, clean-chunk prediction,
    the teacher's windows, normaliser and execution settings (so every consumer runs it unchanged)."""
    s, t = load_checkpoint(MODELS / student), load_checkpoint(MODELS / teacher)
    assert (s.cfg.sampler.kind, s.cfg.sampler.num_inference_steps, s.cfg.sampler.prediction_type) == ('ddim', 1, 'sample')
    assert (s.cfg.horizon, s.cfg.n_obs_steps, s.obs_spec, s.action_spec) == (t.cfg.horizon, t.cfg.n_obs_steps,
                                                                             t.obs_spec, t.action_spec)
    assert s.cfg.execution == t.cfg.execution
    assert sum(p.numel() for p in s.parameters()) == sum(p.numel() for p in t.parameters())


def test_pick_place_student_picks_and_places_in_one_step():
    """The shipped 1-step student on the CI seeds (held out from its demonstrations and its distillation)."""
    report = evaluate(MODELS / 'pick_place_fast', 'pick_place', episodes=6, seed=2000, latency_s=0.1).to_dict()
    outcomes = [(e['seed'], e['success']) for e in report['episodes']]
    assert sum(e['success'] for e in report['episodes']) >= 5, outcomes
