"""Training building blocks: config parsing, EMA schedule, LR schedule, resumable state, metrics."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_policy_ros.training.config import (
    EMASection, TrainConfig, TrainConfigError, load_train_config)
from diffusion_policy_ros.training.distributed import DistContext, ResumableSampler
from diffusion_policy_ros.training.ema import EMA, ema_decay
from diffusion_policy_ros.training.plots import MetricsLog, plot_loss, read_metrics
from diffusion_policy_ros.training.state import (
    TrainState, TrainStateError, capture_rng, load_train_state, restore_rng, save_train_state)
from diffusion_policy_ros.training.train import make_lr_scheduler

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'config').glob('train_*.yaml'))


# ---- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_train_configs_load_and_round_trip(path):
    cfg = load_train_config(path)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_shipped_configs_cover_both_sim_tasks():
    names = {p.name for p in CONFIGS}
    assert {'train_tiny.yaml', 'train_reach_around.yaml', 'train_pick_place.yaml'} <= names
    assert load_train_config(ROOT / 'config/train_reach_around.yaml').dataset.camera_keys == []
    assert load_train_config(ROOT / 'config/train_pick_place.yaml').dataset.camera_keys == ['camera']


def test_yaml_scientific_notation_is_a_float(tmp_path):
    (tmp_path / 'c.yaml').write_text('optim: {lr: 3e-4, weight_decay: 1e-6}\n')
    cfg = load_train_config(tmp_path / 'c.yaml')
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.weight_decay == pytest.approx(1e-6)


@pytest.mark.parametrize('text, names', [
    ('optim: {lrr: 1.0}\n', ["'optim.lrr'"]),
    ('trian: {steps: 3}\n', ["'trian'"]),
    ('train: {steps: 3, bach_size: 4}\n', ["'train.bach_size'"]),
    ('ema: {power: 0.75, gamma: 1.0}\n', ["'ema.gamma'"]),
    ('policy: {horizon: 16, down_dim: [1]}\n', ["'policy.down_dim'"]),
    ('policy: {unet: {kernal_size: 3}}\n', ["'policy.unet.kernal_size'"]),
])
def test_unknown_keys_are_rejected_by_name(tmp_path, text, names):
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(TrainConfigError) as err:
        load_train_config(path)
    for name in names:
        assert name in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize('text, key', [
    ('train: {amp: fp8}\n', 'train.amp'),
    ('train: {device: tpu}\n', 'train.device'),
    ('train: {steps: 0}\n', 'train.steps'),
    ('train: {batch_size: many}\n', 'train.batch_size'),
    ('dataset: {val_ratio: 1.5}\n', 'dataset.val_ratio'),
    ('lr_schedule: {name: exponential}\n', 'lr_schedule.name'),
    ('optim: {betas: [0.9]}\n', 'optim.betas'),
    ('ema: {min_value: 0.5, max_value: 0.1}\n', 'ema'),
    ('policy: {policy: gan}\n', 'policy'),
])
def test_bad_values_name_their_key(tmp_path, text, key):
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(TrainConfigError, match=key.replace('.', r'\.')):
        load_train_config(path)


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(TrainConfigError, match='nope.yaml'):
        load_train_config(tmp_path / 'nope.yaml')


# ---- EMA ---------------------------------------------------------------------------------------

def test_ema_decay_follows_chi_power_schedule_and_matches_diffusers():
    from diffusers.training_utils import EMAModel

    cfg = EMASection()  # update_after_step 0, inv_gamma 1, power 0.75, min 0, max 0.9999
    oracle = EMAModel([nn.Parameter(torch.zeros(1))], decay=cfg.max_value, min_decay=cfg.min_value,
                      update_after_step=cfg.update_after_step, use_ema_warmup=True,
                      inv_gamma=cfg.inv_gamma, power=cfg.power)
    for step in (0, 1, 2, 3, 10, 100, 1000, 10_000, 10**6):
        assert ema_decay(step, cfg) == pytest.approx(oracle.get_decay(step), abs=1e-12), step
    assert ema_decay(0, cfg) == 0.0 and ema_decay(1, cfg) == 0.0  # the first updates copy the weights
    assert ema_decay(2, cfg) == pytest.approx(1 - 2 ** -0.75)
    assert ema_decay(1001, cfg) == pytest.approx(1 - 1001 ** -0.75)
    assert ema_decay(10**9, cfg) == cfg.max_value  # clamped
    delayed = EMASection(update_after_step=5, min_value=0.5)
    assert ema_decay(6, delayed) == 0.0  # still copying until update_after_step has passed
    assert ema_decay(7, delayed) == 0.5  # 1 - 2 ** -0.75 = 0.405 clamped up to min_value
    assert ema_decay(8, delayed) == pytest.approx(1 - 3 ** -0.75)


def test_ema_update_averages_weights_and_copies_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[1].weight.requires_grad_(False)
    ema = EMA(model, EMASection())
    assert ema.update(model) == 0.0  # step 0: copy
    before = ema.averaged[0].weight.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(7.0)
    ema.update(model)  # step 1: decay still 0
    assert torch.equal(ema.averaged[0].weight, model[0].weight)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    decay = ema.update(model)  # step 2
    expected = decay * (before + 1.0) + (1 - decay) * model[0].weight
    assert decay == pytest.approx(1 - 2 ** -0.75)
    assert torch.allclose(ema.averaged[0].weight, expected, atol=1e-6)
    assert torch.equal(ema.averaged[1].weight, model[1].weight)  # frozen parameter copied
    assert torch.equal(ema.averaged[1].running_mean, torch.full((2,), 7.0))  # buffer copied
    assert not any(p.requires_grad for p in ema.averaged.parameters())
    assert ema.optimization_step == 3


# ---- LR schedule -------------------------------------------------------------------------------

def _lrs(name: str, warmup: int, steps: int) -> list[float]:
    cfg = TrainConfig.from_dict({'optim': {'lr': 1.0}, 'lr_schedule': {'name': name, 'warmup_steps': warmup},
                                 'train': {'steps': steps}})
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    scheduler = make_lr_scheduler(optimizer, cfg)
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_lr_warmup_is_linear_then_cosine_to_zero():
    lrs = _lrs('cosine', warmup=10, steps=110)
    assert lrs[:11] == pytest.approx([i / 10 for i in range(11)])  # linear warm-up from 0 to the peak
    assert max(lrs) == pytest.approx(1.0)
    for step in (10, 35, 60, 85, 109):
        progress = (step - 10) / 100
        assert lrs[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * progress)))
    assert lrs[60] == pytest.approx(0.5)  # half-way through the decay
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warm-up
    assert lrs[-1] < 1e-3


def test_lr_constant_schedule_holds_after_warmup():
    lrs = _lrs('constant', warmup=4, steps=20)
    assert lrs[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[4:] == pytest.approx([1.0] * 16)


@pytest.mark.parametrize('name, oracle_name', [('cosine', 'cosine'), ('linear', 'linear'),
                                               ('constant', 'constant_with_warmup')])
def test_lr_schedules_match_diffusers(name, oracle_name):
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    oracle = get_scheduler(oracle_name, optimizer, num_warmup_steps=7, num_training_steps=50)
    expected = []
    for _ in range(50):
        expected.append(oracle.get_last_lr()[0])
        optimizer.step()
        oracle.step()
    assert _lrs(name, warmup=7, steps=50) == pytest.approx(expected, abs=1e-12)


# ---- resumable state ---------------------------------------------------------------------------

def _trained_toy(steps: int = 3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Mish(), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    cfg = TrainConfig.from_dict({'lr_schedule': {'warmup_steps': 2}, 'train': {'steps': 10}})
    scheduler = make_lr_scheduler(optimizer, cfg)
    ema = EMA(model, cfg.ema)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        ema.update(model)
    return model, optimizer, scheduler, ema, cfg


def test_train_state_round_trips_without_pickle(tmp_path):
    model, optimizer, scheduler, ema, cfg = _trained_toy()
    generator = torch.Generator().manual_seed(5)
    random.seed(3)
    np.random.seed(4)
    rng = capture_rng(generator)
    state = TrainState(step=3, model=model.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), ema=ema.state_tensors(), ema_step=ema.optimization_step,
                       rng=[rng], meta={'train_config': cfg.to_dict()})
    save_train_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['train_state.json', 'train_state.safetensors']
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item(),
                      torch.rand(1, generator=generator).item())

    loaded = load_train_state(tmp_path)
    assert loaded.step == 3 and loaded.ema_step == 3
    assert TrainConfig.from_dict(loaded.meta['train_config']) == cfg
    model2, optimizer2, scheduler2, ema2, _ = _trained_toy(steps=0)
    model2.load_state_dict(loaded.model)
    optimizer2.load_state_dict(loaded.optimizer)
    scheduler2.load_state_dict(loaded.scheduler)
    ema2.load_state(loaded.ema, loaded.ema_step)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(ema.averaged.parameters(), ema2.averaged.parameters()):
        assert torch.equal(a, b)
    s1, s2 = optimizer.state_dict(), optimizer2.state_dict()
    assert s1['param_groups'] == s2['param_groups']
    for index in s1['state']:
        for key in s1['state'][index]:
            assert torch.equal(s1['state'][index][key], s2['state'][index][key]), (index, key)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert scheduler2.last_epoch == scheduler.last_epoch

    generator2 = torch.Generator()
    restore_rng(loaded.rng[0], generator2)
    assert (random.random(), np.random.rand(), torch.rand(1).item(),
            torch.rand(1, generator=generator2).item()) == expected_draws


def test_corrupt_or_missing_train_state_names_the_file(tmp_path):
    with pytest.raises(TrainStateError, match='train_state.json'):
        load_train_state(tmp_path)
    model, optimizer, scheduler, ema, _ = _trained_toy(1)
    save_train_state(tmp_path, TrainState(step=1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                          scheduler=scheduler.state_dict(), rng=[capture_rng()]))
    tensors = tmp_path / 'train_state.safetensors'
    tensors.write_bytes(tensors.read_bytes()[:40])
    with pytest.raises(TrainStateError, match='train_state.safetensors.*(corrupt|truncated)'):
        load_train_state(tmp_path)


# ---- sampler, metrics --------------------------------------------------------------------------

def test_resumable_sampler_skips_exactly_the_consumed_samples():
    data = list(range(23))
    full = ResumableSampler(data, DistContext(0, 0, 1, torch.device('cpu'), None), seed=1)
    full.set_position(epoch=2, skip_samples=0)
    order = list(full)
    assert sorted(order) == data
    part = ResumableSampler(data, DistContext(0, 0, 1, torch.device('cpu'), None), seed=1)
    part.set_position(epoch=2, skip_samples=8)
    assert list(part) == order[8:] and len(part) == 15
    full.set_position(epoch=3, skip_samples=0)
    assert list(full) != order  # a new shuffle each epoch
    ranks = [ResumableSampler(data, DistContext(r, r, 2, torch.device('cpu'), None), seed=1) for r in (0, 1)]
    for s in ranks:
        s.set_position(2, 0)
    assert set(ranks[0]) | set(ranks[1]) == set(data) and len(ranks[0]) == len(ranks[1]) == 12


def test_metrics_csv_trims_on_resume_and_plots(tmp_path):
    log = MetricsLog(tmp_path / 'metrics.csv')
    for step in (5, 10, 15):
        log.append(step, loss=1.0 / step, lr=1e-4, it_per_s=3.0)
    log.append(10 + 5, val_loss=0.5)
    resumed = MetricsLog(tmp_path / 'metrics.csv', resume_step=10)
    resumed.append(15, loss=0.01)
    rows = read_metrics(tmp_path / 'metrics.csv')
    assert [r['step'] for r in rows] == [5, 10, 15]
    assert rows[2]['loss'] == pytest.approx(0.01) and math.isnan(rows[2]['val_loss'])
    png = plot_loss(tmp_path / 'metrics.csv', tmp_path / 'loss.png')
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_resumed_run_with_more_steps_continues_the_decay_instead_of_restarting_it():
    from diffusion_policy_ros.training.train import LrRestart, lr_multiplier, resumed_lr_restart
    cfg = TrainConfig.from_dict({'lr_schedule': {'name': 'cosine', 'warmup_steps': 10}, 'train': {'steps': 100}})
    meta = {'train_config': cfg.to_dict()}
    before = lr_multiplier(90, name='cosine', warmup_steps=10, total_steps=100)
    assert resumed_lr_restart(cfg, meta, 90) is None  # same total: the saved schedule goes on
    longer = TrainConfig.from_dict({'lr_schedule': {'name': 'cosine', 'warmup_steps': 10}, 'train': {'steps': 200}})
    restart = resumed_lr_restart(longer, meta, 90)
    assert restart == LrRestart(90, pytest.approx(before))
    after = [lr_multiplier(s, name='cosine', warmup_steps=10, total_steps=200, restart=restart) for s in range(90, 201)]
    assert after[0] == pytest.approx(before) and after[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(after, after[1:]))  # no jump back towards the peak
    # Without the restart the stretched cosine would have jumped from ~0.1 to ~0.6 of the peak.
    assert lr_multiplier(90, name='cosine', warmup_steps=10, total_steps=200) > 5 * before
    # A second extension continues from the first one's value.
    meta2 = {'train_config': longer.to_dict(), 'lr_restart': {'step': restart.step, 'factor': restart.factor}}
    longest = TrainConfig.from_dict({'lr_schedule': {'name': 'cosine', 'warmup_steps': 10}, 'train': {'steps': 300}})
    second = resumed_lr_restart(longest, meta2, 150)
    assert second.factor == pytest.approx(lr_multiplier(150, name='cosine', warmup_steps=10, total_steps=200,
                                                        restart=restart))


@pytest.mark.parametrize('seconds_per_step, warned', [(2.0, True), (0.01, False)])
def test_training_on_a_cpu_warns_early_when_the_run_will_take_long(monkeypatch, capsys, seconds_per_step, warned):
    from diffusion_policy_ros.training import train as train_module
    from diffusion_policy_ros.training.distributed import DistContext
    clock = {'now': 0.0}
    monkeypatch.setattr(train_module.time, 'perf_counter', lambda: clock['now'])
    estimate = train_module._RunTimeEstimate(100, 10_100, DistContext(0, 0, 1, torch.device('cpu'), None))
    for step in range(101, 120):
        clock['now'] += seconds_per_step
        estimate.after(step)
    err = capsys.readouterr().err
    if warned:  # 2 s a step: ~10,000 steps take ~333 min
        assert 'WARNING: no GPU; at 0.50 it/s' in err and 'about 333 min' in err and 'models/*/train.yaml' in err
    else:
        assert err == ''
