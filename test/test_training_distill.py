"""`dp-ros distill`: a 1- or 2-step student from a teacher, end to end and on the bimodal toy task."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
import yaml

from diffusion_policy_ros.cli import main as cli_main
from diffusion_policy_ros.core.checkpoint import load_checkpoint
from diffusion_policy_ros.data.windows import save_windows
from diffusion_policy_ros.training.distill import (BANK_FILE, DistillSection, DistillationLoss, TeacherChunkBank,
                                                   continue_from, make_student)
from diffusion_policy_ros.training.train import TrainError
from diffusion_policy_ros.training.plots import read_metrics
from diffusion_policy_ros.training.synthetic import write_synthetic_dataset

from test_core_bimodal import STATE_DIM, mode_of, sample, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def teacher(tmp_path_factory) -> Path:
    """A tiny diffusion policy trained a few steps on a synthetic state dataset."""
    tmp = tmp_path_factory.mktemp('teacher')
    data = write_synthetic_dataset(tmp / 'state.zarr', n_episodes=5, episode_length=30, camera_keys=(), seed=2)
    assert cli_main(['train', '--config', str(ROOT / 'config' / 'train_tiny.yaml'), '--data', str(data),
                     '--out', str(tmp / 'run'), '--steps', '6', '--no-progress']) == 0
    return tmp / 'run' / 'checkpoints' / 'latest'


def small_config(path: Path, every: int = 5, **distill) -> Path:
    """config/distill.yaml sized for a few steps, with `distill` section overrides, written to `path`."""
    config = yaml.safe_load((ROOT / 'config' / 'distill.yaml').read_text())
    config['distill'].update(distill)
    config['train'].update(batch_size=8, val_every=every, checkpoint_every=every, log_every=every)
    path.write_text(yaml.safe_dump(config))
    return path


def distill(teacher: Path, run: Path, config: Path, steps: int) -> int:
    """`dp-ros distill` of `teacher` on the teacher's own dataset."""
    data = json.loads((teacher / 'config.json').read_text())['provenance']['dataset']
    return cli_main(['distill', '--teacher', str(teacher), '--data', data, '--out', str(run), '--config', str(config),
                     '--steps', str(steps), '--no-progress'])


@pytest.mark.parametrize('student_steps', [1, 2])
def test_distill_writes_a_student_that_samples_with_its_own_number_of_evaluations(tmp_path, teacher, student_steps):
    run = tmp_path / 'student'
    assert distill(teacher, run, small_config(tmp_path / 'distill.yaml', student_steps=student_steps), 10) == 0
    student = load_checkpoint(run / 'checkpoints' / 'latest')
    sampler = student.cfg.sampler
    assert (sampler.kind, sampler.num_inference_steps, sampler.prediction_type, sampler.timestep_spacing) == \
        ('ddim', student_steps, 'sample', 'trailing')
    calls = []
    student.denoiser.register_forward_hook(lambda *_: calls.append(1))
    window = {'state': np.zeros((student.cfg.n_obs_steps, student.obs_spec.state_dim), np.float32)}
    chunk = student.predict_action_chunk(window)
    assert chunk.shape == (student.cfg.horizon, student.action_spec.dim) and np.isfinite(chunk).all()
    assert len(calls) == student_steps
    rows = read_metrics(run / 'metrics.csv')
    assert [r['step'] for r in rows] == [5, 10] and all(np.isfinite(r['val_loss']) for r in rows)
    provenance = json.loads((run / 'checkpoints' / 'latest' / 'config.json').read_text())['provenance']
    assert provenance['teacher'] == str(teacher.resolve()) and provenance['distill']['student_steps'] == student_steps
    # resume continues the same distillation (teacher and settings from the run)
    assert cli_main(['distill', '--resume', str(run), '--steps', '12', '--no-progress']) == 0
    assert read_metrics(run / 'metrics.csv')[-1]['step'] == 12


def test_distill_refuses_a_missing_teacher_with_one_line(tmp_path, capsys):
    assert cli_main(['distill', '--teacher', str(tmp_path / 'nope'), '--data', str(tmp_path), '--out',
                     str(tmp_path / 'run')]) == 2
    assert 'dp-ros distill: error' in capsys.readouterr().err


@pytest.mark.slow
def test_a_one_step_student_keeps_both_modes_where_the_teachers_own_one_step_ddim_fails():
    """The bimodal toy task: one observation, two demonstrated ways to act. The teacher's DDIM with one
    step lands between the modes; the distilled one-step student samples both."""
    teacher = train('diffusion', steps=300)
    one_step_teacher = mode_of(teacher.predict_action({'state': torch.full((200, 2, STATE_DIM), 0.5)},
                                                      num_inference_steps=1,
                                                      generator=torch.Generator().manual_seed(1)))
    student = make_student(teacher, student_steps=1)
    loss = DistillationLoss(student, teacher, DistillSection(student_steps=1))
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(0)
    state = torch.full((256, 2, STATE_DIM), 0.5)
    for _ in range(300):
        value = loss({'state': state})
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    modes = mode_of(sample(student))
    assert (modes == 1).float().mean() >= 0.3 and (modes == -1).float().mean() >= 0.3, modes.tolist()
    assert (modes != 0).float().mean() >= 0.8
    assert (one_step_teacher != 0).float().mean() < (modes != 0).float().mean()


def test_stored_teacher_chunks_train_a_student_continued_from_an_earlier_one(tmp_path, teacher):
    """`teacher_chunk_draws`: the teacher's chunks are computed once (draws per window) and kept in the
    run, a resume reuses them; `init_student` starts from an earlier student, the encoder staying the
    teacher's."""
    online = small_config(tmp_path / 'first.yaml', teacher_chunk_draws=0)
    assert distill(teacher, tmp_path / 'first', online, 5) == 0
    assert not (tmp_path / 'first' / BANK_FILE).exists()
    earlier = tmp_path / 'first' / 'checkpoints' / 'latest'
    run = tmp_path / 'second'
    second = small_config(tmp_path / 'second.yaml', teacher_chunk_draws=2, init_student=str(earlier))
    assert distill(teacher, run, second, 5) == 0
    bank = safetensors.torch.load_file(str(run / BANK_FILE))
    key = safetensors.safe_open(str(run / BANK_FILE), framework='pt').metadata()
    assert bank['teacher_chunk'].shape[0] == 2 * int(key['windows']) and TeacherChunkBank.load(run / BANK_FILE, key)
    # the stored chunks are the teacher's DDIM chunks from the stored noise
    teacher_policy = load_checkpoint(teacher)
    expected = teacher_policy.sampler.sample(teacher_policy.denoiser, bank['noise'][:4].shape, bank['cond'][:4],
                                             noise=bank['noise'][:4])
    torch.testing.assert_close(bank['teacher_chunk'][:4], expected, atol=1e-5, rtol=1e-5)
    provenance = json.loads((run / 'checkpoints' / 'latest' / 'config.json').read_text())['provenance']
    assert provenance['distill']['init_student'] == str(earlier)
    stamp = (run / BANK_FILE).stat().st_mtime_ns
    assert cli_main(['distill', '--resume', str(run), '--steps', '7', '--no-progress']) == 0
    assert (run / BANK_FILE).stat().st_mtime_ns == stamp  # reused, not recomputed
    assert read_metrics(run / 'metrics.csv')[-1]['step'] == 7


def test_continue_from_loads_an_earlier_students_weights_but_keeps_the_teachers_encoder(tmp_path, teacher):
    teacher_policy = load_checkpoint(teacher)
    earlier = make_student(teacher_policy, 1)
    with torch.no_grad():
        for parameter in earlier.parameters():
            parameter.add_(0.5)
    from diffusion_policy_ros.training.adapters import save_policy_checkpoint
    save_policy_checkpoint(earlier, tmp_path / 'earlier', {})
    student = make_student(teacher_policy, 1)
    continue_from(student, tmp_path / 'earlier', keep_encoder=True)
    for (name, mine), theirs, teachers in zip(student.named_parameters(), earlier.parameters(),
                                              teacher_policy.parameters()):
        torch.testing.assert_close(mine, teachers if name.startswith('obs_encoder.') else theirs)
    two_step = make_student(teacher_policy, 2)
    with pytest.raises(TrainError, match='1 step'):
        continue_from(two_step, tmp_path / 'earlier', keep_encoder=True)


def test_rollout_windows_are_labelled_by_the_teacher_and_trained_on_beside_the_dataset(tmp_path, teacher, capsys):
    """On-policy distillation: windows a student saw (dp-ros eval --save-windows) get the teacher's chunks
    and join the training set; a windows file that does not fit the teacher is refused by name."""
    teacher_policy = load_checkpoint(teacher)
    n_obs, state_dim = teacher_policy.cfg.n_obs_steps, teacher_policy.obs_spec.state_dim
    rng = np.random.default_rng(0)
    windows = [{'state': rng.uniform(-1, 1, (n_obs, state_dim)).astype(np.float32)} for _ in range(10)]
    save_windows(tmp_path / 'seen.safetensors', windows, {'policy': 'a student'})
    run = tmp_path / 'student'
    config = small_config(tmp_path / 'distill.yaml', every=3, teacher_chunk_draws=2,
                          rollout_windows=[str(tmp_path / 'seen.safetensors')])
    assert distill(teacher, run, config, 3) == 0
    labelled = safetensors.torch.load_file(str(run / 'teacher_chunks_rollouts_0.safetensors'))
    assert labelled['teacher_chunk'].shape[0] == 2 * len(windows)
    with torch.no_grad():
        cond = teacher_policy._condition(teacher_policy.encode_observations(teacher_policy._window_to_batch(windows[0])))
        chunk = teacher_policy.sampler.sample(teacher_policy.denoiser, labelled['noise'][:1].shape, cond,
                                              noise=labelled['noise'][:1])
    torch.testing.assert_close(labelled['cond'][:1], cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(labelled['teacher_chunk'][:1], chunk, atol=1e-5, rtol=1e-5)

    save_windows(tmp_path / 'other.safetensors', [{'state': np.zeros((n_obs, state_dim + 1), np.float32)}], {})
    other = small_config(tmp_path / 'other.yaml', every=3, teacher_chunk_draws=2,
                         rollout_windows=[str(tmp_path / 'other.safetensors')])
    capsys.readouterr()
    assert distill(teacher, tmp_path / 'other', other, 3) == 2
    error = capsys.readouterr().err
    assert 'other.safetensors' in error and "'state' window must be" in error, error
