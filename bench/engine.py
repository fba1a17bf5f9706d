"""Question: how fast is tinyembed's numpy engine against sentence-transformers on this CPU?

Same model (the bundled all-MiniLM-L6-v2), same texts (a mixed-length English corpus), same
max length (256), same machine, one run. Each timed pass runs in a fresh subprocess (no shared
caches or thread pools) after a warm-up; --repeats rounds alternate the contenders so that
noise from neighbours lands on both, and the medians count.
Tokens are the model's real tokens (specials included) after truncation, counted once.

Then, in this process: a per-op breakdown of one tinyembed pass over the corpus (GEMM,
attention, GELU, LayerNorm, other) and the achieved GEMM GFLOP/s against numpy's measured
matmul peak on this machine.

    python -m bench.engine            # table
    python -m bench.engine --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from bench.corpus import mixed_corpus

MODEL = "all-MiniLM-L6-v2"
CONTENDERS = ("tinyembed", "sentence-transformers")


def run_tinyembed(texts: list[str], repeats: int, batch_tokens: int) -> list[float]:
    from tinyembed.engine import load_engine

    engine = load_engine(MODEL)
    sequences = engine.tokenizer.encode(texts, truncate=True)
    engine.embed_sequences(sequences[:64], max_batch_tokens=batch_tokens)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.embed_sequences(engine.tokenizer.encode(texts, truncate=True), max_batch_tokens=batch_tokens)
        times.append(time.perf_counter() - start)
    return times


def run_sentence_transformers(texts: list[str], repeats: int, batch_size: int) -> list[float]:
    from sentence_transformers import SentenceTransformer

    from tinyembed.engine.registry import resolve

    model = SentenceTransformer(str(resolve(MODEL)), device="cpu")
    model.max_seq_length = 256
    model.encode(texts[:64], batch_size=batch_size)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
        times.append(time.perf_counter() - start)
    return times


def worker(args) -> None:
    texts = mixed_corpus(args.texts)
    if args.worker == "tinyembed":
        times = run_tinyembed(texts, args.repeats, args.batch_tokens)
    else:
        times = run_sentence_transformers(texts, args.repeats, args.st_batch_size)
    print(json.dumps({"times": times}))


def measure_once(name: str, args) -> float | str:
    """One timed pass of one contender in a fresh subprocess: seconds, or the error's last line."""
    cmd = [sys.executable, "-m", "bench.engine", "--worker", name, "--texts", str(args.texts),
           "--repeats", "1", "--batch-tokens", str(args.batch_tokens),
           "--st-batch-size", str(args.st_batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else "failed"
    return json.loads(done.stdout.strip().splitlines()[-1])["times"][0]


def measure(args) -> tuple[dict, list[float]]:
    """Rounds that alternate the contenders, so a noisy neighbour slows both alike; per-round
    ratios (tinyembed speed over sentence-transformers speed) come back with the medians."""
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    errors: dict[str, str] = {}
    for _ in range(args.repeats):
        for name in CONTENDERS:
            if name in errors:
                continue
            result = measure_once(name, args)
            if isinstance(result, str):
                errors[name] = result
            else:
                times[name].append(result)
    results = {name: ({"error": errors[name]} if name in errors else
                      {"times": times[name], "median_s": statistics.median(times[name])}) for name in CONTENDERS}
    st, te = times["sentence-transformers"], times["tinyembed"]
    round_ratios = [s / t for s, t in zip(st, te)] if not errors else []
    return results, round_ratios


def matmul_peak_gflops() -> float:
    """numpy's best square float32 matmul on this machine: the GEMM ceiling."""
    best = 0.0
    for n in (1024, 2048):
        a, b = np.random.default_rng(0).standard_normal((2, n, n)).astype(np.float32)
        a @ b
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2.0 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def op_breakdown(texts: list[str], batch_tokens: int) -> dict:
    from bench.op_profile import OpProfiler
    from tinyembed.engine import load_engine

    engine = load_engine(MODEL)
    sequences = engine.tokenizer.encode(texts, truncate=True)
    engine.embed_sequences(sequences[:64])
    profiler = OpProfiler(engine.model.ops)
    engine.model.ops = profiler
    start = time.perf_counter()
    engine.embed_sequences(sequences, max_batch_tokens=batch_tokens)
    total = time.perf_counter() - start
    rows = profiler.by_category()
    rows["(outside ops)"] = {"seconds": total - sum(r["seconds"] for r in rows.values()), "flops": 0.0, "bytes": 0.0}
    return {"total_s": total, "categories": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, default=16384, help="tinyembed tokens per batch")
    parser.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers batch size")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from tinyembed.engine import load_engine

    texts = mixed_corpus(args.texts)
    lengths = [len(s) for s in load_engine(MODEL).tokenizer.encode(texts, truncate=True)]
    tokens = sum(lengths)
    results, round_ratios = measure(args)
    for row in results.values():
        if "median_s" in row:
            row["tokens_per_s"] = tokens / row["median_s"]
    peak = matmul_peak_gflops()
    breakdown = op_breakdown(texts, args.batch_tokens)
    gemm = breakdown["categories"].get("GEMM", {"flops": 0.0, "seconds": 1.0})
    report = {
        "question": "numpy engine vs sentence-transformers, same CPU, same texts",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "corpus": {"texts": len(texts), "tokens": tokens, "mean_tokens": tokens / len(texts),
                   "max_tokens": max(lengths), "max_length": 256},
        "results": results,
        "ratio": (results["tinyembed"].get("tokens_per_s", 0) / results["sentence-transformers"]["tokens_per_s"]
                  if "tokens_per_s" in results["sentence-transformers"] else None),
        "round_ratios": round_ratios,
        "matmul_peak_gflops": peak,
        "gemm_gflops": gemm["flops"] / gemm["seconds"] / 1e9,
        "breakdown": breakdown,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def print_report(r: dict) -> None:
    c = r["corpus"]
    print(f"corpus: {c['texts']} texts, {c['tokens']} tokens (mean {c['mean_tokens']:.0f}, max {c['max_tokens']}), "
          f"machine: {r['machine']['cpus']} cpus, numpy {r['machine']['numpy']}")
    print(f"{'contender':<24}{'tokens/s':>12}{'median s':>10}{'ratio':>8}")
    base = r["results"]["sentence-transformers"].get("tokens_per_s")
    for name, row in r["results"].items():
        if "error" in row:
            print(f"{name:<24}{'error: ' + row['error']}")
            continue
        ratio = row["tokens_per_s"] / base if base else float("nan")
        print(f"{name:<24}{row['tokens_per_s']:>12.0f}{row['median_s']:>10.2f}{ratio:>8.2f}")
    if r["round_ratios"]:
        print("ratio per round (contenders alternate): " + ", ".join(f"{x:.2f}" for x in r["round_ratios"]))
    b = r["breakdown"]
    print(f"\ntinyembed per-op breakdown (one pass, {b['total_s']:.2f} s):")
    print(f"{'op':<16}{'seconds':>9}{'share':>8}{'GFLOP/s':>10}{'GB/s':>8}")
    for name, row in sorted(b["categories"].items(), key=lambda kv: -kv[1]["seconds"]):
        s = max(row["seconds"], 1e-12)
        print(f"{name:<16}{row['seconds']:>9.3f}{row['seconds'] / b['total_s']:>8.1%}"
              f"{row['flops'] / s / 1e9:>10.1f}{row['bytes'] / s / 1e9:>8.1f}")
    print(f"\nGEMM: {r['gemm_gflops']:.0f} GFLOP/s achieved vs numpy matmul peak {r['matmul_peak_gflops']:.0f} "
          f"GFLOP/s ({r['gemm_gflops'] / r['matmul_peak_gflops']:.0%})")


if __name__ == "__main__":
    main()
