"""Building the C kernels on first use, and falling back to numpy: each path in a fresh process
(a loaded library cannot be unloaded), each asserting the log line and the ops class it chose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
from tinyembed.engine.backend import make_ops
print("OPS", type(make_ops("cpu")).__name__)
"""


def run_probe(cache: Path, **env) -> tuple[str, str]:
    """-> (ops class name, the 'cpu kernels:' log line) from a fresh interpreter."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CC", "TINYEMBED_CPU_KERNELS")}
    environ.update(PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(cache), **env)
    done = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("cpu kernels:")]
    assert len(lines) == 1, done.stderr  # exactly one line says which path runs
    return done.stdout.split("OPS ")[-1].strip(), lines[0]


def libraries(cache: Path) -> list[Path]:
    return sorted((cache / "tinyembed").glob("cpu-kernels-*.so"))


@pytest.fixture
def has_compiler():
    from tinyembed.engine.build import cpu_compile as cpu_build

    try:
        cpu_build.find_compiler()
    except cpu_build.CpuBuildError:
        if os.environ.get("CI"):
            raise
        pytest.skip("no C compiler here")


def test_first_use_builds_then_loads_from_the_cache(tmp_path, has_compiler):
    assert run_probe(tmp_path)[1].startswith("cpu kernels: C (built ")
    assert len(libraries(tmp_path)) == 1
    ops, line = run_probe(tmp_path)
    assert (ops, line.split(" (")[1].split()[0]) == ("COps", "cached")
    assert not list((tmp_path / "tinyembed").glob("*.tmp"))  # no temporary left behind


def test_two_processes_building_at_once_both_get_a_working_library(tmp_path, has_compiler):
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", PROBE], env=environ, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [out.strip().split()[-1] for out, _ in outputs] == ["COps", "COps"], outputs
    assert len(libraries(tmp_path)) == 1
    assert run_probe(tmp_path)[0] == "COps"


def test_env_switch_selects_numpy(tmp_path):
    ops, line = run_probe(tmp_path, TINYEMBED_CPU_KERNELS="numpy")
    assert ops == "NumpyOps"
    assert line.startswith("cpu kernels: numpy (TINYEMBED_CPU_KERNELS=numpy)")
    assert not libraries(tmp_path)  # nothing was built


def test_no_compiler_on_path_falls_back_to_numpy(tmp_path):
    ops, line = run_probe(tmp_path, PATH=str(tmp_path / "empty"))
    assert ops == "NumpyOps"
    assert "C kernels unavailable: no C compiler found" in line


def test_failing_compiler_falls_back_to_numpy(tmp_path):
    ops, line = run_probe(tmp_path, CC="false")
    assert ops == "NumpyOps"
    assert "C kernels unavailable: false failed (exit 1)" in line


def test_broken_cache_file_is_rebuilt(tmp_path, has_compiler):
    run_probe(tmp_path)
    [library] = libraries(tmp_path)
    library.write_bytes(b"not a shared library")
    ops, line = run_probe(tmp_path)
    assert (ops, line.startswith("cpu kernels: C (built ")) == ("COps", True)
    assert library.read_bytes()[:4] == b"\x7fELF"


def test_a_built_library_that_does_not_load_falls_back_to_numpy(tmp_path):
    fake = tmp_path / "bin" / "cc"  # "compiles" by writing junk where the library should go
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nout=\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\n'
                    '[ -n "$out" ] && echo junk > "$out"\nexit 0\n')
    fake.chmod(0o755)
    ops, line = run_probe(tmp_path, CC=str(fake))
    assert ops == "NumpyOps"
    assert "C kernels unavailable: " in line and "does not load" in line


def test_cores_come_from_the_cgroup_quota_and_affinity(tmp_path, monkeypatch):
    from tinyembed.engine.build import cpu_threads

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_threads.cgroup_quota_cores(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_threads.cgroup_quota_cores(tmp_path) is None
    monkeypatch.setattr(cpu_threads, "affinity_cores", lambda: 8)
    monkeypatch.setattr(cpu_threads, "cgroup_quota_cores", lambda: 1.5)
    assert cpu_threads.available_cores() == 2  # 1.5 CPUs of quota: two threads, never eight
    monkeypatch.setattr(cpu_threads, "cgroup_quota_cores", lambda: None)
    assert cpu_threads.available_cores() == 8
