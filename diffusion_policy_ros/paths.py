"""Where the package's data files (config/, models/) are: the source tree, or share/<pkg> when installed."""
from __future__ import annotations

from pathlib import Path

PACKAGE = 'diffusion_policy_ros'
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def share_dir() -> Path:
    """config/ and models/ live in the source tree, or in share/<pkg> when installed without symlinks."""
    if (PACKAGE_ROOT / 'config').is_dir():
        return PACKAGE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - ament index missing: fall back to the source layout
        return PACKAGE_ROOT


def package_path(path: str | Path) -> Path:
    """`path` as given when it is absolute or exists from here, else relative to the package's data
    (`models/pick_place` works from any working directory)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return share_dir() / p
