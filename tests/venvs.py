"""Throwaway virtual environments for the framework examples (Chroma, LangChain, LlamaIndex,
Milvus), so their dependency trees never touch the environment tinyembed is tested in.

Each framework gets its own venv under .cache/venvs/ (gitignored), named after a hash of its
requirements: changing a pin builds a fresh one, an unchanged one is reused. A venv is marked
complete only after pip succeeded, so an interrupted build is redone.

    python tests/venvs.py            # build every venv (CI does this once, timed, before pytest)
    python tests/venvs.py chroma     # build one
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_ROOT = ROOT / ".cache" / "venvs"
BUILD_TIMEOUT_S = 900  # pip resolving + downloading chromadb on a 2-core machine takes minutes

# The examples talk to tinyembed over HTTP only: tinyembed itself is not installed in these.
FRAMEWORKS: dict[str, list[str]] = {
    "chroma": ["chromadb>=1.0,<2", "openai>=1.40"],
    "langchain": ["langchain-openai>=0.3,<2"],
    "llamaindex": ["llama-index-embeddings-openai>=0.3,<1", "llama-index-core>=0.12,<1"],
    "milvus": ["pymilvus>=2.5,<4", "milvus-lite>=2.5", "numpy>=1.24", "openai>=1.40"],
}


def venv_dir(name: str) -> Path:
    digest = hashlib.sha256("\n".join(FRAMEWORKS[name]).encode()).hexdigest()[:10]
    return VENV_ROOT / f"{name}-{digest}"


def python_of(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def build(name: str) -> Path:
    """The venv's python, building the venv first when it is missing or incomplete."""
    venv = venv_dir(name)
    done = venv / ".complete"
    if done.exists():
        return python_of(venv)
    shutil.rmtree(venv, ignore_errors=True)
    for stale in VENV_ROOT.glob(f"{name}-*"):  # an older pin set of the same framework
        shutil.rmtree(stale, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(python_of(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done_pip = subprocess.run([*pip, *FRAMEWORKS[name]], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done_pip.returncode != 0:  # pip's own output only when it failed: it is noisy otherwise
        raise RuntimeError(f"pip install {FRAMEWORKS[name]} failed:\n{done_pip.stdout[-3000:]}{done_pip.stderr[-3000:]}")
    done.write_text("\n".join(FRAMEWORKS[name]) + "\n")
    return python_of(venv)


def main(names: list[str]) -> None:
    for name in names or list(FRAMEWORKS):
        started = time.monotonic()
        cached = (venv_dir(name) / ".complete").exists()
        build(name)
        print(f"venv {name}: {'cached' if cached else 'built'} in {time.monotonic() - started:.1f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
