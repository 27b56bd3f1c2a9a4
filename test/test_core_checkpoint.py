"""Checkpoint round trip and the errors a broken checkpoint must give (naming file and problem)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion_policy_ros.core.checkpoint import (CheckpointError, load_checkpoint, read_checkpoint_config,
                                                  resolve_checkpoint, save_checkpoint)
from diffusion_policy_ros.core.config import ActionSpec, EncoderConfig, ObservationSpec, PolicyConfig
from diffusion_policy_ros.core.normalizer import Normalizer
from diffusion_policy_ros.core.policy import build_policy

IMAGE = (40, 40)


def make_policy(policy='diffusion', denoiser='unet', **overrides):
    torch.manual_seed(0)
    joints = [f'panda_joint{i}' for i in range(1, 8)]
    obs_spec = ObservationSpec(camera_keys=['wrist'], image_shape=IMAGE, joint_names=joints, state_dim=7)
    action_spec = ActionSpec(joint_names=joints, dim=7)
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({'state': rng.normal(size=(30, 7)), 'action': rng.normal(size=(30, 7))},
                                image_keys=['wrist'])
    cfg = PolicyConfig.tiny(policy=policy, denoiser=denoiser,
                            encoder=EncoderConfig(resnet_width=4, num_keypoints=4, image_feature_dim=8,
                                                  crop_shape=(36, 36)), **overrides)
    return build_policy(cfg, obs_spec, action_spec, normalizer)


def window():
    rng = np.random.default_rng(1)
    return {'wrist': rng.integers(0, 256, (2, *IMAGE, 3), dtype=np.uint8), 'state': rng.normal(size=(2, 7))}


@pytest.fixture
def saved(tmp_path):
    policy = make_policy()
    with torch.no_grad():  # make the weights differ from a fresh build with the same seed
        for parameter in policy.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    directory = save_checkpoint(policy, tmp_path / 'ckpt', {'dataset': 'toy', 'steps': 3})
    return policy, directory


@pytest.mark.parametrize('policy_kind,denoiser', [('diffusion', 'unet'), ('diffusion', 'transformer'), ('bc', 'unet')])
def test_round_trip_gives_identical_outputs(tmp_path, policy_kind, denoiser):
    policy = make_policy(policy_kind, denoiser, cfg_dropout=0.2, guidance_scale=1.5)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    directory = save_checkpoint(policy, tmp_path / 'ckpt', {'dataset': 'toy'})
    assert sorted(p.name for p in directory.iterdir()) == ['config.json', 'model.safetensors']
    for target in (directory, directory / 'model.safetensors', directory / 'config.json'):
        loaded = load_checkpoint(target)
        assert not loaded.training
        assert loaded.cfg == policy.cfg and loaded.obs_spec == policy.obs_spec
        expected = policy.predict_action_chunk(window(), generator=torch.Generator().manual_seed(3))
        found = loaded.predict_action_chunk(window(), generator=torch.Generator().manual_seed(3))
        assert np.array_equal(expected, found)


def test_config_json_records_specs_normaliser_sampler_and_provenance(saved):
    _, directory = saved
    config = json.loads((directory / 'config.json').read_text())
    assert config['format_version'] == 1
    assert config['observation_spec']['camera_keys'] == ['wrist']
    assert config['observation_spec']['image_shape'] == list(IMAGE)
    assert config['action_spec']['joint_names'][0] == 'panda_joint1'
    assert config['policy_config']['sampler']['beta_schedule'] == 'squaredcos_cap_v2'
    assert set(config['normalizer']['keys']) == {'state', 'action', 'wrist'}
    assert config['provenance'] == {'dataset': 'toy', 'steps': 3}
    assert read_checkpoint_config(directory)['provenance']['steps'] == 3


def test_missing_files_are_named(saved, tmp_path):
    _, directory = saved
    with pytest.raises(CheckpointError, match='no such checkpoint'):
        load_checkpoint(tmp_path / 'nowhere')
    (directory / 'model.safetensors').unlink()
    with pytest.raises(CheckpointError, match=r'model\.safetensors: missing file'):
        load_checkpoint(directory)
    other = save_checkpoint(make_policy(), tmp_path / 'other')
    (other / 'config.json').unlink()
    with pytest.raises(CheckpointError, match=r'config\.json: missing file'):
        load_checkpoint(other / 'model.safetensors')


def test_truncated_weights_are_reported(saved):
    _, directory = saved
    weights = directory / 'model.safetensors'
    data = weights.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 3):
        weights.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r'model\.safetensors: truncated or corrupt') as info:
            load_checkpoint(directory)
        assert str(cut) in str(info.value)


def test_bad_json_missing_keys_and_version_are_reported(saved):
    _, directory = saved
    config_path = directory / 'config.json'
    good = json.loads(config_path.read_text())
    config_path.write_text('{"format_version": 1,')
    with pytest.raises(CheckpointError, match=r'config\.json: bad JSON at line 1'):
        load_checkpoint(directory)
    config_path.write_text(json.dumps({k: v for k, v in good.items() if k != 'normalizer'}))
    with pytest.raises(CheckpointError, match=r"config\.json: missing key\(s\) 'normalizer'"):
        load_checkpoint(directory)
    config_path.write_text(json.dumps({**good, 'format_version': 99}))
    with pytest.raises(CheckpointError, match='unsupported format_version 99'):
        load_checkpoint(directory)
    bad_cfg = json.loads(json.dumps(good))
    bad_cfg['policy_config']['encoder']['widht'] = 3
    config_path.write_text(json.dumps(bad_cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid configuration.*'encoder\.widht'"):
        load_checkpoint(directory)


def test_config_that_does_not_match_the_weights_names_the_tensor(saved):
    _, directory = saved
    config_path = directory / 'config.json'
    config = json.loads(config_path.read_text())
    config['policy_config']['unet']['down_dims'] = [32, 128]
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor '.*' has shape .* but config\.json "
                                               r'expects'):
        load_checkpoint(directory)
    config['policy_config']['denoiser'] = 'transformer'
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r'missing tensor\(s\).*unexpected tensor\(s\)'):
        load_checkpoint(directory)


def test_weights_with_a_changed_tensor_shape_are_reported(saved):
    _, directory = saved
    weights = directory / 'model.safetensors'
    tensors = load_file(str(weights))
    tensors['denoiser.final_conv.1.weight'] = torch.zeros(3, 32, 1)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=r"tensor 'denoiser\.final_conv\.1\.weight' has shape \(3, 32, 1\) "
                                               r"but config\.json expects \(7, 32, 1\)"):
        load_checkpoint(directory)


def test_provenance_must_be_json(tmp_path):
    with pytest.raises(ValueError, match='provenance must be JSON'):
        save_checkpoint(make_policy(), tmp_path / 'x', {'when': object()})


def test_no_pickle_anywhere():
    """Checkpoint code never calls torch.load/pickle (a checkpoint must not be able to run code)."""
    source = (Path(__file__).resolve().parents[1] / 'diffusion_policy_ros' / 'core' / 'checkpoint.py').read_text()
    assert 'torch.load(' not in source and 'import pickle' not in source


def test_half_precision_storage_halves_the_file_and_loads_back_as_float32(saved, tmp_path):
    policy, directory = saved
    half = save_checkpoint(policy, tmp_path / 'half', {'dataset': 'toy'}, storage_dtype='float16')
    full_size, half_size = ((d / 'model.safetensors').stat().st_size for d in (directory, half))
    assert half_size < 0.55 * full_size
    loaded = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    expected = policy.predict_action_chunk(window(), generator=torch.Generator().manual_seed(3))
    found = loaded.predict_action_chunk(window(), generator=torch.Generator().manual_seed(3))
    assert np.abs(expected - found).max() < 0.05 * (np.abs(expected).max() + 1e-6)
    with pytest.raises(ValueError, match='storage_dtype'):
        save_checkpoint(policy, tmp_path / 'x', storage_dtype='int8')


def test_weights_of_a_non_float_dtype_are_reported(saved):
    _, directory = saved
    weights = directory / 'model.safetensors'
    tensors = load_file(str(weights))
    tensors['denoiser.final_conv.1.weight'] = tensors['denoiser.final_conv.1.weight'].to(torch.int32)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=r"tensor 'denoiser\.final_conv\.1\.weight' has dtype torch\.int32"):
        load_checkpoint(directory)


def test_dp_ros_export_writes_a_half_precision_copy_with_provenance(saved, tmp_path, capsys):
    from diffusion_policy_ros.cli import main
    _, directory = saved
    assert main(['export', str(directory), str(tmp_path / 'release')]) == 0
    assert 'float16 weights' in capsys.readouterr().out
    config = json.loads((tmp_path / 'release' / 'config.json').read_text())
    assert config['provenance']['dataset'] == 'toy' and config['provenance']['storage_dtype'] == 'float16'
    assert config['provenance']['exported_from'] == str(directory)
    assert load_file(str(tmp_path / 'release' / 'model.safetensors'))['denoiser.final_conv.1.weight'].dtype == torch.float16
    load_checkpoint(tmp_path / 'release')


def test_export_can_set_the_execution_defaults_and_refuses_impossible_ones(saved, tmp_path):
    from diffusion_policy_ros.training.export import export_checkpoint
    policy, directory = saved
    out = export_checkpoint(directory, tmp_path / 'tuned', 'float32', n_action_steps=2, num_inference_steps=3)
    loaded = load_checkpoint(out)
    assert (loaded.cfg.n_action_steps, loaded.cfg.sampler.num_inference_steps) == (2, 3)
    assert loaded.cfg.horizon == policy.cfg.horizon
    overrides = json.loads((out / 'config.json').read_text())['provenance']['execution_overrides']
    assert overrides == {'n_action_steps': 2, 'num_inference_steps': 3}
    with pytest.raises(ValueError, match='n_action_steps 99'):
        export_checkpoint(directory, tmp_path / 'bad', n_action_steps=99)


def test_a_training_run_folder_loads_its_latest_checkpoint(tmp_path):
    run = tmp_path / 'runs' / 'reach'
    save_checkpoint(make_policy(), run / 'checkpoints' / 'step_000010')
    latest = save_checkpoint(make_policy(), run / 'checkpoints' / 'latest', provenance={'steps': 20})
    assert resolve_checkpoint(run) == (latest / 'config.json', latest / 'model.safetensors')
    assert read_checkpoint_config(run)['provenance'] == {'steps': 20}
    with pytest.raises(CheckpointError, match=r'config\.json: missing file .*run folder with checkpoints/latest'):
        load_checkpoint(tmp_path / 'runs')  # neither a checkpoint nor a run folder: the message says both
