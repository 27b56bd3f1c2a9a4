"""`dp-ros distill`: a one- or two-step student from a trained diffusion policy (the teacher).

    dp-ros distill --teacher models/pick_place --data data/pick_place64.zarr --out runs/pick_fast \\
        --config config/distill.yaml
    dp-ros distill --resume runs/pick_fast --steps 6000

Method: the teacher's deterministic sampler (DDIM, eta 0) is a fixed map from an initial noise to an
action chunk, per observation. The student, initialised with the teacher's weights, learns that map
in `student_steps` network evaluations: it sees the same noise and the same observation features and
is trained to land on the teacher's chunk (MSE in normalised action space) - knowledge distillation of
an iterative sampler (Luhman & Luhman 2021), the "one-step generator warm-started from the teacher"
that OneDP (arXiv 2410.21257) also starts from. Chosen over OneDP's distribution matching and over
consistency distillation because it needs no second score network, no EDM-style teacher and no
adversarial term, costs `teacher_steps + student_steps` denoiser passes per sample (the observation
encoder runs once and stays frozen), and keeps every mode: a different noise still lands on a different
mode, as the teacher's would.

The student predicts the clean chunk (`prediction_type: sample`) on a trailing DDIM chain (the first
step at the noisiest timestep), so the checkpoint is an ordinary one: its sampler section says
`ddim`, `num_inference_steps: 1` (or 2), and every consumer (node, eval, replay, demo) samples it with
no new parameter.

On a CPU two settings matter (README "Few-step policies"): `teacher_chunk_draws` computes the teacher's
chunks once per window and noise draw instead of at every step (TeacherChunkBank), and
`rollout_windows` adds windows the student saw in its own episodes for the teacher to label
(on-policy distillation, data.windows).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from diffusion_policy_ros.config_loader import ConfigError, from_mapping
from diffusion_policy_ros.core.checkpoint import CheckpointError
from diffusion_policy_ros.data.windows import WindowsError, load_windows
from diffusion_policy_ros.training import adapters
from diffusion_policy_ros.training.config import TrainConfig, TrainConfigError, load_yaml
from diffusion_policy_ros.training.distributed import DeviceUnavailableError, DistContext
from diffusion_policy_ros.training.state import TrainStateError, load_train_state
from diffusion_policy_ros.training.train import (CHECKPOINTS, Objective, TrainError, resolve_resume, train)


@dataclass
class DistillSection:
    student_steps: int = 1  # network evaluations per chunk of the student: 1 or 2
    teacher_steps: int | None = None  # the teacher's DDIM steps for the targets; None: its own setting
    freeze_encoder: bool = True  # the student keeps the teacher's observation encoder as it is
    # Noise draws per training window whose teacher chunks are computed once, before the first step,
    # and reused every epoch (TeacherChunkBank); 0: a fresh noise and teacher chunk at every step.
    teacher_chunk_draws: int = 8
    init_student: str | None = None  # a student of this teacher to continue from, instead of the teacher
    # Observation windows a student saw in its own episodes (dp-ros eval --save-windows), labelled by the
    # teacher and trained on beside the dataset's (on-policy distillation, data.windows); needs
    # teacher_chunk_draws.
    rollout_windows: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.student_steps not in (1, 2):
            raise ValueError(f'distill.student_steps must be 1 or 2, got {self.student_steps}')
        if self.teacher_steps is not None and self.teacher_steps < 1:
            raise ValueError(f'distill.teacher_steps must be >= 1, got {self.teacher_steps}')
        if self.teacher_chunk_draws < 0:
            raise ValueError(f'distill.teacher_chunk_draws must be >= 0, got {self.teacher_chunk_draws}')
        if self.teacher_chunk_draws and not self.freeze_encoder:
            raise ValueError('distill.teacher_chunk_draws needs freeze_encoder: true (the stored chunks come '
                             "with the teacher encoder's features, which a trained encoder would change); "
                             'set teacher_chunk_draws: 0 to train the encoder with online teacher chunks')
        if self.rollout_windows and not self.teacher_chunk_draws:
            raise ValueError('distill.rollout_windows needs teacher_chunk_draws > 0 (their teacher chunks are '
                             'computed once, before training)')


def make_student(teacher: nn.Module, student_steps: int) -> nn.Module:
    """The teacher's network and normaliser with a few-step, clean-chunk-predicting sampler."""
    from diffusion_policy_ros.core.policy import DiffusionPolicy, build_policy
    if not isinstance(teacher, DiffusionPolicy):
        raise TrainError(f'the teacher must be a diffusion policy, got {type(teacher).__name__}')
    cfg = copy.deepcopy(teacher.cfg)
    cfg.sampler = dataclasses.replace(cfg.sampler, kind='ddim', prediction_type='sample', eta=0.0,
                                      timestep_spacing='trailing', num_inference_steps=student_steps)
    student = build_policy(cfg, teacher.obs_spec, teacher.action_spec, teacher.normalizer, device=teacher.device)
    student.load_state_dict(teacher.state_dict())
    return student


def continue_from(student: nn.Module, earlier_path: Path, keep_encoder: bool) -> None:
    """Start `student` from the weights of an earlier student of the same teacher (e.g. a shipped,
    float16-exported one). `keep_encoder`: the observation encoder stays the teacher's (the frozen
    encoder's features must be exactly the ones the teacher chunks were computed with)."""
    earlier = adapters.load_policy(earlier_path, student.device)
    wanted, found = student.cfg.sampler, earlier.cfg.sampler
    if (found.prediction_type, found.num_inference_steps) != (wanted.prediction_type, wanted.num_inference_steps):
        raise TrainError(f'distill.init_student {earlier_path}: it samples in {found.num_inference_steps} '
                         f'step(s) with prediction_type {found.prediction_type!r}; this run trains a '
                         f'{wanted.num_inference_steps}-step student ({wanted.prediction_type!r})')
    own = student.state_dict()
    weights = earlier.state_dict()
    mismatched = sorted(k for k in own if k not in weights or weights[k].shape != own[k].shape)
    if mismatched or len(weights) != len(own):
        raise TrainError(f'distill.init_student {earlier_path}: not the network of this teacher '
                         f'({len(mismatched)} tensors missing or of another shape, e.g. {mismatched[:3]})')
    student.load_state_dict({key: (own[key] if keep_encoder and key.startswith('obs_encoder.')
                                   else value.to(own[key].dtype)) for key, value in weights.items()})


BANK_FILE = 'teacher_chunks.safetensors'
BANK_BATCH = 64  # windows per teacher pass while a bank is built


class TeacherChunkBank(Dataset):
    """Teacher chunks computed once, `draws` noises per training window, reused every epoch.

    Why: on a CPU the teacher's DDIM passes are most of an online step (measured at batch 64, one
    thread: 0.85 s of 1.2 s for pick_place), so a stored chunk makes a student step about 4x cheaper;
    the student then sees `draws` fixed noises per window instead of a new one each epoch. Each item is
    the frozen encoder's condition, the noise and the teacher's chunk from it. Stored in the run
    directory (safetensors) so `--resume` does not recompute it."""

    def __init__(self, cond: torch.Tensor, noise: torch.Tensor, chunk: torch.Tensor) -> None:
        self.cond, self.noise, self.chunk = cond, noise, chunk

    def __len__(self) -> int:
        return self.cond.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {'cond': self.cond[index], 'noise': self.noise[index], 'teacher_chunk': self.chunk[index]}

    @classmethod
    def build(cls, teacher: nn.Module, batches: Iterable[dict[str, torch.Tensor]], total: int, draws: int,
              teacher_steps: int, *, seed: int, progress: bool, label: str = 'teacher chunks') -> 'TeacherChunkBank':
        """`draws` teacher chunks for each observation of `batches` (robot-unit batches, `total` windows)."""
        from tqdm import tqdm
        generator = torch.Generator().manual_seed(seed)
        shape_tail = (teacher.cfg.horizon, teacher.action_spec.dim)
        conds, noises, chunks = [], [], []
        with torch.no_grad(), tqdm(total=total * draws, desc=label, unit='chunk', dynamic_ncols=True,
                                   disable=not progress) as bar:
            for batch in batches:
                batch = {k: v.to(teacher.device) for k, v in batch.items()}
                cond = teacher._condition(teacher.encode_observations(batch))
                for _ in range(draws):
                    noise = torch.randn((cond.shape[0], *shape_tail), generator=generator).to(cond.device)
                    chunk = teacher.sampler.sample(teacher.denoiser, noise.shape, cond, noise=noise,
                                                   num_inference_steps=teacher_steps)
                    conds.append(cond.cpu())
                    noises.append(noise.cpu())
                    chunks.append(chunk.cpu())
                    bar.update(cond.shape[0])
        return cls(torch.cat(conds), torch.cat(noises), torch.cat(chunks))

    def save(self, path: Path, key: dict[str, str]) -> None:
        save_file({'cond': self.cond, 'noise': self.noise, 'teacher_chunk': self.chunk}, str(path), metadata=key)

    @classmethod
    def load(cls, path: Path, key: dict[str, str]) -> 'TeacherChunkBank | None':
        """The stored bank, or None when there is none or it was made for other settings."""
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework='pt') as stored:
                if stored.metadata() != key:
                    return None
                return cls(stored.get_tensor('cond'), stored.get_tensor('noise'), stored.get_tensor('teacher_chunk'))
        except (SafetensorError, OSError):
            return None


def _window_batches(teacher: nn.Module, windows: dict[str, np.ndarray], count: int, path: Path
                    ) -> Iterator[dict[str, torch.Tensor]]:
    """Stored windows as the policy's robot-unit batches (its own window conversion, so a window that
    does not fit the teacher's cameras or state is refused naming the file)."""
    for begin in range(0, count, BANK_BATCH):
        try:
            singles = [teacher._window_to_batch({k: v[i] for k, v in windows.items()})
                       for i in range(begin, min(begin + BANK_BATCH, count))]
        except (KeyError, ValueError) as exc:
            raise TrainError(f'distill.rollout_windows {path}: {exc}') from None
        yield {key: torch.cat([single[key] for single in singles]) for key in singles[0]}


class DistillationLoss(nn.Module):
    """MSE between the student's few-step chunk and the teacher's DDIM chunk from the same noise."""

    def __init__(self, student: nn.Module, teacher: nn.Module, section: DistillSection) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_steps = section.teacher_steps or teacher.cfg.sampler.num_inference_steps
        self.freeze_encoder = section.freeze_encoder
        if self.freeze_encoder:
            student.obs_encoder.requires_grad_(False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_of(self.student, batch)

    def loss_of(self, student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if 'teacher_chunk' in batch:  # a TeacherChunkBank item
            return self._student_loss(student, batch['cond'], batch['noise'], batch['teacher_chunk'])
        teacher = self.teacher
        with torch.no_grad():
            features = teacher.encode_observations(batch)
            cond = teacher._condition(features)
            shape = (cond.shape[0], teacher.cfg.horizon, teacher.action_spec.dim)
            noise = torch.randn(shape, device=cond.device)
            target = teacher.sampler.sample(teacher.denoiser, shape, cond, noise=noise,
                                            num_inference_steps=self.teacher_steps)
        if not self.freeze_encoder:
            cond = student._condition(student.encode_observations(batch))
        return self._student_loss(student, cond, noise, target)

    @staticmethod
    def _student_loss(student: nn.Module, cond: torch.Tensor, noise: torch.Tensor, target: torch.Tensor
                      ) -> torch.Tensor:
        shape = noise.shape
        sampler = student.sampler
        table = sampler.table()
        x = noise
        for index, t in enumerate(table.timesteps):
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
            x, _ = sampler.step_by_index(student.denoiser(x, t_batch, cond), index, x, None, len(table.timesteps))
        return F.mse_loss(x, target)


class Distillation(Objective):
    name = 'distill'

    def __init__(self, teacher_path: Path, section: DistillSection) -> None:
        self.teacher_path = Path(teacher_path)
        self.section = section
        self._teacher: nn.Module | None = None

    def teacher(self, device: torch.device) -> nn.Module:
        if self._teacher is None:
            self._teacher = adapters.load_policy(self.teacher_path, device).eval().requires_grad_(False)
        return self._teacher

    def policy(self, cfg: TrainConfig, dataset: adapters.TrainingData, resume_dir: Path | None,
               device: torch.device) -> nn.Module:
        teacher = self.teacher(device)
        if resume_dir is not None:
            return adapters.load_policy(resume_dir, device)
        student = make_student(teacher, self.section.student_steps)
        if self.section.init_student:
            continue_from(student, Path(self.section.init_student), keep_encoder=self.section.freeze_encoder)
        return student

    def loss_module(self, policy: nn.Module) -> nn.Module:
        return DistillationLoss(policy, self.teacher(policy.device), self.section)

    def training_set(self, data: adapters.TrainingData, run_dir: Path, ctx: DistContext) -> Dataset:
        draws = self.section.teacher_chunk_draws
        if not draws:
            return data.train
        teacher = self.teacher(ctx.device)
        steps = self.section.teacher_steps or teacher.cfg.sampler.num_inference_steps
        common = {'teacher': str(self.teacher_path.resolve()), 'draws': str(draws), 'teacher_steps': str(steps)}
        banks = [self._bank(run_dir / BANK_FILE, ctx, teacher, steps, 'teacher chunks', {
            **common, 'windows': str(len(data.train)),
            'train_episodes': ','.join(str(int(i)) for i in data.train_episodes)},
            lambda: (DataLoader(data.train, batch_size=BANK_BATCH, shuffle=False), len(data.train)))]
        for index, source in enumerate(self.section.rollout_windows):
            path = Path(source)
            windows, _ = load_windows(path)
            count = len(next(iter(windows.values())))
            key = {**common, 'windows': str(count), 'source': str(path.resolve()),
                   'size': str(path.stat().st_size)}
            banks.append(self._bank(run_dir / f'teacher_chunks_rollouts_{index}.safetensors', ctx, teacher, steps,
                                    f'teacher chunks ({path.name})', key,
                                    lambda: (_window_batches(teacher, windows, count, path), count)))
        return banks[0] if len(banks) == 1 else ConcatDataset(banks)

    def _bank(self, path: Path, ctx: DistContext, teacher: nn.Module, steps: int, label: str, key: dict[str, str],
              source: Callable[[], tuple[Iterable[dict[str, torch.Tensor]], int]]) -> TeacherChunkBank:
        """The bank stored at `path` for `key`, else built (and stored by the main process)."""
        bank = TeacherChunkBank.load(path, key)
        if bank is None:
            batches, total = source()
            bank = TeacherChunkBank.build(teacher, batches, total, self.section.teacher_chunk_draws, steps, seed=0,
                                          progress=ctx.is_main, label=label)
            if ctx.is_main:
                path.parent.mkdir(parents=True, exist_ok=True)
                bank.save(path, key)
        return bank

    def meta(self) -> dict[str, Any]:
        return {'teacher': str(self.teacher_path.resolve()), 'distill': dataclasses.asdict(self.section)}


def distill_config(config: Path | None, teacher: nn.Module, saved: dict[str, Any] | None = None
                   ) -> tuple[TrainConfig, DistillSection]:
    """The run's settings: `config` (train, optim, lr_schedule, ema, dataset and distill sections), else
    the resumed run's; the policy section is always the teacher's (the student keeps its windows)."""
    if config is not None:
        data = load_yaml(config) or {}
        source = str(config)
    elif saved is not None:
        data, source = dict(saved['train_config']), 'the resumed run'
        data['distill'] = saved.get('distill', {})
    else:
        data, source = {}, '<defaults>'
    if not isinstance(data, dict):
        raise TrainConfigError(f'distill config {source}: expected a mapping at top level')
    data = dict(data)
    if 'policy' in data and config is not None:
        raise TrainConfigError(f'distill config {source}: no policy section: the student is the teacher\'s network')
    try:
        section = from_mapping(DistillSection, data.pop('distill', None) or {}, f'distill config {source}', 'distill')
    except ConfigError as exc:
        raise TrainConfigError(str(exc)) from None
    data['policy'] = teacher.cfg.to_dict()
    return TrainConfig.from_dict(data, source=source), section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--teacher', type=Path, help='the trained diffusion policy checkpoint (directory)')
    parser.add_argument('--data', type=Path, help="zarr episode dataset (the teacher's, or any of the task)")
    parser.add_argument('--out', type=Path, help='run directory (default with --resume: the resumed run)')
    parser.add_argument('--config', type=Path, help='distill_*.yaml: train/optim/lr_schedule/ema/dataset and '
                                                    'distill sections (default: config/distill.yaml)')
    parser.add_argument('--resume', type=Path, metavar='RUN_DIR', help='continue a distillation run')
    parser.add_argument('--steps', type=int, help='override train.steps (total, not additional)')
    parser.add_argument('--device', help='override train.device: auto | cpu | cuda | cuda:N')
    parser.add_argument('--no-progress', action='store_true', help='no tqdm bar (logs only)')


def run(args: argparse.Namespace) -> int:
    from diffusion_policy_ros.paths import share_dir
    try:
        saved: dict[str, Any] | None = None
        resume_dir = None
        if args.resume is not None:
            resume_dir = resolve_resume(args.resume)
            saved = load_train_state(resume_dir).meta
        teacher_path = args.teacher or (Path(saved['teacher']) if saved and saved.get('teacher') else None)
        if teacher_path is None:
            raise TrainError('--teacher is required (unless --resume points at a distillation run)')
        data = args.data or (Path(saved['dataset']) if saved and saved.get('dataset') else None)
        if data is None:
            raise TrainError('--data is required (unless --resume points at a distillation run)')
        out = args.out or (Path(args.resume) if args.resume and (Path(args.resume) / CHECKPOINTS).is_dir()
                           else (resume_dir.parent.parent if resume_dir else None))
        if out is None:
            raise TrainError('--out is required for a new run')
        teacher = adapters.load_policy(teacher_path, torch.device('cpu'))
        config = args.config or (None if saved else share_dir() / 'config' / 'distill.yaml')
        cfg, section = distill_config(config, teacher, saved)
        if args.steps is not None:
            cfg.train.steps = args.steps
        if args.device is not None:
            cfg.train.device = args.device
        cfg.validate('(after command-line overrides)')
        train(cfg, data, out, resume=resume_dir, progress=not args.no_progress,
              objective=Distillation(teacher_path, section))
    except (TrainError, TrainConfigError, TrainStateError, adapters.DataSetupError, DeviceUnavailableError,
            CheckpointError, WindowsError, FileNotFoundError) as exc:
        print(f'dp-ros distill: error: {exc}', file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `torchrun ... -m diffusion_policy_ros.training.distill` (same flags)."""
    parser = argparse.ArgumentParser(prog='dp-ros distill', description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
