"""infinity-emb in its own virtual environment (bench/.venv-infinity), created on request.

infinity-emb 0.0.78 pins an older stack (it calls a transformers API that 5.x removed), so it
never shares the system Python with tinyembed or sentence-transformers. The venv gets the CPU
torch wheel first (the local /opt/wheels copy when pip finds it; pip must never pull a CUDA
torch from PyPI), then infinity with that torch held by a constraints file.

    python -m bench.infinity_env          # create / check, print the infinity_emb path
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv-infinity"
INFINITY = "infinity-emb[all]==0.0.78"
TORCH = "torch==2.13.0"  # resolves to the local +cpu wheel through pip's find-links
EXTRA = ("transformers<4.57",)


def python() -> Path:
    return VENV / "bin" / "python"


def executable() -> Path:
    return VENV / "bin" / "infinity_emb"


def installed() -> bool:
    return executable().is_file()


def versions() -> dict:
    """Versions inside the venv (infinity_emb, torch, transformers)."""
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('infinity_emb', 'torch', 'transformers', 'optimum', 'sentence-transformers')"
            " if __import__('importlib.util').util.find_spec(p.replace('-', '_'))}))")
    out = subprocess.run([str(python()), "-c", code], capture_output=True, text=True, check=False)
    try:
        import json

        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": out.stderr.strip()[-300:]}


def ensure(log=sys.stderr) -> Path:
    """Create the venv and install infinity-emb if needed; returns the infinity_emb executable."""
    if installed():
        return executable()
    print(f"installing {INFINITY} into {VENV} (one time, a few minutes)", file=log, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    (VENV / ".gitignore").write_text("*\n")  # never shows up in `git status`
    pip = [str(python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + [TORCH], check=True)
    torch_version = subprocess.run([str(python()), "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    if "+cpu" not in torch_version:
        raise RuntimeError(f"the infinity venv got torch {torch_version}, not a CPU build: refusing to go on")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(f"torch=={torch_version}\n")
    try:
        subprocess.run(pip + ["-c", constraints.name, INFINITY, *EXTRA], check=True)
    finally:
        os.unlink(constraints.name)
    # The [all] extra brings torchvision built for PyPI's CUDA torch; against the CPU torch its
    # C++ ops do not load and `import transformers` fails ("operator torchvision::nms does not
    # exist"). A text-embedding server needs no torchvision: remove it.
    subprocess.run([str(python()), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=False)
    if not installed():
        raise RuntimeError(f"{executable()} missing after the install")
    return executable()


if __name__ == "__main__":
    print(ensure())
    print(versions())
