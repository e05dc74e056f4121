"""Locate the package's data (urdf/, config/, launch/, checkpoints/).

Installed with colcon (or pip) the files live in ``share/genpolicy_ros``; run from a source
checkout they live at the repository root. Both layouts hold the same relative paths.
"""

from functools import lru_cache
import os
from pathlib import Path

PACKAGE = 'genpolicy_ros'


@lru_cache(maxsize=1)
def share_dir() -> Path:
    """Return the directory holding ``urdf/``, ``config/``, ``launch/`` and ``checkpoints/``.

    The source tree wins when this module runs from a checkout (editable install), so edits to
    YAML or URDF take effect without reinstalling; otherwise the ament index is asked.
    """
    override = os.environ.get('GENPOLICY_SHARE_DIR')
    if override:
        return Path(override)
    repo_root = Path(__file__).resolve().parent.parent
    if (repo_root / 'package.xml').is_file() and (repo_root / 'config').is_dir():
        return repo_root
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except Exception as exc:  # PackageNotFoundError or ament_index missing
        raise FileNotFoundError(
            f'cannot find the {PACKAGE} share directory (no source checkout next to the module '
            f'and not in the ament index): {exc}') from exc


def config_path(name: str) -> Path:
    """Return the path of ``config/<name>``."""
    return share_dir() / 'config' / name


def urdf_path(name: str) -> Path:
    """Return the path of ``urdf/<name>``."""
    return share_dir() / 'urdf' / name


def checkpoint_path(name: str) -> Path:
    """Return the path of ``checkpoints/<name>``."""
    return share_dir() / 'checkpoints' / name
