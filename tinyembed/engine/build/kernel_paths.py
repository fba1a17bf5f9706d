"""Where kernel sources live: one lookup for kernels/cpu and kernels/cuda."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def candidate_folders(kind: str) -> list[Path]:
    """kernels/<kind>/ folders to try, in order: the source checkout beside the package (edits
    take effect), then the installed `tinyembed.kernels` package (wheel or editable install)."""
    candidates = [Path(__file__).resolve().parents[3] / "kernels" / kind]
    try:
        spec = importlib.util.find_spec("tinyembed.kernels")
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) / kind for p in spec.submodule_search_locations]
    except (ImportError, ValueError):
        pass
    return candidates
