"""`dp-ros eval`, `dp-ros sweep` and `dp-ros viz-denoise` end to end on tiny untrained checkpoints.

Untrained weights cannot solve a task, so these check the plumbing (checkpoint loading, cameras,
files written, DP beside BC on the same seeds); `test_eval_closed_loop.py` checks success itself.
"""
import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from diffusion_policy_ros.cli import main
from diffusion_policy_ros.core.checkpoint import save_checkpoint
from diffusion_policy_ros.core.config import ActionSpec, ObservationSpec, PolicyConfig
from diffusion_policy_ros.core.normalizer import Normalizer
from diffusion_policy_ros.core.policy import build_policy
from diffusion_policy_ros.sim.visualize import denoising_traces, observation_from_sim, visualize_denoising
from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS


@pytest.fixture(autouse=True)
def one_thread():
    # Two busy cores: torch's default two threads spin against each other and run 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_policy(kind='diffusion', camera_keys=(), image_shape=(40, 40)):
    torch.manual_seed(0)
    home = np.array(PANDA_HOME)
    low, high = home - 0.5, home + 0.5
    low[7], high[7] = 0.0, 0.04
    span = np.stack([low, high]).astype(np.float32)
    normalizer = Normalizer.fit({'state': span, 'action': span}, image_keys=camera_keys)
    obs_spec = ObservationSpec(camera_keys=list(camera_keys), image_shape=image_shape,
                               joint_names=list(PANDA_JOINTS), state_dim=8)
    return build_policy(PolicyConfig.tiny(policy=kind), obs_spec, ActionSpec(joint_names=list(PANDA_JOINTS), dim=8),
                        normalizer)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('ckpt')
    return {'dp_camera': save_checkpoint(tiny_policy('diffusion', ('camera',)), root / 'dp_camera'),
            'bc_camera': save_checkpoint(tiny_policy('bc', ('camera',)), root / 'bc_camera'),
            'dp_state': save_checkpoint(tiny_policy('diffusion'), root / 'dp_state')}


def test_eval_cli_reports_dp_beside_bc_on_the_same_seeds(checkpoints, tmp_path, capsys):
    out = tmp_path / 'eval'
    code = main(['eval', '--checkpoint', str(checkpoints['dp_camera']), '--baseline', str(checkpoints['bc_camera']),
                 '--task', 'pick_place', '--episodes', '2', '--seed', '1000', '--episode-seconds', '0.6',
                 '--latency-s', '0.2', '--out', str(out)])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    written = json.loads((out / 'eval.json').read_text())
    # One line a policy (k/n, rate, 95 % interval), then the paths written; the JSON is in the file only.
    assert len(printed) == 3 and all(line.startswith('[eval] pick_place, ') for line in printed[:2]), printed
    assert '/2 succeeded (' in printed[0] and '95 % CI' in printed[0] and str(checkpoints['bc_camera']) in printed[1]
    gifs = f"{out / 'episode_policy.gif'}, {out / 'episode_baseline.gif'}"
    assert printed[2] == f"[eval] wrote {out / 'eval.json'}, {gifs}"
    assert set(written['policies']) == {'policy', 'baseline'} and written['seeds'] == [1000, 1001]
    dp, bc = written['policies']['policy'], written['policies']['baseline']
    assert dp['policy_kind'] == 'diffusion' and bc['policy_kind'] == 'bc'
    assert dp['num_inference_steps'] == PolicyConfig.tiny().sampler.num_inference_steps  # the checkpoint's
    assert bc['num_inference_steps'] is None  # BC does not sample
    for report in (dp, bc):
        assert [e['seed'] for e in report['episodes']] == [1000, 1001]
        assert report['inference_latency_s']['count'] > 0 and report['inference_latency_s']['p50'] > 0
        assert report['episodes'][0]['info']['task'] == 'pick_place'
        assert report['reach_around'] is None
    for name in ('policy', 'baseline'):
        frames = iio.imread(out / f'episode_{name}.gif', index=None)
        assert frames.shape[1:] == (192, 192, 3)


def test_sweep_cli_writes_table_and_plot_of_ddim_steps(checkpoints, tmp_path):
    out = tmp_path / 'sweep'
    code = main(['sweep', '--checkpoint', str(checkpoints['dp_state']), '--task', 'reach_around',
                 '--what', 'ddim_steps', '--episodes', '1', '--values', '1', '4', '--episode-seconds', '0.5',
                 '--out', str(out)])
    assert code == 0
    with open(out / 'sweep_ddim_steps.csv') as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r['value']) for r in rows] == [1, 4]
    assert all(float(r['latency_p50_ms']) > 0 and float(r['latency_s']) >= 0.1 for r in rows)
    assert '| 4 |' in (out / 'sweep_ddim_steps.md').read_text()
    image = iio.imread(out / 'sweep_ddim_steps.png')
    assert image.ndim == 3 and image.shape[0] > 100
    document = json.loads((out / 'sweep_ddim_steps.json').read_text())
    assert set(document['reports']) == {'1', '4'}
    assert document['reports']['4']['num_inference_steps'] == 4


def test_sweep_of_ddim_steps_rejects_a_bc_checkpoint(checkpoints, tmp_path, capsys):
    assert main(['sweep', '--checkpoint', str(checkpoints['bc_camera']), '--task', 'pick_place', '--what',
                 'ddim_steps', '--episodes', '1', '--out', str(tmp_path / 'sweep')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'needs a diffusion policy' in err[0] and 'Traceback' not in err[0]
    assert not (tmp_path / 'sweep').exists()


def test_viz_denoise_cli_writes_png_and_gif(checkpoints, tmp_path, capsys):
    out = tmp_path / 'viz'
    code = main(['viz-denoise', '--checkpoint', str(checkpoints['dp_camera']), '--out', str(out),
                 '--task', 'pick_place', '--seed', '1000', '--ddim-steps', '20', '--ddpm-steps', '100',
                 '--gif-frames', '6'])
    assert code == 0
    printed = capsys.readouterr().out.strip()
    files = {path.rsplit('.', 1)[-1]: path for path in printed.split('; wrote ', 1)[1].split(', ')}
    assert printed.startswith('[viz-denoise] DDPM 100 and DDIM 20 steps') and len(printed.splitlines()) == 1
    assert iio.imread(files['png']).shape[0] > 200
    frames = iio.imread(files['gif'], index=None)
    assert frames.shape[0] == 6
    summary = json.loads((out / 'denoise.json').read_text())
    assert set(summary['final_chunks']) == {'DDPM, 100 steps', 'DDIM, 20 steps'}
    assert np.asarray(summary['final_chunks']['DDIM, 20 steps']).shape == (8, 8)  # tiny horizon x joints


def test_denoising_traces_start_from_the_same_noise_and_end_at_the_policy_sample():
    policy = tiny_policy('diffusion')
    window = observation_from_sim(policy, 'reach_around', 1000, at_time=0.5)
    assert window['state'].shape == (2, 8)
    traces = denoising_traces(policy, window, ddpm_steps=100, ddim_steps=20, seed=3)
    ddpm, ddim = traces
    assert ddpm.chain.shape == (101, 8, 8) and ddim.chain.shape == (21, 8, 8)
    np.testing.assert_allclose(ddpm.chain[0], ddim.chain[0])  # same x_T
    assert not np.allclose(ddpm.chain[-1], ddim.chain[-1])
    # The last DDIM-20 link is what the policy itself returns for that noise and step count.
    expected = policy.predict_action_chunk(window, num_inference_steps=20,
                                           generator=torch.Generator().manual_seed(3))
    assert policy.cfg.sampler.kind == 'ddim'
    np.testing.assert_allclose(ddim.chain[-1], expected, atol=1e-5)
    assert policy.sampler.__class__.__name__ == 'DDIMSampler'  # the policy's sampler was put back
    with pytest.raises(ValueError, match='needs a diffusion policy'):
        denoising_traces(tiny_policy('bc'), window)
    with pytest.raises(ValueError, match='joints must be indices'):
        visualize_denoising(policy, '/nonexistent', joints=(9,))


def test_sweep_plot_accepts_all_and_none_successes(tmp_path):
    """Wilson bounds at 0/10 and 10/10 equal the rate only up to rounding; the plot must still draw."""
    from diffusion_policy_ros.sim.evaluate import wilson_interval
    from diffusion_policy_ros.sim.sweeps import SweepResult, SweepRow, plot_sweep
    rows = [SweepRow(value=v, requested=[v], successes=s, episodes=10, success_rate=s / 10,
                     success_ci95=wilson_interval(s, 10), latency_p50_ms=1.0, latency_p99_ms=2.0,
                     mean_squared_jerk=1.0, latency_s=0.1) for v, s in ((1, 0), (5, 10), (10, 7))]
    path = tmp_path / 'sweep.png'
    plot_sweep(SweepResult(what='ddim_steps', task='reach_around', policy='test', seeds=list(range(10)),
                           rows=rows), path)
    assert path.stat().st_size > 1000


def test_eval_runs_an_exported_checkpoint_with_its_own_execution_settings(checkpoints, tmp_path, capsys):
    """`dp-ros export --num-inference-steps 3 --n-action-steps 4` is how eval runs it, with no flag."""
    assert main(['export', str(checkpoints['dp_state']), str(tmp_path / 'released'), '--num-inference-steps', '3',
                 '--n-action-steps', '4']) == 0
    capsys.readouterr()
    assert main(['eval', '--checkpoint', str(tmp_path / 'released'), '--task', 'reach_around', '--episodes', '1',
                 '--episode-seconds', '0.4', '--latency-s', '0.1', '--out', str(tmp_path / 'eval')]) == 0
    report = json.loads((tmp_path / 'eval' / 'eval.json').read_text())  # one policy: its report
    assert (report['num_inference_steps'], report['n_action_steps'], report['blending']) == (3, 4, 'crossfade')


def test_eval_cli_saves_the_windows_its_policy_saw(checkpoints, tmp_path, capsys):
    from diffusion_policy_ros.data.windows import load_windows
    windows_file = tmp_path / 'seen.safetensors'
    assert main(['eval', '--checkpoint', str(checkpoints['dp_camera']), '--task', 'pick_place', '--episodes', '1',
                 '--seed', '5000', '--episode-seconds', '0.6', '--latency-s', '0.2', '--no-gif',
                 '--save-windows', str(windows_file)]) == 0
    assert f'observation windows to {windows_file}' in capsys.readouterr().out
    stacked, meta = load_windows(windows_file)
    assert stacked['camera'].shape[1:] == (2, 40, 40, 3) and stacked['camera'].dtype == np.uint8
    assert stacked['state'].shape == (len(stacked['camera']), 2, 8) and meta['seeds'] == '5000-5000'
    assert main(['eval', '--checkpoint', str(checkpoints['dp_camera']), '--baseline', str(checkpoints['bc_camera']),
                 '--task', 'pick_place', '--episodes', '1', '--save-windows', str(windows_file)]) == 2
    assert '--save-windows records one policy' in capsys.readouterr().err
