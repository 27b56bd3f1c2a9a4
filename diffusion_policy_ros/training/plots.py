"""metrics.csv and the loss-curve PNG of a run directory.

The CSV is the record (appended as training goes, trimmed on resume so a step never appears twice);
the PNG is regenerated from it, so it always shows the whole run including resumed parts.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

METRIC_FIELDS = ('step', 'loss', 'val_loss', 'lr', 'it_per_s')


class MetricsLog:
    """Append-only CSV of (step, loss, val_loss, lr, it/s); empty cells where a value was not measured."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        rows = read_metrics(self.path) if self.path.exists() else []
        if resume_step is not None:
            rows = [r for r in rows if r['step'] <= resume_step]
        else:
            rows = []
        with self.path.open('w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row[k]) for k in METRIC_FIELDS})

    def append(self, step: int, loss: float | None = None, val_loss: float | None = None,
               lr: float | None = None, it_per_s: float | None = None) -> None:
        with self.path.open('a', newline='') as f:
            csv.DictWriter(f, fieldnames=METRIC_FIELDS).writerow({
                'step': step, 'loss': _cell(loss), 'val_loss': _cell(val_loss), 'lr': _cell(lr),
                'it_per_s': _cell(it_per_s)})


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of metrics.csv with floats (NaN where a cell is empty) and int steps."""
    rows = []
    with Path(path).open(newline='') as f:
        for raw in csv.DictReader(f):
            row = {k: (float(raw[k]) if raw.get(k) not in (None, '') else math.nan) for k in METRIC_FIELDS}
            row['step'] = int(row['step'])
            rows.append(row)
    return rows


def plot_loss(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Training and validation loss against step (log scale), written with the Agg backend."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        for key, label, style in (('loss', 'train loss', '-'), ('val_loss', 'validation loss', 'o-')):
            points = [(r['step'], r[key]) for r in rows if math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), style, label=label, markersize=3)
        if any(math.isfinite(r['loss']) and r['loss'] > 0 for r in rows):
            ax.set_yscale('log')
        ax.set_xlabel('step')
        ax.set_ylabel('loss')
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_png)
    finally:
        plt.close(fig)
    return Path(out_png)


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ''
    return f'{value:.6g}' if isinstance(value, float) else str(value)
