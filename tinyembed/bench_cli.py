"""`tinyembed bench ...`: runs the bench suite (`python -m bench ...`) from a source checkout.

The bench suite lives in bench/ beside the package (it imports torch, onnxruntime and other
peers that tinyembed itself never needs), so it is not part of the wheel: this command finds
the checkout this package was imported from and runs the suite there, passing every argument
through (`tinyembed bench --help` shows the suite's own help).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def add_parser(commands) -> None:
    """Lists `bench` in `tinyembed --help`; main() below handles the command itself, before
    argparse sees its arguments (they belong to the suite, whose options argparse would reject)."""
    commands.add_parser("bench", help="run the bench suite from a source checkout (`tinyembed bench --help`)",
                        add_help=False)


def checkout() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    return root if (root / "bench" / "suite.py").is_file() else None


def main(argv: list[str]) -> int:
    """argv: everything after `tinyembed bench`."""
    root = checkout()
    if root is None:
        print("tinyembed bench: error: the bench suite ships with the source, not the wheel; "
              "clone the repository and run `python -m bench` (or `tinyembed bench`) from it", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "bench", *argv], cwd=root)
