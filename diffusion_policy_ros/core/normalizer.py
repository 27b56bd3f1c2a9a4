"""Per-key normalisation fitted from data: low-dimensional arrays to [-1, 1], images to [0, 1].

The diffusion process assumes targets of order 1 (and clips x0 to [-1, 1]), so actions and states are
mapped by min/max per dimension. A dimension that never moves in the data (a locked joint, a gripper
that was never used) gets half-range 1 instead of 0: it maps to exactly 0 and back to exactly its
value, with no division by zero.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch

FORMAT_VERSION = 1


class Normalizer:
    """Holds per-key statistics; `normalize`/`unnormalize` work on torch tensors on any device.

    Low-dimensional keys ('limits'): y = (x - center) / half_range over the last axis.
    Image keys ('image'): uint8 is scaled by 1/255, float is taken as already in [0, 1]; then an
    optional per-channel (mean, std) over the channel axis -3 (layout ..., 3, H, W).
    """

    def __init__(self, stats: dict[str, dict[str, Any]] | None = None) -> None:
        self._stats: dict[str, dict[str, Any]] = {}
        self._cache: dict[tuple[str, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor] | None] = {}
        for key, entry in (stats or {}).items():
            self._stats[key] = _validated_entry(key, entry)

    # ---- fitting --------------------------------------------------------------------------------
    @classmethod
    def fit(cls, arrays: dict[str, np.ndarray], image_keys: Iterable[str] = (),
            image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None,
            range_eps: float = 1e-4) -> Normalizer:
        """Fit min/max statistics for every array in `arrays` (shape (..., D)); `image_keys` need no data.

        Dimensions whose range is below `range_eps` are treated as constant (half-range 1).
        """
        normalizer = cls()
        for key, array in arrays.items():
            normalizer._stats[key] = _fit_limits(key, np.asarray(array), range_eps)
        for key in image_keys:
            normalizer._stats[key] = _validated_entry(key, {
                'kind': 'image',
                'mean': None if image_mean is None else [float(v) for v in image_mean],
                'std': None if image_std is None else [float(v) for v in image_std]})
        return normalizer

    # ---- access --------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return list(self._stats)

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def kind(self, key: str) -> str:
        return self._entry(key)['kind']

    def dim(self, key: str) -> int:
        """Number of dimensions of a low-dimensional key."""
        entry = self._entry(key)
        if entry['kind'] != 'limits':
            raise ValueError(f'normaliser key {key!r} is an image key, it has no dimension')
        return len(entry['center'])

    def stats(self, key: str) -> dict[str, Any]:
        """A copy of the statistics of `key` (plain Python values)."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._entry(key).items()}

    def _entry(self, key: str) -> dict[str, Any]:
        try:
            return self._stats[key]
        except KeyError:
            raise KeyError(f'normaliser has no statistics for key {key!r}; it knows {sorted(self._stats)}') from None

    def _tensors(self, key: str, device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(shift, scale) tensors for `key`, or None for an image key without mean/std."""
        cache_key = (key, device, dtype)
        if cache_key not in self._cache:
            entry = self._entry(key)
            if entry['kind'] == 'limits':
                pair = (entry['center'], entry['half_range'])
            else:
                pair = (entry['mean'], entry['std']) if entry['mean'] is not None else None
            if pair is None:
                self._cache[cache_key] = None
            else:
                with torch.inference_mode(False):  # made during inference, still usable in training
                    shift = torch.tensor(pair[0], dtype=dtype, device=device)
                    scale = torch.tensor(pair[1], dtype=dtype, device=device)
                if entry['kind'] == 'image':
                    shift, scale = shift.view(3, 1, 1), scale.view(3, 1, 1)
                self._cache[cache_key] = (shift, scale)
        return self._cache[cache_key]

    # ---- transforms -----------------------------------------------------------------------------
    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Robot units -> network units."""
        entry = self._entry(key)
        if entry['kind'] == 'image':
            if x.dim() < 3 or x.shape[-3] != 3:
                raise ValueError(f'image {key!r} must have layout (..., 3, H, W), got shape {tuple(x.shape)}')
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        else:
            self._check_dim(key, x)
            if not x.is_floating_point():
                x = x.float()
        pair = self._tensors(key, x.device, x.dtype)
        return x if pair is None else (x - pair[0]) / pair[1]

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        """Network units -> robot units (images: float in [0, 1]).

        A dimension that was constant in the data comes out as that constant, whatever the network
        says: a sampled chunk is never exactly 0 there, and the data never asked for anything else (a
        gripper that always stays open must not start closing because of sampling noise)."""
        entry = self._entry(key)
        if entry['kind'] == 'limits':
            self._check_dim(key, y)
        pair = self._tensors(key, y.device, y.dtype)
        if pair is None:
            return y
        x = y * pair[1] + pair[0]
        if entry['kind'] == 'limits':
            constant = torch.as_tensor(_constant_mask(entry), device=y.device)
            if bool(constant.any()):
                x = torch.where(constant, pair[0].expand_as(x), x)
        return x

    def _check_dim(self, key: str, x: torch.Tensor) -> None:
        expected = len(self._stats[key]['center'])
        if x.dim() == 0 or x.shape[-1] != expected:
            raise ValueError(f'{key!r} has {expected} dimensions in the normaliser but the tensor has shape '
                             f'{tuple(x.shape)}')

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe statistics (floats are written with full precision by json)."""
        return {'format_version': FORMAT_VERSION, 'keys': {k: self.stats(k) for k in self._stats}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        if not isinstance(data, dict) or 'keys' not in data:
            raise ValueError("normaliser dict must be a mapping with a 'keys' entry")
        version = data.get('format_version')
        if version != FORMAT_VERSION:
            raise ValueError(f'normaliser format_version {version!r} is not supported (expected {FORMAT_VERSION})')
        return cls(data['keys'])

    def __repr__(self) -> str:
        return 'Normalizer(' + ', '.join(f"{k}:{v['kind']}" for k, v in self._stats.items()) + ')'


def _constant_mask(entry: dict[str, Any]) -> np.ndarray:
    """Dimensions fitted as constant: their half range was set to 1 although the data spans < 1."""
    span = np.asarray(entry['max'], dtype=np.float64) - np.asarray(entry['min'], dtype=np.float64)
    return (np.asarray(entry['half_range']) == 1.0) & (span < 1.0)


def _fit_limits(key: str, array: np.ndarray, range_eps: float) -> dict[str, Any]:
    if array.ndim == 0 or array.size == 0:
        raise ValueError(f'cannot fit normaliser key {key!r}: empty array of shape {array.shape}')
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f'cannot fit normaliser key {key!r}: dtype {array.dtype} is not real numeric')
    flat = array.reshape(-1, array.shape[-1]).astype(np.float64)
    if not np.isfinite(flat).all():
        bad = sorted(set(np.nonzero(~np.isfinite(flat))[1].tolist()))
        raise ValueError(f'cannot fit normaliser key {key!r}: non-finite values in dimension(s) {bad}')
    low, high = flat.min(axis=0), flat.max(axis=0)
    constant = (high - low) < range_eps
    center = np.where(constant, low, (high + low) / 2)  # exact value for a constant dimension
    half_range = np.where(constant, 1.0, (high - low) / 2)
    return {'kind': 'limits', 'min': low.tolist(), 'max': high.tolist(),
            'center': center.tolist(), 'half_range': half_range.tolist()}


def _validated_entry(key: str, entry: Any) -> dict[str, Any]:
    """Check a statistics entry read from a file or built by hand; the message names key and field."""
    if not isinstance(entry, dict) or entry.get('kind') not in ('limits', 'image'):
        raise ValueError(f"normaliser key {key!r}: entry must be a mapping with kind 'limits' or 'image'")

    def floats(name: str, length: int | None = None) -> list[float]:
        values = entry.get(name)
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f'normaliser key {key!r}: {name!r} must be a non-empty list of numbers')
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f'normaliser key {key!r}: {name!r} must be a list of numbers') from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f'normaliser key {key!r}: {name!r} has non-finite values')
        if length is not None and len(values) != length:
            raise ValueError(f'normaliser key {key!r}: {name!r} has {len(values)} values, expected {length}')
        return values

    if entry['kind'] == 'limits':
        center = floats('center')
        half_range = floats('half_range', len(center))
        if min(half_range) <= 0:
            raise ValueError(f"normaliser key {key!r}: 'half_range' must be > 0")
        out = {'kind': 'limits', 'center': center, 'half_range': half_range}
        for name in ('min', 'max'):
            if name in entry:
                out[name] = floats(name, len(center))
        return out
    if (entry.get('mean') is None) != (entry.get('std') is None):
        raise ValueError(f"normaliser key {key!r}: give both 'mean' and 'std' for an image, or neither")
    if entry.get('mean') is None:
        return {'kind': 'image', 'mean': None, 'std': None}
    std = floats('std', 3)
    if min(std) <= 0:
        raise ValueError(f"normaliser key {key!r}: 'std' must be > 0")
    return {'kind': 'image', 'mean': floats('mean', 3), 'std': std}
