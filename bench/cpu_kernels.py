"""Question: how fast is each C kernel (kernels/cpu/*.c, naive and fast) against its numpy twin,
op by op, on one thread and on all available cores?

MiniLM shapes (H=384, 12 heads of 32, FFN 1536) over a packed batch of `--seq-len` tokens per
sequence. Each op runs on fresh copies of the same inputs; the versions alternate in rounds and
the best of --repeats rounds counts (the best, not the median: this is a kernel's speed with
neighbours' noise removed as far as possible; bench/engine.py measures end to end with medians).

    python -m bench.cpu_kernels                       # 32 x 128 tokens
    python -m bench.cpu_kernels --seq-len 512 --batch 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tinyembed.engine.build import cpu_compile as cpu_build
from tinyembed.engine.build.cpu_threads import available_cores
from tinyembed.engine.ops.c_ops import NAIVE, SIGNATURES, COps
from tinyembed.engine.ops.numpy_ops import NumpyOps


def inputs(batch: int, seq_len: int, hidden=384, heads=12, ffn=1536, vocab=30522) -> dict:
    """op -> (call(ops, *fresh), make fresh in-place input or None)."""
    rng = np.random.default_rng(0)
    tokens = batch * seq_len
    f = lambda *shape: rng.standard_normal(shape, np.float32)  # noqa: E731
    cu = (np.arange(batch + 1) * seq_len).astype(np.int32)
    word, position = f(vocab, hidden) * 0.05, f(512, hidden) * 0.05
    ids = rng.integers(0, vocab, tokens).astype(np.int32)
    pos = np.tile(np.arange(seq_len, dtype=np.int32), batch)
    b_ffn, b_h, w_h, type0 = f(ffn), f(hidden), f(hidden), f(hidden)
    res, qkv = f(tokens, hidden), f(tokens, 3 * hidden)
    return {
        "embed": (lambda ops: ops.embed(ids, pos, word, position, type0, w_h, b_h, 1e-12), None),
        "bias_gelu": (lambda ops, y: ops.bias_gelu(y, b_ffn), lambda: f(tokens, ffn)),
        "bias_residual_layernorm": (lambda ops, y: ops.bias_residual_layernorm(y, b_h, res, w_h, b_h, 1e-12),
                                    lambda: f(tokens, hidden)),
        "attention": (lambda ops: ops.attention(qkv, cu, seq_len, heads), None),
        "pool_normalize": (lambda ops: ops.pool_normalize(res, cu, "mean"), None),
    }


def measure(versions: dict, cases: dict, repeats: int) -> dict:
    best = {(op, v): float("inf") for op in cases for v in versions}
    for _ in range(repeats):
        for op, (call, make) in cases.items():
            for v, ops in versions.items():
                arg = (make(),) if make else ()
                start = time.perf_counter()
                call(ops, *arg)
                best[op, v] = min(best[op, v], time.perf_counter() - start)
    return {op: {v: best[op, v] * 1e3 for v in versions} for op in cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="default: 1 and all available cores")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lib = cpu_build.load(tuple(SIGNATURES) + tuple(NAIVE.values()))[0]
    cases = inputs(args.batch, args.seq_len)
    report = {"batch": args.batch, "seq_len": args.seq_len, "rows": {}}
    for threads in [args.threads] if args.threads else sorted({1, available_cores()}):
        versions = {"numpy": NumpyOps(threads), "c": COps(lib, threads)}
        if not args.no_naive:
            versions["c_naive"] = COps(lib, threads, naive=True)
        report["rows"][threads] = measure(versions, cases, args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for threads, rows in report["rows"].items():
        print(f"\n{args.batch} x {args.seq_len} tokens, {threads} thread(s), best of {args.repeats} (ms):")
        names = list(next(iter(rows.values())))
        print(f"{'op':<26}" + "".join(f"{n:>10}" for n in names) + f"{'numpy/c':>10}")
        for op, row in rows.items():
            print(f"{op:<26}" + "".join(f"{row[n]:>10.2f}" for n in names) + f"{row['numpy'] / row['c']:>10.1f}x")


if __name__ == "__main__":
    main()
