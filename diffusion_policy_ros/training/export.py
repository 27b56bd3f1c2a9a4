"""`dp-ros export`: copy a training checkpoint into a release one (e.g. half-precision weights for git).

Training writes float32 weights next to a resume state; what ships in `models/` is only the policy
(weights + config.json), and float16 storage halves it with no measurable change in closed loop (the
shipped pick_place report is measured on the exported file).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..core.checkpoint import STORAGE_DTYPES, load_checkpoint, read_checkpoint_config, resolve_checkpoint, save_checkpoint


def export_checkpoint(source: str | Path, out: str | Path, storage_dtype: str = 'float16') -> Path:
    """Write the policy of checkpoint `source` to `out` with its weights stored as `storage_dtype`."""
    config_path, _ = resolve_checkpoint(source)
    provenance = dict(read_checkpoint_config(config_path).get('provenance') or {})
    provenance.update(exported_from=str(config_path.parent), storage_dtype=storage_dtype)
    return save_checkpoint(load_checkpoint(source), out, provenance, storage_dtype=storage_dtype)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('checkpoint', help='checkpoint directory (e.g. runs/x/checkpoints/step_008000)')
    parser.add_argument('out', help='directory to write model.safetensors + config.json to')
    parser.add_argument('--dtype', default='float16', choices=sorted(STORAGE_DTYPES),
                        help='storage precision of the weights (they load back as float32)')


def run(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.out, args.dtype)
    size = (out / 'model.safetensors').stat().st_size
    print(f'export: {out} ({size / 2**20:.1f} MiB, {args.dtype} weights)')
    return 0
