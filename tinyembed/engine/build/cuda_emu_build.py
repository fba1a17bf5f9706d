"""Compile a CUDA kernel file with the host C++ compiler and the emulator header into a cached
shared library (kernels/cuda/emulate/cuda_emu.h says how the header maps CUDA onto the CPU).

The library is named by a hash of the kernel text, the emulator headers, the compiler and the
flags, under $XDG_CACHE_HOME/tinyembed/cuda-emu (as the CPU kernels' cache, cpu_build.py): an
edit builds anew, anything else loads in milliseconds. Two steps: the preprocessor lists the
kernels (every `extern "C" __global__` function, after macros such as TC_KERNEL expand and the
TE_DTYPE #ifs apply), then one compile of the kernel file followed by their table.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tinyembed.engine.build.cpu_compile import cache_dir
from tinyembed.engine.build.kernel_paths import candidate_folders

FLAGS = ("-std=c++17", "-O1", "-fPIC", "-shared", "-fno-strict-aliasing", "-fvisibility=hidden", "-Wall",
         "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable")
# The sanitizer build (TINYEMBED_EMU_SANITIZE=1): out-of-bounds reads and writes of numpy buffers
# and of shared memory, misaligned 16-byte vector loads, signed overflow; the first error aborts.
# The process must load the ASan runtime first (LD_PRELOAD=$(g++ -print-file-name=libasan.so)),
# and the fibers switch with swapcontext, which ASan follows.
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                  "-DTE_EMU_UCONTEXT=1")
BUILD_TIMEOUT_S = 300
_KERNEL = re.compile(r'extern\s+"C"\s+__attribute__\(\(used\)\)\s+void\s+(\w+)\s*\(')


class EmulatorBuildError(RuntimeError):
    pass


def emulate_dir() -> Path:
    for folder in candidate_folders("cuda"):
        if (folder / "emulate" / "cuda_emu.h").is_file():
            return folder / "emulate"
    raise EmulatorBuildError("kernels/cuda/emulate/cuda_emu.h not found")


def compiler() -> str:
    name = os.environ.get("CXX") or "g++"
    path = shutil.which(name)
    if not path:
        raise EmulatorBuildError(f"no C++ compiler {name!r} on PATH (apt-get install g++)")
    return path


def _version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout


def _run(cmd: list[str], what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmulatorBuildError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise EmulatorBuildError(f"{what} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def sanitizing() -> bool:
    return os.environ.get("TINYEMBED_EMU_SANITIZE", "") == "1"


def build(source: str, name: str, defines: dict[str, str], sanitize: bool | None = None) -> Path:
    """The shared library of one kernel file's text (`name` only labels it); cached."""
    sanitize = sanitizing() if sanitize is None else sanitize
    header_dir = emulate_dir()
    cxx = compiler()
    flags = [*FLAGS, *(SANITIZE_FLAGS if sanitize else ()), *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
    digest = hashlib.sha256(source.encode())
    for path in sorted(header_dir.iterdir()):
        if path.suffix == ".h":
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update("\0".join([cxx, _version(cxx), *flags]).encode())
    target = cache_dir() / "cuda-emu" / f"{Path(name).stem}-{digest.hexdigest()[:20]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    kernels_dir = header_dir.parent
    common = ["-include", str(header_dir / "cuda_emu.h"), "-I", str(header_dir), "-I", str(kernels_dir)]
    with tempfile.TemporaryDirectory(prefix="te-emu-") as tmp:
        kernel = Path(tmp) / Path(name).name
        kernel.write_text(source)
        listing = _run([cxx, "-E", "-x", "c++", *flags, *common, str(kernel)], f"preprocessing {name}")
        names = list(dict.fromkeys(_KERNEL.findall(listing)))
        if not names:
            raise EmulatorBuildError(f"{name}: no extern \"C\" __global__ kernels found")
        table = Path(tmp) / "table.cpp"
        table.write_text(f'#include "{kernel.name}"\nTE_KERNEL_TABLE({" ".join(f"TE_KERNEL({n})" for n in names)})\n')
        fd, partial = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            _run([cxx, *flags, *common, "-I", tmp, "-x", "c++", str(table), "-o", partial], f"compiling {name}")
            os.replace(partial, target)  # atomic: a concurrent loader sees nothing or a whole file
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return target
