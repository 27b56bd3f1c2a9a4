"""`dp-ros train` end to end on small synthetic zarr datasets: checkpoint, resume, bc, DDP on gloo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from diffusion_policy_ros.cli import main as cli_main
from diffusion_policy_ros.core.checkpoint import load_checkpoint
from diffusion_policy_ros.core.policy import BCPolicy, DiffusionPolicy
from diffusion_policy_ros.data.episodes import load_episode_dataset
from diffusion_policy_ros.training.plots import read_metrics
from diffusion_policy_ros.training.state import load_train_state
from diffusion_policy_ros.training.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / 'config' / 'train_tiny.yaml'


def _config(tmp_path: Path, name: str = 'cfg.yaml', **sections) -> Path:
    """train_tiny.yaml with some sections updated (shallow per section)."""
    cfg = yaml.safe_load(TINY.read_text())
    for section, values in sections.items():
        cfg[section].update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


JOINTS = [f'panda_joint{i}' for i in range(1, 8)] + ['panda_finger_joint1']


def _write_sim_like_bag(path: Path, seed: int, seconds: float = 3.2) -> None:
    """An episode as `dp-ros demos` records it: 10 Hz camera, 50 Hz joint states, 10 Hz commands."""
    from diffusion_policy_ros.data.bags import BagWriter

    rng = np.random.default_rng(seed)
    start, rate = rng.uniform(-1, 1, 8), rng.uniform(-0.5, 0.5, 8)
    t0 = 50 * 10**9

    def joints(t: float) -> np.ndarray:
        return start + np.sin(rate * t * 3.0)

    with BagWriter(path, 'mcap') as writer:
        for k in range(int(seconds * 50)):
            t = k / 50
            writer.write_joint_state('/joint_states', t0 + int(t * 1e9), JOINTS, joints(t))
        for k in range(int(seconds * 10)):
            t = k / 10
            image = np.zeros((48, 64, 3), np.uint8)
            row, col = (np.clip((joints(t)[:2] + 2) / 4, 0, 1) * [40, 56]).astype(int)
            image[row:row + 8, col:col + 8] = (255, 200, 50)
            writer.write_image('/camera/color/image_raw', t0 + int(t * 1e9), image)
            writer.write_joint_trajectory('/arm_controller/joint_trajectory', t0 + int(t * 1e9), JOINTS,
                                          joints(t + 0.1)[None], 0.1)


@pytest.fixture(scope='module')
def camera_dataset(tmp_path_factory) -> Path:
    """Bags -> `dp-ros dataset` (the sim's dataset config, 40x40 images) -> zarr."""
    root = tmp_path_factory.mktemp('bags')
    for episode in range(4):
        _write_sim_like_bag(root / f'episode_{episode:04d}', seed=episode)
    config = yaml.safe_load((ROOT / 'config' / 'dataset_sim.yaml').read_text())
    config['image_size'] = [40, 40]
    (root / 'dataset.yaml').write_text(yaml.safe_dump(config))
    out = root / 'demos.zarr'
    assert cli_main(['dataset', str(root), '--config', str(root / 'dataset.yaml'), '--out', str(out),
                     '--no-progress']) == 0
    assert load_episode_dataset(out).n_episodes == 4
    return out


@pytest.fixture(scope='module')
def state_dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp('data') / 'state.zarr', n_episodes=5,
                                   episode_length=30, camera_keys=(), seed=2)


@pytest.mark.parametrize('name', ['train_pick_place.yaml', 'train_reach_around.yaml'])
def test_default_configs_build_and_train_on_sim_shaped_data(name):
    """The shipped configs fit the sim's dataset (96x96 `camera`, 8 joints): policy builds, one loss."""
    from diffusion_policy_ros.data.episodes import EpisodeData
    from diffusion_policy_ros.training import adapters
    from diffusion_policy_ros.training.config import load_train_config
    from diffusion_policy_ros.training.synthetic import synthetic_episodes

    cfg = load_train_config(ROOT / 'config' / name)
    arrays, ends = synthetic_episodes(3, 20, 8, ['camera'], (96, 96))
    data = adapters.split_training_data(EpisodeData(arrays, ends, {'camera_keys': ['camera'],
                                                                   'joint_names': JOINTS}), cfg)
    assert data.obs_spec.camera_keys == cfg.dataset.camera_keys
    torch.manual_seed(0)
    policy = adapters.build_policy_for(cfg, data, torch.device('cpu'))
    batch = torch.utils.data.default_collate([data.train[i] for i in range(2)])
    assert batch['action'].shape == (2, cfg.policy.horizon, 8)
    assert torch.isfinite(policy.compute_loss(batch))


def test_train_writes_a_checkpoint_that_predicts_chunks_in_robot_units(tmp_path, camera_dataset):
    run = tmp_path / 'run'
    cfg = _config(tmp_path, train={'num_workers': 1})  # worker processes on this path
    rc = cli_main(['train', '--config', str(cfg), '--data', str(camera_dataset), '--out', str(run),
                   '--steps', '12', '--no-progress'])
    assert rc == 0
    ckpt = run / 'checkpoints' / 'step_000012'
    assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['latest', 'step_000012']
    for name in ('config.json', 'model.safetensors', 'train_state.json', 'train_state.safetensors'):
        assert (ckpt / name).is_file() and (run / 'checkpoints' / 'latest' / name).is_file()
    assert (run / 'loss.png').read_bytes()[:4] == b'\x89PNG'
    rows = read_metrics(run / 'metrics.csv')
    assert [r['step'] for r in rows] == [5, 10, 12]
    assert all(np.isfinite(r['loss']) and r['lr'] > 0 for r in rows)
    assert np.isfinite(rows[1]['val_loss']) and np.isfinite(rows[2]['val_loss'])  # val_every 10 and the end

    policy = load_checkpoint(run / 'checkpoints' / 'latest')
    assert isinstance(policy, DiffusionPolicy)
    provenance = json.loads((ckpt / 'config.json').read_text())['provenance']
    assert provenance['dataset'] == str(camera_dataset.resolve()) and provenance['step'] == 12
    assert provenance['date'] and 'git_commit' in provenance and provenance['train_config']['train']['steps'] == 12

    # the normaliser is fitted on the training episodes only
    data = load_episode_dataset(camera_dataset)
    train_eps, val_eps = provenance['train_episodes'], provenance['val_episodes']
    assert val_eps and not set(train_eps) & set(val_eps)
    frames = np.concatenate([np.arange(*data.episode_bounds(e)) for e in train_eps])
    action_stats = policy.normalizer.stats('action')
    np.testing.assert_allclose(action_stats['min'], data.arrays['action'][frames].min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(action_stats['max'], data.arrays['action'][frames].max(axis=0), rtol=1e-6)
    assert not np.allclose(action_stats['min'], data.arrays['action'].min(axis=0))  # val episode differs

    # the checkpoint holds the EMA weights (the inference model), not the raw ones
    state = load_train_state(ckpt)
    weights = load_file(str(ckpt / 'model.safetensors'))
    name = next(k for k in state.ema if k in weights and state.ema[k].is_floating_point() and state.ema[k].numel() > 8)
    assert torch.equal(weights[name], state.ema[name]) and not torch.equal(weights[name], state.model[name])

    window = {'camera': data.arrays['camera'][:2], 'state': data.arrays['state'][:2]}
    chunk = policy.predict_action_chunk(window, generator=torch.Generator().manual_seed(0))
    assert policy.obs_spec.joint_names == JOINTS and policy.obs_spec.image_shape == (40, 40)
    assert chunk.shape == (8, 8) and chunk.dtype == np.float32  # (horizon, joints) of train_tiny
    low, high = np.asarray(action_stats['min']), np.asarray(action_stats['max'])
    assert np.all(chunk >= low - 1e-5) and np.all(chunk <= high + 1e-5)  # robot units, inside the data range
    assert np.ptp(chunk, axis=0).max() > 0 and not np.allclose(chunk, 0)


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, state_dataset):
    cfg = _config(tmp_path, train={'steps': 16, 'checkpoint_every': 8, 'log_every': 4, 'val_every': 8})
    full = tmp_path / 'full'
    assert cli_main(['train', '--config', str(cfg), '--data', str(state_dataset), '--out', str(full),
                     '--no-progress']) == 0
    assert sorted(p.name for p in (full / 'checkpoints').iterdir()) == ['latest', 'step_000008', 'step_000016']

    # Continue a copy of the run from its step-8 checkpoint: the same 8 steps must follow.
    resumed = tmp_path / 'resumed'
    assert cli_main(['train', '--resume', str(full / 'checkpoints' / 'step_000008'), '--out', str(resumed),
                     '--no-progress']) == 0
    at8 = load_train_state(full / 'checkpoints' / 'step_000008')
    a, b = load_train_state(full / 'checkpoints' / 'step_000016'), load_train_state(resumed / 'checkpoints' / 'latest')
    assert at8.step == 8 and a.step == b.step == 16 and b.ema_step == a.ema_step == 16
    for key in a.model:
        torch.testing.assert_close(b.model[key], a.model[key], rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(b.ema[key], a.ema[key], rtol=1e-5, atol=1e-6, msg=key)
    assert b.optimizer['param_groups'] == a.optimizer['param_groups']  # lr schedule position included
    for index, entries in a.optimizer['state'].items():
        assert int(b.optimizer['state'][index]['step']) == int(entries['step']) == 16
        torch.testing.assert_close(b.optimizer['state'][index]['exp_avg_sq'], entries['exp_avg_sq'],
                                   rtol=1e-4, atol=1e-9)
    assert b.scheduler['last_epoch'] == a.scheduler['last_epoch'] == 16
    assert [r['step'] for r in read_metrics(resumed / 'metrics.csv')] == [12, 16]

    # --resume RUN_DIR takes checkpoints/latest, the run's own config and data; --steps extends it.
    lr_at_16 = read_metrics(full / 'metrics.csv')[-1]['lr']
    assert cli_main(['train', '--resume', str(full), '--steps', '20', '--no-progress']) == 0
    extended = load_train_state(full / 'checkpoints' / 'latest')
    assert read_metrics(full / 'metrics.csv')[-1]['lr'] <= lr_at_16  # the decay goes on, no jump to the peak
    assert extended.step == 20 and int(extended.optimizer['state'][0]['step']) == 20
    assert [r['step'] for r in read_metrics(full / 'metrics.csv')] == [4, 8, 12, 16, 20]  # no duplicates
    assert (full / 'checkpoints' / 'step_000020').is_dir()


def test_resume_errors_are_clear(tmp_path, state_dataset, capsys):
    assert cli_main(['train', '--resume', str(tmp_path / 'nothing'), '--no-progress']) == 2
    assert 'no training state found' in capsys.readouterr().err
    run = tmp_path / 'run'
    cfg = _config(tmp_path, train={'steps': 4, 'log_every': 2})
    assert cli_main(['train', '--config', str(cfg), '--data', str(state_dataset), '--out', str(run),
                     '--no-progress']) == 0
    assert cli_main(['train', '--resume', str(run), '--no-progress']) == 2
    assert 'already at step 4' in capsys.readouterr().err
    other = _config(tmp_path, 'other.yaml', policy={'horizon': 16}, train={'steps': 8})
    assert cli_main(['train', '--resume', str(run), '--config', str(other), '--no-progress']) == 2
    assert 'policy section' in capsys.readouterr().err


def test_bad_inputs_give_clear_messages(tmp_path, state_dataset, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text(TINY.read_text().replace('grad_clip:', 'grad_clipp:'))
    assert cli_main(['train', '--config', str(bad), '--data', str(state_dataset), '--out', str(tmp_path / 'r')]) == 2
    assert "'train.grad_clipp'" in capsys.readouterr().err
    cam = _config(tmp_path, dataset={'camera_keys': ['wrist']})
    assert cli_main(['train', '--config', str(cam), '--data', str(state_dataset), '--out', str(tmp_path / 'r')]) == 2
    assert "['wrist']" in capsys.readouterr().err
    assert cli_main(['train', '--config', str(TINY), '--data', str(tmp_path / 'missing.zarr'),
                     '--out', str(tmp_path / 'r')]) == 2
    assert 'missing.zarr' in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli_main(['train', '--config', str(TINY), '--data', str(state_dataset), '--out', str(tmp_path / 'r'),
                         '--device', 'cuda']) == 2
        assert "device 'cuda' requested but torch sees no CUDA device" in capsys.readouterr().err


def test_bc_policy_trains_and_its_loss_drops(tmp_path, state_dataset):
    cfg = _config(tmp_path, policy={'policy': 'bc'}, train={'steps': 60, 'log_every': 10, 'val_every': 60},
                  optim={'lr': 1.0e-2}, ema={'enabled': False})
    run = tmp_path / 'bc'
    assert cli_main(['train', '--config', str(cfg), '--data', str(state_dataset), '--out', str(run),
                     '--no-progress']) == 0
    losses = [r['loss'] for r in read_metrics(run / 'metrics.csv')]
    assert losses[-1] < 0.5 * losses[0], losses
    policy = load_checkpoint(run / 'checkpoints' / 'latest')
    assert isinstance(policy, BCPolicy)
    data = load_episode_dataset(state_dataset)
    chunk = policy.predict_action_chunk({'state': data.arrays['state'][:2]})
    assert chunk.shape == (8, 8)
    # BC regresses the chunk: early in an episode it must follow the demonstrated actions roughly
    assert np.abs(chunk[1] - data.arrays['action'][1]).mean() < 0.5 * np.abs(data.arrays['action'][1]).mean() + 0.2


@pytest.mark.slow
def test_ddp_two_processes_on_gloo(tmp_path, state_dataset):
    """torchrun with 2 CPU processes: gradients averaged over gloo, one writer, the loss goes down."""
    cfg = _config(tmp_path, train={'steps': 40, 'log_every': 10, 'val_every': 40, 'batch_size': 16},
                  optim={'lr': 3.0e-3})
    run = tmp_path / 'ddp'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': os.pathsep.join(
        p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p)}
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         '-m', 'diffusion_policy_ros.cli', 'train', '--config', str(cfg), '--data', str(state_dataset),
         '--out', str(run), '--no-progress'],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['latest', 'step_000040']
    assert proc.stderr.count('train: done at step 40') == 1  # rank 0 only reports
    rows = read_metrics(run / 'metrics.csv')
    assert [r['step'] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]['loss'] < rows[0]['loss'] - 0.02, rows
    provenance = json.loads((run / 'checkpoints' / 'latest' / 'config.json').read_text())['provenance']
    assert provenance['world_size'] == 2
    assert len(load_train_state(run / 'checkpoints' / 'latest').rng) == 2  # both ranks' RNG for resume
    assert isinstance(load_checkpoint(run / 'checkpoints' / 'step_000040'), DiffusionPolicy)
