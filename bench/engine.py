"""Question: does the CPU engine on its C kernels beat PyTorch and ONNX Runtime on this machine,
at every input length, for big and small batches, and alone or beside a CPU hog?

One run, contenders alternating pass by pass in their own long-lived worker processes
(bench/throughput.py): tinyembed (C kernels), tinyembed-numpy, sentence-transformers (PyTorch)
and onnxruntime, on all-MiniLM-L6-v2:
  lengths   the mixed corpus (texts in) and fixed 16, 128, 512 tokens (ids in)
  sweep     tinyembed's tokens/s per batch size, 64..16k tokens per batch (mixed corpus as ids)
  latency   one 16-token text alone, every contender (median of --latency-runs per round)
Ratios are reported per round (pass r of every contender ran back to back), with medians.
--hog N starts N busy-loop processes for the whole measurement (and stops them after), to show
how each contender shares the cores with a neighbour; --wait-idle first waits for a quiet machine.

    python -m bench.engine                        # table; --out DIR also writes results.md + results.json
    python -m bench.engine --hog 1 --repeats 3
    python -m bench.engine --quick --contenders tinyembed,tinyembed-numpy
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import throughput
from bench.common import MODEL, cpu_model, environment, fmt, loadavg, table, wait_for_idle

SWEEP = [64, 256, 1024, 4096, 16384]
GOALS = "mixed >= 1.6x sentence-transformers and >= 1.3x onnxruntime; every fixed length >= 1.0x " \
        "sentence-transformers; 256-token batches >= 90% of 16k-token batches; 16-token latency <= PyTorch's"


def matmul_peak_gflops() -> float:
    """numpy's best square float32 matmul on this machine: the GEMM ceiling (bench.breakdown uses it)."""
    import numpy as np

    best = 0.0
    for n in (1024, 2048):
        a, b = np.random.default_rng(0).standard_normal((2, n, n)).astype(np.float32)
        a @ b
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2.0 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def start_hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait()


def goals(report: dict) -> dict:
    rows = {(r["corpus"], r["contender"]): r for r in report["rows"] if "tokens_per_s" in r}
    speedup = lambda corpus, peer: rows.get((corpus, peer), {}).get("tinyembed_speedup")  # noqa: E731
    out = {"mixed_vs_st": speedup("mixed", "sentence-transformers"), "mixed_vs_ort": speedup("mixed", "onnxruntime")}
    for length in ("16", "128", "512"):
        out[f"{length}_vs_st"] = speedup(length, "sentence-transformers")
    sweep = report.get("sweep", {}).get("tinyembed", {})
    out["batch256_of_16k"] = sweep.get("256", {}).get("of_largest")
    lat = report.get("latency", {})
    if "tinyembed" in lat and "sentence-transformers" in lat:
        out["latency16_ms"] = {n: v["median_ms"] for n, v in lat.items()}
    checks = {"mixed_vs_st": 1.6, "mixed_vs_ort": 1.3, "16_vs_st": 1.0, "128_vs_st": 1.0, "512_vs_st": 1.0,
              "batch256_of_16k": 0.9}
    out["met"] = {k: (out[k] >= v if out.get(k) is not None else None) for k, v in checks.items()}
    if "latency16_ms" in out:
        out["met"]["latency16"] = out["latency16_ms"]["tinyembed"] <= out["latency16_ms"]["sentence-transformers"]
    return out


def markdown(report: dict) -> str:
    out = [f"CPU: {report['cpu']}, {report['environment']['machine']['cpus']} cpus; hogs: {report['hogs']}; "
           f"load average before/after: {report['load_before']} / {report['load_after']}", "",
           throughput.markdown(report), ""]
    rounds = [[r["corpus"], r["contender"], ", ".join(f"{x:.2f}" for x in r["round_speedups"])]
              for r in report["rows"] if r.get("round_speedups") and r["contender"] != "tinyembed"]
    out += ["tinyembed (C) speed-up per round (contenders alternate):", "",
            table(["corpus", "peer", "per-round speed-ups"], rounds, "lll"), ""]
    sweep = report.get("sweep", {})
    if sweep:
        sizes = list(next(iter(sweep.values())))
        rows = [[name] + [f"{v[b]['tokens_per_s']:,.0f} ({v[b]['of_largest']:.0%})" for b in sizes]
                for name, v in sweep.items()]
        out += ["Batch-size sweep, tokens/s over the mixed corpus as ids (share of the largest batch's rate):",
                "", table(["contender"] + [f"{b} tok" for b in sizes], rows, "l" + "r" * len(sizes)), ""]
    lat = report.get("latency", {})
    if lat:
        rows = [[n, fmt(v["median_ms"], ".2f"), ", ".join(f"{x:.2f}" for x in v["rounds_ms"])] for n, v in lat.items()]
        out += [f"One {report.get('latency_tokens', 16)}-token text alone (ms, median of rounds; per round):", "",
                table(["contender", "ms", "rounds"], rows, "lrl"), ""]
    out += [f"Goals: {GOALS}", "", "```", json.dumps(report["goals"], indent=1), "```"]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--contenders", default=",".join(throughput.CONTENDERS))
    parser.add_argument("--lengths", default="mixed,16,128,512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep", default=",".join(map(str, SWEEP)), help="tokens per batch; empty: no sweep")
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--hog", type=int, default=0, help="busy-loop processes beside the measurement")
    parser.add_argument("--wait-idle", type=float, metavar="LOAD", help="first wait for the 1-min load below LOAD")
    parser.add_argument("--wait-timeout", type=float, default=900)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scale", type=float, default=1.0, help="corpus sizes x this (a busy machine: 0.25)")
    parser.add_argument("--out", type=Path, help="write results.md and results.json here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for name in throughput.FULL:
        throughput.FULL[name] = max(8, int(throughput.FULL[name] * args.scale))
    waited = wait_for_idle(args.wait_idle, args.wait_timeout) if args.wait_idle else None
    load_before = loadavg()
    hogs = start_hogs(args.hog)
    try:
        started = time.time()
        report = throughput.run(args.model, args.quick, args.lengths.split(","), args.contenders.split(","),
                                args.repeats, sweep=[int(b) for b in args.sweep.split(",") if b],
                                latency_runs=args.latency_runs)
    finally:
        stop_hogs(hogs)
    report.update(cpu=cpu_model(), scale=args.scale, environment=environment(), hogs=args.hog, waited=waited,
                  load_before=[round(x, 2) for x in load_before], load_after=[round(x, 2) for x in loadavg()],
                  wall_s=round(time.time() - started, 1))
    report["goals"] = goals(report)
    text = markdown(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=1))
        (args.out / "results.md").write_text(text + "\n")
    print(json.dumps(report, indent=1) if args.json else text)


if __name__ == "__main__":
    main()
