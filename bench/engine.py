"""Question: does the CPU engine on its C kernels beat PyTorch and ONNX Runtime on this machine,
at every input length, for big and small batches, in fp32 and int8, and alone or beside a CPU hog?

One run, contenders alternating pass by pass in their own long-lived worker processes
(bench/throughput.py, bench/contenders.py): tinyembed (C kernels, fp32), tinyembed-numpy,
tinyembed-int8 (--precision int8), sentence-transformers (PyTorch), onnxruntime (fp32) and
onnxruntime-int8 (the same graph through quantize_dynamic), on all-MiniLM-L6-v2:
  lengths   the mixed corpus (texts in) and fixed 16, 128, 512 tokens (ids in)
  sweep     tinyembed's tokens/s per batch size, 64..16k tokens per batch (mixed corpus as ids)
  latency   one 16-token and one 128-token text alone, tinyembed fp32/int8 and onnxruntime
            fp32/int8 each capped at 1 and at 2 threads (median of --latency-runs per round)
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
from bench.common import MODEL, cpu_model, environment, fmt, loadavg, median, table, wait_for_idle

SWEEP = [64, 256, 1024, 4096, 16384]
LATENCY_TOKENS = (16, 128)
LATENCY_THREADS = (1, 2)
LATENCY_CONTENDERS = ("tinyembed", "tinyembed-int8", "onnxruntime", "onnxruntime-int8")
GOALS = "(issue 25) fp32: mixed, 16, 128, 512 each >= 1.15x onnxruntime and every fixed length >= 1.3x " \
        "sentence-transformers; int8: mixed >= 2.0x onnxruntime fp32 and >= 1.2x onnxruntime-int8; " \
        "64-token batches >= 70% and 256-token >= 90% of 16k-token throughput; one text of 16 and of 128 " \
        "tokens at most onnxruntime's latency with 1 and with 2 threads"


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


def _ratio(rows: dict, corpus: str, ours: str, peer: str) -> dict | None:
    """peer time / our time per round (the rounds ran back to back) and its median."""
    a, b = rows.get((corpus, ours)), rows.get((corpus, peer))
    if not a or not b:
        return None
    rounds = [p / o for p, o in zip(b["times"], a["times"])]
    return {"rounds": [round(r, 3) for r in rounds], "median": round(median(rounds), 3)}


def goals(report: dict) -> dict:
    rows = {(r["corpus"], r["contender"]): r for r in report["rows"] if "tokens_per_s" in r}
    checks = {}  # name -> (ratio, bound)
    for corpus in ("mixed", "16", "128", "512"):
        checks[f"fp32_{corpus}_vs_ort"] = (_ratio(rows, corpus, "tinyembed", "onnxruntime"), 1.15)
        if corpus != "mixed":
            checks[f"fp32_{corpus}_vs_st"] = (_ratio(rows, corpus, "tinyembed", "sentence-transformers"), 1.3)
    checks["int8_mixed_vs_ort_fp32"] = (_ratio(rows, "mixed", "tinyembed-int8", "onnxruntime"), 2.0)
    checks["int8_mixed_vs_ort_int8"] = (_ratio(rows, "mixed", "tinyembed-int8", "onnxruntime-int8"), 1.2)
    out = {name: ratio for name, (ratio, _) in checks.items()}
    out["met"] = {name: (ratio["median"] >= bound if ratio else None) for name, (ratio, bound) in checks.items()}
    sweep = report.get("sweep", {}).get("tinyembed", {})
    for size, bound in (("64", 0.7), ("256", 0.9)):
        share = sweep.get(size, {}).get("of_largest")
        out[f"batch{size}_of_16k"] = share
        out["met"][f"batch{size}_of_16k"] = share >= bound if share is not None else None
    for key, lat in report.get("latencies", {}).items():  # "16 tokens, 1 thread" -> contender -> times
        for ours in ("tinyembed", "tinyembed-int8"):
            if ours in lat and "onnxruntime" in lat:
                rounds = [p / o for p, o in zip(lat["onnxruntime"]["rounds_ms"], lat[ours]["rounds_ms"])]
                out[f"latency {key}: onnxruntime / {ours}"] = [round(r, 2) for r in rounds]
                out["met"][f"latency {key} {ours}"] = median(rounds) >= 1.0
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
    by_rows = {(r["corpus"], r["contender"]): r for r in report["rows"] if "tokens_per_s" in r}
    int8 = [[c, peer, ", ".join(f"{x:.2f}" for x in ratio["rounds"]), f"{ratio['median']:.2f}"]
            for c in ("mixed", "16", "128", "512") for peer in ("onnxruntime", "onnxruntime-int8", "tinyembed")
            if (ratio := _ratio(by_rows, c, "tinyembed-int8", peer))]
    if int8:
        out += ["tinyembed-int8 speed-up per round:", "", table(["corpus", "peer", "per-round", "median"], int8, "lllr"), ""]
    for key, lat in report.get("latencies", {}).items():
        rows = [[n, fmt(v["median_ms"], ".2f"), ", ".join(f"{x:.2f}" for x in v["rounds_ms"])] for n, v in lat.items()]
        out += [f"One text alone, {key} (ms, median of rounds; per round):", "",
                table(["contender", "ms", "rounds"], rows, "lrl"), ""]
    out += [f"Goals: {GOALS}", "", "```", json.dumps(report["goals"], indent=1), "```"]
    return "\n".join(out)


def latencies(args, contenders: list[str]) -> dict:
    """One text of each LATENCY_TOKENS length alone, every contender capped at each of
    LATENCY_THREADS threads (workers "name@threads"), rounds alternating all of them."""
    names = [f"{c}@{t}" for t in LATENCY_THREADS for c in contenders]
    part = throughput.run(args.model, True, [], names, args.repeats, latency_runs=args.latency_runs,
                          latency_tokens=LATENCY_TOKENS)
    out = {}
    for tokens in LATENCY_TOKENS:
        lat = part.get("latency" if tokens == 16 else f"latency{tokens}", {})
        for threads in LATENCY_THREADS:
            out[f"{tokens} tokens, {threads} thread{'s' if threads > 1 else ''}"] = {
                name.partition("@")[0]: v for name, v in lat.items() if name.endswith(f"@{threads}")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--contenders", default=",".join(throughput.CONTENDERS + throughput.QUANTIZED))
    parser.add_argument("--latency-contenders", default=",".join(LATENCY_CONTENDERS))
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
        report = throughput.run(args.model, args.quick, [x for x in args.lengths.split(",") if x],
                                args.contenders.split(","), args.repeats,
                                sweep=[int(b) for b in args.sweep.split(",") if b])
        if args.latency_runs:
            report["latencies"] = latencies(args, [c for c in args.latency_contenders.split(",") if c])
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
