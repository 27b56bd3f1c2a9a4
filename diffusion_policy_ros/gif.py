"""Animated GIFs of episodes and denoising: the one place that knows GIF delays are milliseconds here.

imageio's v3 API hands `duration` to Pillow in milliseconds; a delay in seconds (0.1) rounds to 0 ms,
which browsers replace by their own guess, so a GIF written that way plays at no particular rate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def write_gif(path: str | Path, frames: Sequence[np.ndarray], frame_period_s: float | Sequence[float],
              upscale: int = 1) -> Path:
    """Write `frames` (HxWx3 uint8) looping forever, each shown `frame_period_s` (one value, or one per
    frame); `upscale` repeats pixels so a 96 px camera image is big enough to look at."""
    import imageio.v3 as iio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.stack(frames)
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    periods = [frame_period_s] * len(images) if np.isscalar(frame_period_s) else list(frame_period_s)
    # GIF stores delays in 10 ms units: round to them, at least 20 ms (viewers slow anything faster).
    durations = [max(20, 10 * int(round(100 * float(p)))) for p in periods]
    iio.imwrite(path, images, duration=durations, loop=0)
    return path
