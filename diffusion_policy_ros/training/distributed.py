"""Single-process and torchrun (DDP) training share one code path through `DistContext`.

Under `torchrun --nproc_per_node=N` the environment carries RANK/LOCAL_RANK/WORLD_SIZE; without it
the context is a world of one and every collective here is a no-op, so the train loop never
branches on "am I distributed" except to decide who writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler
from ..errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: not distributed

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints, metrics and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


class DeviceUnavailableError(UserError, RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when there is one; asking for CUDA on a CPU-only machine is an error."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise DeviceUnavailableError(f'device {name!r} requested but torch sees no CUDA device '
                           f'(torch {torch.__version__}, cuda build: {torch.version.cuda})')
    return device


def init_distributed(device_name: str) -> DistContext:
    """Join the torchrun process group if WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistContext(0, 0, 1, device, None)
    rank = int(os.environ['RANK'])
    local_rank = int(os.environ.get('LOCAL_RANK', rank))
    if device.type == 'cuda':
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
        backend = 'nccl'
    else:
        backend = 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                device_id=device if backend == 'nccl' else None)
    return DistContext(rank, local_rank, world_size, device, backend)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(ctx: DistContext, value: float) -> float:
    """Mean of a scalar over ranks (for logging: every rank must call it at the same step)."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / ctx.world_size


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's `obj` on every rank (used for per-rank RNG states in the resume state)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (e.g. a run directory or an error message)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose epoch can start part-way through, so a resumed run sees the same
    batches in the same order as an uninterrupted one (skipping indices, not loading samples)."""

    def __init__(self, dataset: Dataset, ctx: DistContext, seed: int) -> None:
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                         drop_last=False)
        self._skip = 0

    def set_position(self, epoch: int, skip_samples: int) -> None:
        self.set_epoch(epoch)
        self._skip = skip_samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self._skip:])

    def __len__(self) -> int:
        return self.num_samples - self._skip
