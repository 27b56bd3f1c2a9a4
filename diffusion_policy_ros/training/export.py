"""`dp-ros export`: copy a training checkpoint into a release one (e.g. half-precision weights for git).

Training writes float32 weights next to a resume state; what ships in `models/` is only the policy
(weights + config.json), and float16 storage halves it. Evaluate the exported copy, not the training
checkpoint: the shipped pick_place report is measured on the float16 file.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..core.checkpoint import (STORAGE_DTYPES, load_checkpoint, read_checkpoint_config, resolve_checkpoint,
                               save_checkpoint)


def export_checkpoint(source: str | Path, out: str | Path, storage_dtype: str = 'float16',
                      n_action_steps: int | None = None, num_inference_steps: int | None = None) -> Path:
    """Write the policy of checkpoint `source` to `out` with its weights stored as `storage_dtype`.

    `n_action_steps` / `num_inference_steps` replace the execution defaults the checkpoint carries
    (what `dp-ros eval` and the policy node use unless told otherwise), e.g. after a sweep.
    """
    config_path, _ = resolve_checkpoint(source)
    provenance = dict(read_checkpoint_config(config_path).get('provenance') or {})
    provenance.update(exported_from=str(config_path.parent), storage_dtype=storage_dtype)
    policy = load_checkpoint(source)
    if n_action_steps is not None or num_inference_steps is not None:
        cfg = policy.cfg
        sampler = cfg.sampler if num_inference_steps is None else dataclasses.replace(
            cfg.sampler, num_inference_steps=num_inference_steps)
        actions = cfg.n_action_steps if n_action_steps is None else n_action_steps
        cfg = dataclasses.replace(cfg, sampler=sampler, n_action_steps=actions)
        policy.cfg = cfg
        provenance['execution_overrides'] = {'n_action_steps': cfg.n_action_steps,
                                             'num_inference_steps': cfg.sampler.num_inference_steps}
    return save_checkpoint(policy, out, provenance, storage_dtype=storage_dtype)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('checkpoint', help='checkpoint directory (e.g. runs/x/checkpoints/step_008000)')
    parser.add_argument('out', help='directory to write model.safetensors + config.json to')
    parser.add_argument('--dtype', default='float16', choices=sorted(STORAGE_DTYPES),
                        help='storage precision of the weights (they load back as float32)')
    parser.add_argument('--n-action-steps', type=int, default=None, help='actions executed per chunk by default')
    parser.add_argument('--num-inference-steps', type=int, default=None, help='DDIM steps by default')


def run(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.out, args.dtype, args.n_action_steps, args.num_inference_steps)
    size = (out / 'model.safetensors').stat().st_size
    print(f'export: {out} ({size / 2**20:.1f} MiB, {args.dtype} weights)')
    return 0
