"""Prepare the carry folder for the one-call GPU device check (bench/gpu_check.sh), here, on the CPU.

The device machine starts bare, reaches no network, and takes at most 64 MiB of working tree
(tracked files, untracked-not-ignored files and the carried folders together). Its image has
Python 3.12 with CuPy, torch, transformers, pytest, numpy, safetensors, tokenizers and uvloop, but
not msgspec, httptools or the openai client, and not the bundled MiniLM package (90 MB of fp32).
This script builds, in one gitignored folder (`.devcache/` by default):

    hub/models--sentence-transformers--all-MiniLM-L6-v2/   the bundled all-MiniLM-L6-v2, weights
        refs/main, snapshots/fp16/...                      in float16 (45 MB), in Hugging Face cache
                                                           layout: HF_HUB_CACHE=.devcache/hub makes
                                                           `sentence-transformers/all-MiniLM-L6-v2`
                                                           resolve there (tests, serve, bench)
    whl/*.whl                                              the missing packages, built for cp312
                                                           manylinux x86-64 (pip download, no deps)
    MANIFEST.json                                          what is in it, sizes, versions

and checks that the tree that travels plus this folder stays under the limit. Then the device
call names `.devcache` in `carry` (bench/README.md: the exact call).

    python -m bench.gpu_prep                  # .devcache/ with the model and the wheels
    python -m bench.gpu_prep --no-wheels      # model only (no registry access; the CI smoke)
    python -m bench.gpu_prep --dest DIR       # elsewhere (the smoke test builds one in a temp dir)
    python -m bench.gpu_prep --needed-wheels .devcache/whl   # on the device: which wheels to install
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HF_ID = "sentence-transformers/all-MiniLM-L6-v2"
LIMIT_MIB = 64
# Run-time and test packages the device image lacks (KINDS.md's package list). Their needs travel
# too (closure over the installed metadata, markers evaluated for the device): the image's
# versions of shared ones (anyio, typing-extensions, idna) may be older than these require.
# Versions: the ones installed here, a set pip already resolved together.
WHEELS = ("msgspec", "httptools", "openai")
DEVICE_PYTHON = "3.12"
DEVICE_MARKERS = {"python_version": DEVICE_PYTHON, "python_full_version": DEVICE_PYTHON + ".3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64")
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
               "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling")


def hf_snapshot(dest: Path) -> Path:
    return dest / "hub" / ("models--" + HF_ID.replace("/", "--")) / "snapshots" / "fp16"


def build_model(dest: Path) -> dict:
    """The bundled MiniLM with float16 weights in HF cache layout; returns its manifest entry."""
    from safetensors.numpy import load_file, save_file

    from tinyembed.engine.checkpoints.registry import resolve

    source = resolve("all-MiniLM-L6-v2")
    snapshot = hf_snapshot(dest)
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text("fp16")
    for name in MODEL_FILES:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, snapshot / name)
        elif path.is_file():
            shutil.copy(path, snapshot / name)
    tensors = load_file(str(source / "model.safetensors"))
    save_file({k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in tensors.items()},
              str(snapshot / "model.safetensors"))
    return {"id": HF_ID, "source": str(source), "snapshot": str(snapshot.relative_to(dest)), "dtype": "float16",
            "bytes": folder_bytes(snapshot)}


def download_wheels(dest: Path) -> list[dict]:
    """pip download each WHEELS package (the version installed here) for the device's Python."""
    folder = dest / "whl"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pins = [f"{name}=={version}" for name, version in sorted(closure(WHEELS).items())]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", DEVICE_PYTHON, "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + pins, check=True, timeout=600)
    return [{"file": w.name, "bytes": w.stat().st_size} for w in sorted(folder.glob("*.whl"))]


def closure(names) -> dict[str, str]:
    """Installed distributions needed by `names` on the device: name -> version installed here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found, todo = {}, list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found[name] = metadata.version(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(DEVICE_MARKERS):
                todo.append(requirement.name)
    return found


def needed_wheels(folder: Path) -> list[Path]:
    """On the device: the carried wheels whose package is missing there or older than the wheel
    (the image's own newer or equal versions stay in charge)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    needed = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        try:
            installed = Version(metadata.version(canonicalize_name(name)))
        except (metadata.PackageNotFoundError, ValueError):
            installed = None
        if installed is None or installed < version:
            needed.append(wheel)
    return needed


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def tree_bytes(root: Path) -> int:
    """Bytes of the working tree that travels: tracked plus untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = root / name.decode()
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def is_ignored(root: Path, path: Path) -> bool:
    try:
        relative = path.resolve().relative_to(root)
    except ValueError:
        return True  # outside the checkout: it never travels with the tree
    return subprocess.run(["git", "check-ignore", "-q", str(relative) + "/"], cwd=root).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(ROOT / ".devcache"), help="the carry folder (gitignored)")
    parser.add_argument("--no-wheels", action="store_true", help="skip pip download (model only)")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="tree + carry must stay under this")
    parser.add_argument("--needed-wheels", metavar="DIR", help="(on the device) print the wheels in DIR to install")
    args = parser.parse_args(argv)
    if args.needed_wheels:
        for wheel in needed_wheels(Path(args.needed_wheels)):
            print(wheel)
        return 0
    dest = Path(args.dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    if not is_ignored(ROOT, dest):
        print(f"gpu_prep: {dest} is not ignored by git: it would travel twice (add it to .gitignore)")
        return 2
    started = time.perf_counter()
    manifest = {"created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "model": build_model(dest)}
    if not args.no_wheels:
        manifest["wheels"] = download_wheels(dest)
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    carry, tree = folder_bytes(dest), tree_bytes(ROOT)
    total_mib = (carry + tree) / 2**20
    manifest.update(carry_bytes=carry, tree_bytes=tree, total_mib=round(total_mib, 2), limit_mib=args.limit_mib,
                    fits=total_mib < args.limit_mib)
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    print(f"model: {manifest['model']['bytes'] / 2**20:.1f} MiB fp16 at {dest / manifest['model']['snapshot']}")
    for wheel in manifest.get("wheels", []):
        print(f"wheel: {wheel['file']} ({wheel['bytes'] / 2**20:.2f} MiB)")
    print(f"carry {carry / 2**20:.1f} MiB + tree {tree / 2**20:.1f} MiB = {total_mib:.1f} MiB "
          f"(limit {args.limit_mib:g} MiB): {'fits' if manifest['fits'] else 'TOO LARGE'}; "
          f"{time.perf_counter() - started:.1f} s")
    return 0 if manifest["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
