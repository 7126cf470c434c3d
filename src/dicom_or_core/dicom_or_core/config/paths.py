"""Where the workspace's shared configuration lives at run time.

The top-level ``config/`` folder is installed into ``share/dicom_or_core/config`` by this
package (so every node, installed or from a distro, finds the same files). Lookup order:
``$DICOM_OR_CONFIG_DIR``, then that share folder next to this installed package, then the
source tree's ``config/`` (plain pytest from a checkout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_CONFIG_DIR = "DICOM_OR_CONFIG_DIR"


def _candidates() -> list[Path]:
    here = Path(__file__).resolve()
    found = []
    if os.environ.get(ENV_CONFIG_DIR):
        found.append(Path(os.environ[ENV_CONFIG_DIR]))
    # install/<pkg>/lib/python3.X/site-packages/dicom_or_core -> install/<pkg>/share/...
    for prefix in [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
                   if p] + [Path(sys.prefix)]:
        found.append(prefix / "share" / "dicom_or_core" / "config")
    # Source checkout: src/dicom_or_core/dicom_or_core/paths.py -> <root>/config
    found.append(here.parents[3] / "config")
    return found


def config_dir() -> Path:
    """The first existing configuration folder."""
    for candidate in _candidates():
        if (candidate / "qos_profiles.yaml").is_file():
            return candidate
    return _candidates()[-1]


def config_file(name: str) -> Path:
    """A file of the shared configuration folder."""
    return config_dir() / name
