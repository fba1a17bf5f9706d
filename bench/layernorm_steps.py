"""Question: what does each step from naive to fast buy one memory-bound op on this CPU?

The op is the "add & norm" after attention and after the FFN (bias_residual_layernorm):

    y[t, :] = LayerNorm(y[t, :] + bias + residual[t, :]) * ln_w + ln_b

on one batch of activations (default 16384 tokens x 384, MiniLM's width: 24 MiB per array).
Every version computes the same thing (checked against the first); the floor is reading y and
residual and writing y once: 3 x T x H x 4 bytes. Versions, simple to fast:

  1 naive        textbook numpy: z = y + b + r; mean; var = ((z - mean)**2).mean(); ...
                 every operator is a full pass over DRAM-sized arrays with a fresh temporary
  2 in place     the same arithmetic written into y (no temporaries, einsum for the variance)
  3 blocked      2, on row blocks of 32K elements that stay in L2 while all passes run
  4 threads      3, blocks spread over a thread pool: NumpyOps.bias_residual_layernorm itself

The GPU has the same story in kernels/layernorm.cu (naive: three scalar passes re-reading
global memory; fast: one 16-byte load per thread, the row kept in registers):
`python -m bench.gpu --only kernels` measures those two. docs/kernel-walkthrough.md reads both.

    python -m bench.layernorm_steps
    python -m bench.layernorm_steps --tokens 4096 --hidden 768 --json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.common import fmt, median, new_report, table

BLOCK = 32 * 1024  # elements per row block, as tinyembed/engine/ops/numpy_ops.py


def naive(y, bias, residual, w, b, eps):
    z = y + bias + residual
    mean = z.mean(axis=1, keepdims=True)
    var = ((z - mean) ** 2).mean(axis=1, keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * w + b


def in_place(y, bias, residual, w, b, eps):
    y += bias
    y += residual
    y -= y.mean(axis=1, keepdims=True)
    var = np.einsum("ij,ij->i", y, y)[:, None]
    var *= 1.0 / y.shape[1]
    var += eps
    y *= 1.0 / np.sqrt(var)
    y *= w
    y += b
    return y


def blocked(y, bias, residual, w, b, eps):
    rows = max(1, BLOCK // y.shape[1])
    for a in range(0, y.shape[0], rows):
        in_place(y[a:a + rows], bias, residual[a:a + rows], w, b, eps)
    return y


def make_threaded(threads: int):
    from tinyembed.engine.ops.numpy_ops import NumpyOps

    ops = NumpyOps(threads)
    return lambda y, bias, residual, w, b, eps: ops.bias_residual_layernorm(y, bias, residual, w, b, eps)


def copy_peak(nbytes: int) -> float:
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def run(tokens: int = 16384, hidden: int = 384, repeats: int = 7, threads: int | None = None, quick: bool = False) -> dict:
    import os

    if quick:
        tokens, repeats = min(tokens, 4096), min(repeats, 3)
    threads = threads or min(8, os.cpu_count() or 1)
    settings = {"tokens": tokens, "hidden": hidden, "repeats": repeats, "threads": threads, "block_elements": BLOCK}
    report = new_report("naive to fast: bias + residual + LayerNorm on the CPU", settings)
    rng = np.random.default_rng(0)
    y0 = rng.standard_normal((tokens, hidden), dtype=np.float32)
    residual = rng.standard_normal((tokens, hidden), dtype=np.float32)
    bias, w, b = (rng.standard_normal(hidden, dtype=np.float32) for _ in range(3))
    eps = 1e-12
    floor = 3 * y0.nbytes
    report["copy_peak_gbps"] = copy_peak(y0.nbytes)
    versions = [("1 naive", naive), ("2 in place", in_place), ("3 blocked", blocked),
                (f"4 threads ({threads})", make_threaded(threads))]
    reference = naive(y0.copy(), bias, residual, w, b, eps)
    rows = []
    for name, fn in versions:
        times = []
        for _ in range(repeats + 1):  # the first pass warms up
            y = y0.copy()
            t0 = time.perf_counter()
            out = fn(y, bias, residual, w, b, eps)
            times.append(time.perf_counter() - t0)
        seconds = median(times[1:])
        rows.append({"version": name, "ms": seconds * 1000, "gbps": floor / seconds / 1e9,
                     "max_abs_diff": float(np.abs(out - reference).max())})
    for row in rows:
        row["speedup"] = rows[0]["ms"] / row["ms"]
        row["of_copy_peak"] = row["gbps"] / report["copy_peak_gbps"]
    report["rows"] = rows
    report["floor_bytes"] = floor
    return report


def markdown(report: dict) -> str:
    s = report["settings"]
    rows = [[r["version"], fmt(r["ms"], ".2f"), fmt(r["gbps"], ".1f"), fmt(100 * r["of_copy_peak"], ".0f") + "%",
             fmt(r["speedup"], ".1f") + "x", f"{r['max_abs_diff']:.1e}"] for r in report["rows"]]
    return (f"bias + residual + LayerNorm on {s['tokens']} x {s['hidden']} float32 "
            f"({report['floor_bytes'] / 2**20:.0f} MiB moved at least); copy peak {report['copy_peak_gbps']:.1f} GB/s; "
            f"median of {s['repeats']}.\n\n"
            + table(["version", "ms", "GB/s", "of copy peak", "speed-up", "max abs diff"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", help=argparse.SUPPRESS)  # accepted from the suite, unused
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args.tokens, args.hidden, args.repeats, args.threads, args.quick)
    print(json.dumps(report, indent=2) if args.json else markdown(report))


if __name__ == "__main__":
    main()
