"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory holds the inference checkpoint (core `save_checkpoint`: EMA weights) and,
next to it, `train_state.safetensors` + `train_state.json`: raw weights, EMA weights, optimiser
moments, LR scheduler, grad scaler, step, and every RNG state, so `--resume` continues the run as
if it had never stopped.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from ..errors import UserError

STATE_TENSORS = 'train_state.safetensors'
STATE_JSON = 'train_state.json'
STATE_FORMAT_VERSION = 1


class TrainStateError(UserError, ValueError):
    """A training state that cannot be resumed from; the message names the file and the problem."""


@dataclass
class TrainState:
    """Everything `--resume` needs, split into tensors and JSON-safe values."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    ema: dict[str, torch.Tensor] | None = None
    ema_step: int = 0
    scaler: dict[str, Any] | None = None
    rng: list[dict[str, Any]] = field(default_factory=list)  # one entry per rank
    meta: dict[str, Any] = field(default_factory=dict)  # config, dataset, split, world size...


def capture_rng(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU/CUDA, the DataLoader's generator)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        'python': [version, list(internal), gauss],
        'numpy': [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'loader': loader_generator.get_state() if loader_generator is not None else None,
    }
    return state


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    if loader_generator is not None and state.get('loader') is not None:
        loader_generator.set_state(state['loader'])


def save_train_state(directory: str | Path, state: TrainState) -> None:
    """Write train_state.safetensors + train_state.json into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}

    def put(name: str, tensor: torch.Tensor) -> str:
        # clone: safetensors refuses tensors that share storage (views, tied weights).
        tensors[name] = tensor.detach().to('cpu').contiguous().clone()
        return name

    for key, value in state.model.items():
        put(f'model/{key}', value)
    for key, value in (state.ema or {}).items():
        put(f'ema/{key}', value)
    optim_state_json: dict[str, dict[str, Any]] = {}
    for index, entries in state.optimizer['state'].items():
        optim_state_json[str(index)] = {
            k: ({'tensor': put(f'optim/{index}/{k}', v)} if torch.is_tensor(v) else v) for k, v in entries.items()}
    rng_json = []
    for rank, rng in enumerate(state.rng):
        entry = {k: v for k, v in rng.items() if k not in ('torch', 'cuda', 'loader')}
        entry['torch'] = put(f'rng/{rank}/torch', rng['torch'])
        entry['cuda'] = [put(f'rng/{rank}/cuda/{i}', t) for i, t in enumerate(rng.get('cuda') or [])]
        entry['loader'] = put(f'rng/{rank}/loader', rng['loader']) if rng.get('loader') is not None else None
        rng_json.append(entry)
    document = {
        'format_version': STATE_FORMAT_VERSION,
        'step': int(state.step),
        'ema_step': int(state.ema_step),
        'has_ema': state.ema is not None,
        'optimizer': {'state': optim_state_json, 'param_groups': state.optimizer['param_groups']},
        'scheduler': state.scheduler,
        'scaler': state.scaler,
        'rng': rng_json,
        'meta': state.meta,
    }
    try:
        text = json.dumps(document, indent=1, default=_json_default)
    except TypeError as exc:  # pragma: no cover - a new non-JSON value in an optimiser/scheduler
        raise TrainStateError(f'{directory / STATE_JSON}: training state is not JSON-safe: {exc}') from exc
    save_file(tensors, str(directory / STATE_TENSORS))
    (directory / STATE_JSON).write_text(text)


def load_train_state(directory: str | Path) -> TrainState:
    """Read what `save_train_state` wrote; errors name the file and what is missing or broken."""
    directory = Path(directory)
    json_path, tensor_path = directory / STATE_JSON, directory / STATE_TENSORS
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise TrainStateError(f'{path}: missing training state file (cannot resume from {directory})')
    try:
        document = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainStateError(f'{json_path}: invalid JSON: {exc}') from exc
    if document.get('format_version') != STATE_FORMAT_VERSION:
        raise TrainStateError(f'{json_path}: unsupported format_version {document.get("format_version")!r} '
                              f'(this version reads {STATE_FORMAT_VERSION})')
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TrainStateError(f'{tensor_path}: corrupt or truncated safetensors: {exc}') from exc

    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise TrainStateError(f'{tensor_path}: missing tensor {name!r}')
        return tensors[name]

    try:
        model = {k[len('model/'):]: v for k, v in tensors.items() if k.startswith('model/')}
        ema = ({k[len('ema/'):]: v for k, v in tensors.items() if k.startswith('ema/')}
               if document['has_ema'] else None)
        optim_state = {
            int(index): {k: (get(v['tensor']) if isinstance(v, dict) and 'tensor' in v else v)
                         for k, v in entries.items()}
            for index, entries in document['optimizer']['state'].items()}
        param_groups = document['optimizer']['param_groups']
        for group in param_groups:  # JSON turned tuples into lists
            if 'betas' in group:
                group['betas'] = tuple(group['betas'])
        rng = []
        for entry in document['rng']:
            rng.append({**entry, 'torch': get(entry['torch']), 'cuda': [get(n) for n in entry['cuda']],
                        'loader': get(entry['loader']) if entry.get('loader') else None})
        return TrainState(step=int(document['step']), model=model,
                          optimizer={'state': optim_state, 'param_groups': param_groups},
                          scheduler=document['scheduler'], ema=ema, ema_step=int(document['ema_step']),
                          scaler=document.get('scaler'), rng=rng, meta=document.get('meta', {}))
    except KeyError as exc:
        raise TrainStateError(f'{json_path}: missing key {exc.args[0]!r}') from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')
