"""The last step of bench/gpu_check.sh: every part's outcome in one summary.json, and a short table
printed last (the device call's reply carries only the end of the output).

Inputs: the parts table the script wrote (name, exit code or "skipped", seconds, limit), pytest's
JUnit XML, and $OUT/serve.json and $OUT/bench.json when those parts wrote them. The check is ok
when every required part ran and exited 0 (env and sanitize are informational: compute-sanitizer
refuses some machines) and, on a GPU, no gpu test was skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INFORMATIONAL = {"env", "sanitize"}
REQUIRED = ("pytest", "serve", "bench")


def read_parts(path: Path) -> list[dict]:
    parts = []
    if path.is_file():
        for line in path.read_text().splitlines():
            name, rc, seconds, limit = line.split("\t")
            parts.append({"part": name, "exit": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                          "seconds": float(seconds), "limit_s": int(float(limit))})
    return parts


def read_junit(path: Path) -> dict:
    """Counts per test file and in total, and the skip reasons (grouped)."""
    if not path.is_file():
        return {"collected": 0, "files": {}, "error": "no JUnit XML (pytest did not finish)"}
    files: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    reasons: dict[str, int] = defaultdict(int)
    failures = []
    for case in ET.parse(path).getroot().iter("testcase"):
        file = test_file(case.get("classname", ""))
        outcome = "passed"
        for child in case:
            if child.tag == "skipped":
                outcome = "skipped"
                reasons[(child.get("message") or "").strip()[:160]] += 1
            elif child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                failures.append(f"{case.get('classname')}::{case.get('name')}: {(child.get('message') or '')[:300]}")
        files[file][outcome] += 1
    totals = defaultdict(int)
    for counts in files.values():
        for outcome, n in counts.items():
            totals[outcome] += n
    return {"collected": sum(totals.values()), **{k: totals.get(k, 0) for k in ("passed", "failed", "errors", "skipped")},
            "files": {f: dict(c) for f, c in sorted(files.items())}, "skip_reasons": dict(reasons),
            "failures": failures[:40]}


def test_file(classname: str) -> str:
    """tests.test_ops_cuda.TestAttention -> tests/test_ops_cuda.py (JUnit's xunit2 has no file)."""
    names = classname.split(".")
    for i, name in enumerate(names):
        if name.startswith("test_"):
            return "/".join(names[:i + 1]) + ".py"
    return classname or "?"


def unmarked_cuda_test_files(junit: dict) -> list[str]:
    """Test files named for CUDA with no gpu-marked test collected: a forgotten marker. The CUDA
    emulator's tests (test_cuda_emu_*.py) run the kernels on the CPU, in CI: not device tests."""
    seen = {Path(f).name for f in junit.get("files", {})}
    return sorted(p.name for p in (ROOT / "tests").glob("test_*cuda*.py")
                  if p.name not in seen and not p.name.startswith("test_cuda_emu_"))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarize(parts: list[dict], junit: dict, serve: dict | None, bench: dict | None, mode: str) -> dict:
    problems = []
    by_name = {p["part"]: p for p in parts}
    for name in REQUIRED:
        if name not in by_name:
            problems.append(f"{name}: did not run")
    for p in parts:
        if p["part"] in INFORMATIONAL:
            continue
        if p["skipped"]:
            problems.append(f"{p['part']}: skipped (budget or --skip)")
        elif p["exit"] != 0:
            problems.append(f"{p['part']}: exit {p['exit']}" + (" (timed out)" if p["exit"] == 124 else ""))
    if junit.get("collected", 0) == 0:
        problems.append("pytest: no gpu-marked test collected")
    if mode == "gpu" and junit.get("skipped"):
        problems.append(f"pytest: {junit['skipped']} gpu tests skipped on a GPU machine")
    if serve is not None and not serve.get("ok"):
        problems.append("serve: vectors or requests did not match the CPU server")
    if bench is not None and bench.get("errors"):
        problems += [f"bench: {e['model']} {e['contender']}: {e['error']}" for e in bench["errors"]]
    unmarked = unmarked_cuda_test_files(junit)
    if unmarked:
        problems.append("tests named for CUDA without a gpu-marked test: " + ", ".join(unmarked))
    return {"created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "mode": mode, "ok": not problems,
            "problems": problems, "parts": parts, "pytest": junit, "serve": serve_digest(serve),
            "bench": bench_digest(bench)}


def serve_digest(serve: dict | None) -> dict | None:
    if serve is None:
        return None
    return {"ok": serve.get("ok"), "error": serve.get("error"), "servers": [
        {"name": s["name"], "device": s["device"], "ok": s["ok"], "ready_s": s.get("ready_s"), "error": s.get("error"),
         "min_cosine": min((c["min_cosine"] for c in s.get("checks", []) if c.get("min_cosine") is not None),
                           default=None)} for s in serve.get("servers", [])]}


def bench_digest(bench: dict | None) -> dict | None:
    if bench is None:
        return None
    keep = ("device", "dtype", "ceilings", "goals", "latency", "agreement", "errors", "wall_s")
    return {k: bench.get(k) for k in keep} | {"throughput": [
        {k: t.get(k) for k in ("model", "workload", "contender", "tokens_per_s", "ratio")} for t in bench["throughput"]]}


def print_summary(s: dict, budget: int, elapsed: int) -> None:
    print(f"\n==== GPU check summary ({s['mode']}; {elapsed} s of a {budget} s budget) ====")
    for p in s["parts"]:
        state = "skipped" if p["skipped"] else f"exit {p['exit']}"
        print(f"  {p['part']:9} {state:8} {p['seconds']:7.1f} s  (limit {p['limit_s']} s)")
    j = s["pytest"]
    print(f"  pytest -m gpu: {j.get('collected', 0)} collected, {j.get('passed', 0)} passed, {j.get('failed', 0)} failed, "
          f"{j.get('errors', 0)} errors, {j.get('skipped', 0)} skipped; files: {', '.join(Path(f).name for f in j.get('files', {}))}")
    for failure in j.get("failures", [])[:10]:
        print(f"    FAILED {failure}")
    if s["serve"]:
        for server in s["serve"]["servers"]:
            print(f"  serve {server['name']}: {'ok' if server['ok'] else 'FAILED'}, min cosine {server['min_cosine']}")
    if s["bench"]:
        for g in s["bench"].get("goals") or []:
            print(f"  goal {g['goal']}: {g['value']} -> {g['met']}")
    for problem in s["problems"]:
        print(f"  PROBLEM {problem}")
    print(f"GPU CHECK: {'OK' if s['ok'] else 'FAILED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", required=True)
    parser.add_argument("--junit", required=True)
    parser.add_argument("--out", required=True, help="the $OUT folder: reads serve.json, bench.json; writes summary.json")
    parser.add_argument("--mode", choices=("gpu", "smoke"), required=True)
    parser.add_argument("--budget", type=int, default=0)
    parser.add_argument("--elapsed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    summary = summarize(read_parts(Path(args.parts)), read_junit(Path(args.junit)), read_json(out / "serve.json"),
                        read_json(out / "bench.json"), args.mode)
    summary.update(budget_s=args.budget, elapsed_s=args.elapsed)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary, args.budget, args.elapsed)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
