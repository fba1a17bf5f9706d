"""The emulated kernels under AddressSanitizer and UBSan (-fsanitize=address,undefined, first
error fatal): each device array is its own malloc, so a kernel reading or writing past one, or
past its shared memory, aborts; a misaligned 16-byte vector load is UB and aborts too. Runs in a
subprocess with the ASan runtime preloaded. Builds its own libraries (about a minute, cached)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cuda_emu_helpers import needs_cxx

pytestmark = [needs_cxx, pytest.mark.slow]
HERE = Path(__file__).parent


def run(what: str) -> subprocess.CompletedProcess:
    libasan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.fail(f"g++ has no AddressSanitizer runtime (got {libasan!r}): install libasan (gcc's)")
    env = {**os.environ, "LD_PRELOAD": libasan, "ASAN_OPTIONS": "detect_leaks=0", "TINYEMBED_EMU_SANITIZE": "1",
           "PYTHONPATH": str(HERE.parent)}
    return subprocess.run([sys.executable, str(HERE / "cuda_emu_sanitized_run.py"), what], capture_output=True,
                          text=True, env=env, timeout=1200, cwd=HERE.parent)


def test_the_sanitizer_build_catches_a_read_past_an_array():
    done = run("probe")
    assert done.returncode != 0 and "heap-buffer-overflow" in done.stderr, done.stdout + done.stderr[-3000:]


def test_every_kernel_file_runs_clean_under_the_sanitizers():
    done = run("ops")
    assert done.returncode == 0 and "all kernels ran clean" in done.stdout, done.stdout + done.stderr[-5000:]
