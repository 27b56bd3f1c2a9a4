"""`dp-ros train`: a zarr episode dataset in, a deployable checkpoint out.

    dp-ros train --config config/train_pick_place.yaml --data data/pick_place.zarr --out runs/pp
    dp-ros train --resume runs/pp --steps 20000          # continue (config and data from the run)
    torchrun --nproc_per_node=4 -m diffusion_policy_ros.training.train --config ... --data ... --out ...

The loop is Chi et al.'s: AdamW, warm-up + cosine LR, EMA of the weights (the EMA copy is the
checkpointed inference model), gradient clipping, bf16/fp16 autocast on CUDA. Normaliser statistics
are fitted on the training episodes only, so validation loss is an honest held-out number.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import math
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from diffusion_policy_ros.training import adapters
from diffusion_policy_ros.training.config import TrainConfig, TrainConfigError, load_train_config
from diffusion_policy_ros.training.distributed import (
    DeviceUnavailableError, DistContext, ResumableSampler, all_reduce_mean, barrier, gather_objects,
    init_distributed, shutdown_distributed)
from diffusion_policy_ros.training.ema import EMA
from diffusion_policy_ros.training.plots import MetricsLog, plot_loss
from diffusion_policy_ros.training.state import (
    STATE_JSON, TrainState, TrainStateError, capture_rng, load_train_state, restore_rng, save_train_state)
from ..errors import UserError

CHECKPOINTS = 'checkpoints'
LATEST = 'latest'


class TrainError(UserError, RuntimeError):
    """A training run that cannot start or continue; the message says which input is at fault."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    loss: float  # mean training loss over the last log window
    val_loss: float | None  # last validation loss (None without validation episodes)
    checkpoint: Path | None  # the last step_XXXXXX directory written (rank 0 only)


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f'step_{step:06d}'


def resolve_resume(path: str | Path) -> Path:
    """`--resume` accepts a run directory (its checkpoints/latest) or one checkpoint directory."""
    path = Path(path)
    for candidate in (path / CHECKPOINTS / LATEST, path):
        if (candidate / STATE_JSON).is_file():
            return candidate
    raise TrainError(f'--resume {path}: no training state found (looked for {path / CHECKPOINTS / LATEST / STATE_JSON} '
                     f'and {path / STATE_JSON})')


@dataclass(frozen=True)
class LrRestart:
    """Where a resumed run with a new `train.steps` took over the schedule: from `step` on, the decay
    starts at `factor` (the old schedule's value there) and reaches 0 at the new total, so the LR goes
    on falling instead of jumping back to the peak."""
    step: int
    factor: float


def lr_multiplier(step: int, *, name: str, warmup_steps: int, total_steps: int,
                  restart: LrRestart | None = None) -> float:
    """Factor on the peak LR at `step`: linear warm-up from 0, then cosine/linear decay to 0 at
    `total_steps` (or constant). The same numbers as diffusers' `get_scheduler` (the test oracle);
    written here because importing `diffusers.optimization` costs seconds per process (x ranks)."""
    if restart is not None and step >= restart.step and name != 'constant':
        shape = lr_multiplier(step - restart.step, name=name, warmup_steps=0, total_steps=total_steps - restart.step)
        return restart.factor * shape
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if name == 'constant':
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if name == 'linear':
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                      restart: LrRestart | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `lr_multiplier`; a partial (not a closure) so its state_dict stays JSON-safe and a
    resumed run with a new `--steps` uses the new total (from `restart` on), not the saved one."""
    schedule = functools.partial(lr_multiplier, name=cfg.lr_schedule.name,
                                 warmup_steps=cfg.lr_schedule.warmup_steps, total_steps=cfg.train.steps,
                                 restart=restart)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def resumed_lr_restart(cfg: TrainConfig, meta: dict[str, Any], step: int) -> LrRestart | None:
    """The schedule a resumed run follows: the saved one when `train.steps` is unchanged, else one that
    continues from the saved schedule's value at `step` down to 0 at the new total."""
    saved = meta.get('lr_restart')
    saved_restart = LrRestart(**saved) if saved else None
    saved_total = int(meta.get('train_config', {}).get('train', {}).get('steps', cfg.train.steps))
    if saved_total == cfg.train.steps:
        return saved_restart
    factor = lr_multiplier(step, name=cfg.lr_schedule.name, warmup_steps=cfg.lr_schedule.warmup_steps,
                           total_steps=saved_total, restart=saved_restart)
    return LrRestart(step=step, factor=factor)


class LossModule(nn.Module):
    """DDP only synchronises gradients through `forward`; the policy's loss is `compute_loss`."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.policy.compute_loss(batch)

    def loss_of(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The same loss for another copy of the model (the EMA one, in validation)."""
        return model.compute_loss(batch)


class Objective:
    """What a run trains and how: the default builds a policy for the dataset (or reloads it on
    resume) and minimises its own denoising loss; `dp-ros distill` trains a student against a teacher."""

    name = 'train'

    def policy(self, cfg: TrainConfig, dataset: adapters.TrainingData, resume_dir: Path | None,
               device: torch.device) -> nn.Module:
        if resume_dir is not None:
            return adapters.load_policy(resume_dir, device)
        return adapters.build_policy_for(cfg, dataset, device)

    def loss_module(self, policy: nn.Module) -> nn.Module:
        return LossModule(policy)

    def training_set(self, data: adapters.TrainingData, run_dir: Path, ctx: DistContext) -> Dataset:
        """The samples the optimiser steps on (validation always uses `data.val`)."""
        return data.train

    def meta(self) -> dict[str, Any]:
        """Saved with the training state (and the provenance) so `--resume` finds the same inputs."""
        return {}


@dataclass
class Optimisation:
    """AdamW + LR schedule + EMA + grad clipping + CUDA autocast: one training step, shared by the
    train loop and `benchmarks/train_throughput.py` so the benchmark times exactly what training runs."""

    policy: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: EMA | None
    grad_clip: float
    device: torch.device
    amp_dtype: torch.dtype | None  # None: float32 (always on CPU)

    @classmethod
    def create(cls, cfg: TrainConfig, policy: nn.Module, device: torch.device,
               lr_restart: LrRestart | None = None) -> 'Optimisation':
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                      eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
        amp_dtype = ({'bf16': torch.bfloat16, 'fp16': torch.float16}.get(cfg.train.amp)
                     if device.type == 'cuda' else None)
        return cls(policy=policy, optimizer=optimizer, scheduler=make_lr_scheduler(optimizer, cfg, lr_restart),
                   scaler=torch.amp.GradScaler('cuda', enabled=amp_dtype is torch.float16),
                   ema=EMA(policy, cfg.ema) if cfg.ema.enabled else None, grad_clip=cfg.train.grad_clip,
                   device=device, amp_dtype=amp_dtype)

    def step(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> float:
        """One optimiser step on `batch` (robot units, any device); returns the loss as a float.
        `module` is the policy's loss module, DDP-wrapped when distributed."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        autocast = (torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else contextlib.nullcontext())
        with autocast:
            loss = module(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.policy)
        return float(loss.detach())


def train(cfg: TrainConfig, data: str | Path, out: str | Path, *, resume: str | Path | None = None,
          progress: bool = True, objective: Objective | None = None) -> TrainResult:
    """Train (or continue) a run; every rank calls this, only rank 0 writes into `out`."""
    ctx = init_distributed(cfg.train.device)
    try:
        return _train(cfg, Path(data), Path(out), resume, progress, ctx, objective or Objective())
    finally:
        shutdown_distributed(ctx)


def _train(cfg: TrainConfig, data_path: Path, run_dir: Path, resume: str | Path | None, progress: bool,
           ctx: DistContext, objective: Objective) -> TrainResult:
    resume_dir = resolve_resume(resume) if resume is not None else None
    state = load_train_state(resume_dir) if resume_dir is not None else None
    if state is not None and state.step >= cfg.train.steps:
        raise TrainError(f'--resume {resume}: the run is already at step {state.step} >= train.steps '
                         f'{cfg.train.steps}; pass --steps N with N > {state.step} to train further')

    _seed_everything(cfg.train.seed)  # identical model initialisation on every rank
    dataset = adapters.open_dataset(data_path, cfg)
    policy = objective.policy(cfg, dataset, resume_dir, ctx.device)
    if state is not None:
        # The checkpoint fixes architecture, specs and normaliser; a changed dataset must not alter them.
        policy.load_state_dict(state.model)
        saved = (policy.obs_spec.camera_keys, policy.obs_spec.state_dim, policy.action_spec.dim)
        found = (dataset.obs_spec.camera_keys, dataset.obs_spec.state_dim, dataset.action_spec.dim)
        if saved != found:
            raise TrainError(f'--resume {resume_dir}: the run was trained on cameras {saved[0]}, state dim '
                             f'{saved[1]}, action dim {saved[2]}, but {data_path} gives {found[0]}, {found[1]}, '
                             f'{found[2]}')
    policy.to(ctx.device).train()

    lr_restart = resumed_lr_restart(cfg, state.meta, state.step) if state is not None else None
    opt = Optimisation.create(cfg, policy, ctx.device, lr_restart)
    ema, optimizer, scheduler, scaler = opt.ema, opt.optimizer, opt.scheduler, opt.scaler

    loader_generator = torch.Generator()
    loader_generator.manual_seed(cfg.train.seed + ctx.rank)
    _seed_everything(cfg.train.seed + ctx.rank)  # distinct noise / crops per rank
    step = 0
    if state is not None:
        step = state.step
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if ema is not None:
            if state.ema is None:
                raise TrainError(f'--resume {resume_dir}: the saved run has no EMA but ema.enabled is true')
            ema.load_state(state.ema, state.ema_step)
        if state.scaler and scaler.is_enabled():
            scaler.load_state_dict(state.scaler)
        if len(state.rng) == ctx.world_size:
            restore_rng(state.rng[ctx.rank], loader_generator)
        else:  # a different number of processes: deterministic, but not the uninterrupted sequence
            _seed_everything(hash((cfg.train.seed, ctx.rank, step)) % 2**31)

    train_set, val_set = objective.training_set(dataset, run_dir, ctx), dataset.val
    sampler = ResumableSampler(train_set, ctx, seed=cfg.train.seed)
    loader = make_loader(train_set, cfg, ctx, sampler=sampler, generator=loader_generator)
    val_loader = (make_loader(val_set, cfg, ctx, sampler=None, generator=None)
                  if val_set is not None and len(val_set) > 0 and ctx.is_main else None)
    batches_per_epoch = math.ceil(sampler.num_samples / cfg.train.batch_size)

    loss_module = module = objective.loss_module(policy)
    if ctx.distributed:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == 'cuda' else None)

    metrics = None
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(run_dir / 'metrics.csv', resume_step=step if state else None)
        _say(ctx, f'{objective.name}: {len(train_set)} windows from {len(dataset.train_episodes)} episodes, '
                  f'validation {len(val_set) if val_set is not None else 0} windows from '
                  f'{len(dataset.val_episodes)} episodes; {sum(p.numel() for p in policy.parameters()):,} '
                  f'parameters on {ctx.device} x{ctx.world_size}'
                  + (f'; resuming at step {step}' if state else ''))
        if lr_restart is not None and state is not None and lr_restart.step == state.step:
            _say(ctx, f'{objective.name}: train.steps is now {cfg.train.steps}: the learning rate continues from '
                      f'{lr_restart.factor * cfg.optim.lr:.3g} at step {step} and decays to 0 at step '
                      f'{cfg.train.steps} '
                      f'({cfg.lr_schedule.name}), without a new warm-up'
                      + ('; it had already decayed below 1 % of optim.lr, so the added steps will change the '
                         'weights little' if lr_restart.factor < 0.01 else ''))
        if cfg.train.amp != 'none' and ctx.device.type != 'cuda':
            _say(ctx, f'train: amp {cfg.train.amp!r} applies on CUDA only; training in float32 on {ctx.device}')

    from tqdm import tqdm
    bar = tqdm(total=cfg.train.steps, initial=step, desc=objective.name, dynamic_ncols=True, unit='it',
               disable=not (progress and ctx.is_main))
    window_losses: list[float] = []
    window_start = time.perf_counter()
    window_steps = 0
    last_loss, last_val, last_ckpt = math.nan, None, None
    provenance_base = {
        'dataset': str(data_path.resolve()), 'train_episodes': [int(i) for i in dataset.train_episodes],
        'val_episodes': [int(i) for i in dataset.val_episodes], 'world_size': ctx.world_size,
        'device': str(ctx.device), 'git_commit': _git_commit(), 'train_config': cfg.to_dict(),
        'resumed_from': str(resume_dir) if resume_dir is not None else None, **objective.meta(),
    }
    epoch, within = divmod(step, batches_per_epoch)
    estimate = _RunTimeEstimate(step, cfg.train.steps, ctx)
    while step < cfg.train.steps:
        sampler.set_position(epoch, within * cfg.train.batch_size)
        for batch in loader:
            lr = scheduler.get_last_lr()[0]
            loss = opt.step(module, batch)
            if not math.isfinite(loss):
                raise TrainError(f'non-finite training loss {loss} at step {step} (lr {lr:.3g}); '
                                 'lower optim.lr or check the dataset for NaN/inf')
            step += 1
            estimate.after(step)
            window_losses.append(loss)
            window_steps += 1
            bar.update(1)

            last = step >= cfg.train.steps
            row: dict[str, Any] = {}
            if step % cfg.train.log_every == 0 or last:
                elapsed = time.perf_counter() - window_start
                last_loss = all_reduce_mean(ctx, float(np.mean(window_losses)))
                row.update(loss=last_loss, lr=lr, it_per_s=window_steps / max(elapsed, 1e-9))
                bar.set_postfix(loss=f'{last_loss:.4f}', lr=f'{lr:.2e}')
                window_losses, window_steps, window_start = [], 0, time.perf_counter()
            if val_loader is not None and (step % cfg.train.val_every == 0 or last):
                last_val = _validation_loss(ema.averaged if ema else policy, loss_module, val_loader, cfg, ctx)
                row['val_loss'] = last_val
                bar.set_postfix(loss=f'{last_loss:.4f}', val=f'{last_val:.4f}', lr=f'{lr:.2e}')
            if metrics is not None and row:
                metrics.append(step, **row)
            if step % cfg.train.checkpoint_every == 0 or last:
                # Collective: every rank contributes its RNG state, rank 0 writes.
                rng = gather_objects(ctx, capture_rng(loader_generator))
                if ctx.is_main:
                    train_state = TrainState(
                        step=step, model=policy.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), ema=ema.state_tensors() if ema else None,
                        ema_step=ema.optimization_step if ema else 0,
                        scaler=scaler.state_dict() if scaler.is_enabled() else None, rng=rng,
                        meta={'train_config': cfg.to_dict(), 'dataset': str(data_path.resolve()),
                              'world_size': ctx.world_size, **objective.meta(),
                              'lr_restart': dataclasses.asdict(lr_restart) if lr_restart else None})
                    provenance = {**provenance_base, 'step': step, 'total_steps': cfg.train.steps,
                                  'date': dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'),
                                  'ema': ema is not None, 'train_loss': last_loss, 'val_loss': last_val}
                    last_ckpt = _write_checkpoint(run_dir, step, ema.averaged if ema else policy,
                                                  provenance, train_state)
                    plot_loss(run_dir / 'metrics.csv', run_dir / 'loss.png')
            if last:
                break
        epoch, within = epoch + 1, 0
    bar.close()
    barrier(ctx)
    if ctx.is_main:
        _say(ctx, f'{objective.name}: done at step {step}, loss {last_loss:.4f}'
                  + (f', val_loss {last_val:.4f}' if last_val is not None else '')
                  + f'; wrote {last_ckpt}, {run_dir / "metrics.csv"}, {run_dir / "loss.png"}')
    return TrainResult(run_dir=run_dir, step=step, loss=last_loss, val_loss=last_val, checkpoint=last_ckpt)


class _RunTimeEstimate:
    """Says early how long a run will take on a CPU, before a user waits hours for a config sized for a
    GPU (the shipped train_*.yaml): measured over the first steps, since step cost varies 100x by model."""

    WARMUP_STEPS, MEASURED_STEPS, WARN_ABOVE_S = 3, 10, 30 * 60

    def __init__(self, first_step: int, total_steps: int, ctx: DistContext) -> None:
        self.first, self.total, self.ctx = first_step, total_steps, ctx
        self.started: float | None = None

    def after(self, step: int) -> None:
        if not self.ctx.is_main or self.ctx.device.type == 'cuda':
            return
        if step == self.first + self.WARMUP_STEPS:
            self.started = time.perf_counter()
        elif self.started is not None and step == self.first + self.WARMUP_STEPS + self.MEASURED_STEPS:
            rate = self.MEASURED_STEPS / max(time.perf_counter() - self.started, 1e-9)
            remaining_s = (self.total - step) / rate
            if remaining_s > self.WARN_ABOVE_S:
                _say(self.ctx, f'train: WARNING: no GPU; at {rate:.2f} it/s on {self.ctx.device} the remaining '
                               f'{self.total - step} steps take about {remaining_s / 60:.0f} min. The shipped '
                               f'config/train_*.yaml are sized for a GPU; models/*/train.yaml are the CPU-sized '
                               f'configs that made the shipped checkpoints (or pass --steps)')


def make_loader(dataset: Dataset, cfg: TrainConfig, ctx: DistContext, *, sampler, generator) -> DataLoader:
    workers = cfg.train.num_workers
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, shuffle=False,
                      num_workers=workers, persistent_workers=workers > 0, generator=generator,
                      pin_memory=ctx.device.type == 'cuda', drop_last=False)


@torch.no_grad()
def _validation_loss(model: nn.Module, loss_module: nn.Module, loader: DataLoader, cfg: TrainConfig,
                     ctx: DistContext) -> float:
    """Mean loss over the first `val_batches` validation batches, with the SAME diffusion noise each
    time (forked RNG), so successive validation numbers are comparable and training RNG is untouched."""
    was_training = model.training
    model.eval()
    losses = []
    devices = [ctx.device] if ctx.device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.train.seed + 7919)
        for index, batch in enumerate(loader):
            if index >= cfg.train.val_batches:
                break
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            losses.append(float(loss_module.loss_of(model, batch)))
    model.train(was_training)
    return float(np.mean(losses))


def _write_checkpoint(run_dir: Path, step: int, inference_model: nn.Module, provenance: dict[str, Any],
                      train_state: TrainState) -> Path:
    """step_XXXXXX/ then a copy as latest/, each written under a temporary name and renamed, so a
    crash mid-write never leaves a half checkpoint where `--resume` or `load_checkpoint` looks."""
    target = checkpoint_dir(run_dir, step)
    tmp = target.with_name(target.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    adapters.save_policy_checkpoint(inference_model, tmp, provenance)
    save_train_state(tmp, train_state)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    latest = target.parent / LATEST
    latest_tmp, latest_old = latest.with_name(LATEST + '.tmp'), latest.with_name(LATEST + '.old')
    shutil.rmtree(latest_tmp, ignore_errors=True)
    shutil.copytree(target, latest_tmp)
    shutil.rmtree(latest_old, ignore_errors=True)
    if latest.exists():
        latest.rename(latest_old)
    latest_tmp.rename(latest)
    shutil.rmtree(latest_old, ignore_errors=True)
    return target


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _git_commit() -> str | None:
    """Commit of the code that trained (with '-dirty' for local changes), for provenance."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ('-dirty' if dirty else '') if commit else None


def _say(ctx: DistContext, message: str) -> None:
    if ctx.is_main:
        from tqdm import tqdm
        tqdm.write(message, file=sys.stderr)


# ---- CLI ---------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--config', type=Path, help='train_*.yaml (optional with --resume: the run\'s own)')
    parser.add_argument('--data', type=Path, help='zarr episode dataset (optional with --resume)')
    parser.add_argument('--out', type=Path, help='run directory (default with --resume: the resumed run)')
    parser.add_argument('--resume', type=Path, metavar='RUN_DIR',
                        help='continue a run: its checkpoints/latest, or one checkpoints/step_XXXXXX')
    parser.add_argument('--steps', type=int, help='override train.steps (total, not additional)')
    parser.add_argument('--device', help="override train.device: auto | cpu | cuda | cuda:N")
    parser.add_argument('--no-progress', action='store_true', help='no tqdm bar (logs only)')


def resolve_args(args: argparse.Namespace) -> tuple[TrainConfig, Path, Path, Path | None]:
    """Config, data and run directory from the flags, falling back to the resumed run's own."""
    state_meta: dict[str, Any] = {}
    resume_dir = None
    if args.resume is not None:
        resume_dir = resolve_resume(args.resume)
        state_meta = load_train_state(resume_dir).meta
    if args.config is not None:
        cfg = load_train_config(args.config)
    elif state_meta.get('train_config'):
        cfg = TrainConfig.from_dict(state_meta['train_config'], source=str(resume_dir / STATE_JSON))
    else:
        raise TrainError('--config is required (unless --resume points at a run)')
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.device is not None:
        cfg.train.device = args.device
    cfg.validate('(after command-line overrides)')
    if state_meta.get('train_config') and args.config is not None:
        saved = TrainConfig.from_dict(state_meta['train_config']).policy
        if adapters.policy_config_dict(saved) != adapters.policy_config_dict(cfg.policy):
            raise TrainError(f'--resume {args.resume}: the policy section of {args.config} differs from the '
                             'one the run was trained with; resume without --config or start a new run')
    data = args.data if args.data is not None else (Path(state_meta['dataset']) if state_meta.get('dataset') else None)
    if data is None:
        raise TrainError('--data is required (unless --resume points at a run)')
    if args.out is not None:
        out = args.out
    elif args.resume is not None:
        out = (Path(args.resume) if (Path(args.resume) / CHECKPOINTS).is_dir()
               else Path(args.resume).resolve().parent.parent)
    else:
        raise TrainError('--out is required for a new run')
    return cfg, data, out, resume_dir


def run(args: argparse.Namespace) -> int:
    try:
        cfg, data, out, resume_dir = resolve_args(args)
        train(cfg, data, out, resume=resume_dir, progress=not args.no_progress)
    except (TrainError, TrainConfigError, TrainStateError, adapters.DataSetupError, DeviceUnavailableError) as exc:
        print(f'dp-ros train: error: {exc}', file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `torchrun ... -m diffusion_policy_ros.training.train` (same flags as dp-ros train)."""
    parser = argparse.ArgumentParser(prog='dp-ros train', description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
