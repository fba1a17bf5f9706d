"""Compile kernels/cpu/*.c into one shared library on first use, cache it, load it with ctypes.

The library is built with the system C compiler (CC, else cc, gcc or clang) and
`-std=c99 -O3 -march=native -shared -fPIC`, under $XDG_CACHE_HOME/tinyembed (or
~/.cache/tinyembed), named by a hash of the sources, the compiler (path and --version), the
flags and the CPU (model name and feature flags): a new CPU, compiler or kernel edit builds
anew, anything else loads in milliseconds. Builds go to a temporary name in the cache folder
and are renamed into place, so two processes starting together each see either nothing or a
whole library. A cached library that fails to load is deleted and rebuilt once.

Anything that goes wrong raises CpuBuildError with a reason meant for one log line.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from tinyembed.engine.build.kernel_paths import candidate_folders

FLAGS = ("-std=c99", "-O3", "-march=native", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 120


class CpuBuildError(RuntimeError):
    pass


def kernel_dir() -> Path:
    """The source checkout's kernels/cpu/ when present (edits take effect), else the installed
    `tinyembed.kernels` package's cpu/ folder (wheel)."""
    candidates = candidate_folders("cpu")
    for path in candidates:
        if any(path.glob("*.c")):
            return path
    raise CpuBuildError(f"no C kernel sources found (looked in {', '.join(map(str, candidates))})")


def find_compiler() -> str:
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise CpuBuildError(f"no C compiler found (tried {', '.join(names)} on PATH)")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tinyembed"


def cpu_id() -> str:
    """Model name and feature flags of the first CPU in /proc/cpuinfo (else the platform)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
        return "\n".join(dict.fromkeys(keep)) or platform.processor()
    except OSError:
        return platform.machine() + platform.processor()


def library_path(compiler: str, sources: list[Path]) -> Path:
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CpuBuildError(f"{compiler} --version failed: {exc}") from None
    digest.update("\0".join([compiler, version, *FLAGS, cpu_id()]).encode())
    return cache_dir() / f"cpu-kernels-{digest.hexdigest()[:20]}.so"


def compile_library(compiler: str, sources: list[Path], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *FLAGS, *(str(p) for p in sources if p.suffix == ".c"), "-o", tmp, "-lm"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise CpuBuildError(f"{Path(compiler).name} failed (exit {done.returncode}): {last}")
        os.replace(tmp, target)  # atomic: a concurrent loader sees the old name or a whole file
    except (OSError, subprocess.SubprocessError) as exc:
        raise CpuBuildError(f"{Path(compiler).name} could not run: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(symbols: tuple[str, ...]) -> tuple[ctypes.CDLL, Path, bool]:
    """-> (library, its path, whether it was built now). Raises CpuBuildError."""
    folder = kernel_dir()
    sources = sorted(p for p in folder.iterdir() if p.suffix in (".c", ".h"))
    compiler = find_compiler()
    target = library_path(compiler, sources)
    built = False
    for attempt in range(2):
        if not target.exists():
            compile_library(compiler, sources, target)
            built = True
        try:
            lib = ctypes.CDLL(str(target))
            missing = [name for name in symbols if not hasattr(lib, name)]
            if missing:
                raise OSError(f"missing symbols {missing}")
            return lib, target, built
        except OSError as exc:
            if attempt or built:
                raise CpuBuildError(f"{target} does not load: {exc}") from None
            target.unlink(missing_ok=True)  # corrupt or stale cache entry: rebuild once
    raise AssertionError("unreachable")
