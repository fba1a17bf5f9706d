"""The wheel `pip install .` builds carries every file the package reads at run time: a data
file left out works in the checkout (and with -e) and fails only on a user's fresh install."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked(folder: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def test_the_wheel_carries_every_package_file(tmp_path):
    source = tmp_path / "source"  # the tracked files alone: a stale build/ here could hide a gap
    for path in tracked("."):
        if (ROOT / path).is_file():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, source / path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("tinyembed-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {path for path in tracked("tinyembed") if "__pycache__" not in path}
    wanted |= {"tinyembed/kernels/" + path[len("kernels/"):] for path in tracked("kernels")
               if path.startswith(("kernels/cpu/", "kernels/cuda/")) and path.count("/") == 2
               and not path.endswith(".md")}
    assert sorted(wanted - names) == []
