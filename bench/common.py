"""What every bench script shares: the record of where and how a result was taken, result
files, markdown tables, optional plots, medians, and peak memory of a process tree.

A result file is one JSON object: {"question", "date", "environment": {machine, versions,
loadavg, git}, "settings", "corpus", ...the numbers...}. Nothing in it is copied from
elsewhere: every number was measured by the run that wrote it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL = "all-MiniLM-L6-v2"


# -- where and how ---------------------------------------------------------------------------------

def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return list(os.getloadavg()) if hasattr(os, "getloadavg") else []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state() -> dict:
    def git(*args):
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else None

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def environment() -> dict:
    """Machine, library versions, load and git state: recorded in every result file."""
    import numpy as np

    try:
        blas = [{k: v for k, v in info.items() if k in ("internal_api", "version", "num_threads", "architecture")}
                for info in __import__("threadpoolctl").threadpool_info()]
    except Exception:  # noqa: BLE001 - a record, never a failure
        blas = []
    packages = ("tinyembed", "numpy", "tokenizers", "safetensors", "msgspec", "uvloop", "httptools",
                "torch", "transformers", "sentence-transformers", "onnxruntime", "onnx", "matplotlib", "psutil")
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    versions.update({p: version(p) for p in packages if p not in versions and version(p)})
    return {
        "machine": {"hostname": platform.node(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                    "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "memory_gib": memory_gib(), "os": platform.platform()},
        "versions": versions,
        "blas": blas,
        "loadavg": loadavg(),
        "git": git_state(),
    }


def wait_for_idle(max_load: float, timeout_s: float, log=sys.stderr) -> dict:
    """Poll /proc/loadavg until its 1-minute value is below max_load (or the timeout passes)."""
    start = time.monotonic()
    while True:
        load = loadavg()
        if not load or load[0] < max_load:
            return {"waited_s": round(time.monotonic() - start, 1), "loadavg": load, "reached": True}
        if time.monotonic() - start > timeout_s:
            print(f"load still {load[0]:.2f} after {timeout_s:.0f} s: running anyway (recorded)", file=log)
            return {"waited_s": round(time.monotonic() - start, 1), "loadavg": load, "reached": False}
        print(f"waiting for load < {max_load} (now {load[0]:.2f})", file=log, flush=True)
        time.sleep(20)


def new_report(question: str, settings: dict) -> dict:
    return {"question": question, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "environment": environment(),
            "settings": settings}


def write_json(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return path


# -- numbers and tables ----------------------------------------------------------------------------

def median(values):
    return statistics.median(values) if values else float("nan")


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub markdown table; numbers right-aligned (align: 'l'/'r' per column)."""
    cells = [[str(c) for c in row] for row in rows]
    align = align or "".join("l" if i == 0 else "r" for i in range(len(headers)))
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) if a == "l" else v.rjust(w) for v, w, a in zip(values, widths, align)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def fmt(value, spec: str = ".0f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return missing
    return format(value, spec)


def describe_environment(env: dict) -> str:
    m, v = env["machine"], env["versions"]
    load = ", ".join(f"{x:.2f}" for x in env.get("loadavg", []))
    git = env.get("git", {})
    return (f"{m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB; {m['os']}; Python {v['python']}, "
            f"numpy {v['numpy']}; git {git.get('commit')}{' (uncommitted changes)' if git.get('dirty') else ''}; "
            f"loadavg at start {load}")


# -- plots (optional) -------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot with a file-only backend, or None (plots are skipped, with a message)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


# -- memory of a process tree --------------------------------------------------------------------

def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Samples the RSS of a process and all its descendants every `interval` seconds.

    peak_rss_mb: the largest sum of the tree's RSS seen at one sample (what the machine had to
    hold at once). hwm_mb: the sum of each process's own high-water mark (VmHWM, read from
    /proc while the process lives): an upper bound, exact for a single process.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self):
        import psutil

        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> int:
        import psutil

        total = 0
        for proc in self._tree():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
            hwm = _vm_hwm_kib(proc.pid)
            if hwm:
                self.hwm[proc.pid] = max(self.hwm.get(proc.pid, 0), hwm)
        self.peak = max(self.peak, total)
        return total

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        self.sample()
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": round(self.peak / 2**20, 1), "hwm_mb": round(sum(self.hwm.values()) / 1024, 1),
                "processes": len(self.hwm)}
