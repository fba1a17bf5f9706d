"""Question: where does the time of one forward pass go, op by op and layer by layer, and how
close is each op to what this machine can do?

One packed batch (default: 32 sequences of 128 tokens) runs through the engine with every op
timed (bench/op_profile.py: a wall clock around each call on the CPU, where ops are
synchronous; CUDA events around each kernel on a GPU). FLOPs and bytes per op come from the
argument shapes (the fewest bytes an op must move), so each op gets an achieved GFLOP/s and
GB/s, set against two ceilings measured here and now:

  compute peak    numpy's best float32 square matmul (1024^2, 2048^2), all cores
  memory peak     the best of a one-thread and an all-threads numpy copy of 256 MiB
                  (bytes read + written per second)

The roofline bound of an op is min(compute peak, intensity x memory peak), intensity = FLOPs
per byte moved; "of bound" is achieved / bound. Elementwise ops (GELU, LayerNorm) do ~no
FLOPs by this count: their bound is bandwidth alone. Activations of one batch often fit in the
CPU's caches, so a memory-bound op can beat the DRAM copy rate: read that as "not DRAM-bound".

Layer index = call order: each encoder layer calls linear (QKV), attention, matmul (out),
bias_residual_layernorm, matmul (FFN in), bias_gelu, matmul (FFN out), bias_residual_layernorm.

    python -m bench.breakdown                              # MiniLM, 32 x 128 tokens
    python -m bench.breakdown --seq-len 16,128,512 --model tests/fixtures/tiny-bert-fp32
    python -m bench.breakdown --corpus mixed --batch-tokens 8192 --json
    python -m bench.breakdown --device cuda                # CUDA events per kernel (needs CuPy and a GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import MODEL, fmt, median, new_report, pyplot, table
from bench.corpus import fixed_length_corpus, mixed_corpus
from bench.op_profile import CATEGORIES, OpProfiler

# the order ops run in one layer, as families/bert.py calls them (matmul appears three times)
LAYER_OPS = ("qkv", "attention", "attn_out", "add_ln1", "ffn_in", "gelu", "ffn_out", "add_ln2")
_MATMULS = ("attn_out", "ffn_in", "ffn_out")


class LayerProfiler(OpProfiler):
    """OpProfiler that also files each call under (layer, position-in-layer).

    clock: "wall" (CPU: synchronous ops) or "cuda" (a pair of CUDA events around each call,
    read after the forward pass has been synchronized)."""

    def __init__(self, ops, clock: str = "wall"):
        self.clock = clock
        self.layer = -1
        self._matmul_in_layer = 0
        self.cells: dict[tuple[str, str], float] = {}  # (layer label, op label) -> seconds
        self._pending: list[tuple[str, str, str, object, object]] = []
        super().__init__(ops)

    def _label(self, name: str) -> tuple[str, str]:
        if name == "embed":
            self.layer = -1
            return "embeddings", "embed"
        if name == "pool_normalize":
            return "pooling", "pool_normalize"
        if name == "linear":
            self.layer += 1
            self._matmul_in_layer = 0
            return f"layer {self.layer}", "qkv"
        if name == "matmul":
            label = _MATMULS[min(self._matmul_in_layer, 2)]
            self._matmul_in_layer += 1
            return f"layer {self.layer}", label
        if name == "attention":
            return f"layer {self.layer}", "attention"
        if name == "bias_gelu":
            return f"layer {self.layer}", "gelu"
        if name == "bias_residual_layernorm":
            return f"layer {self.layer}", "add_ln1" if self._matmul_in_layer <= 1 else "add_ln2"
        return f"layer {self.layer}", name

    def _timed(self, name, fn):
        def call(*args):
            where = self._label(name)
            if self.clock == "cuda":
                import cupy

                start, end = cupy.cuda.Event(), cupy.cuda.Event()
                start.record()
                out = fn(*args)
                end.record()
                self._pending.append((name, *where, start, end))
            else:
                t0 = time.perf_counter()
                out = fn(*args)
                self._add(name, where, time.perf_counter() - t0)
            self._count(name, args)
            return out

        return call

    def _add(self, name, where, seconds):
        self.seconds[name] += seconds
        self.cells[where] = self.cells.get(where, 0.0) + seconds

    def settle(self) -> None:
        """CUDA: wait for the last kernel, then read every event pair."""
        if not self._pending:
            return
        import cupy

        self._pending[-1][-1].synchronize()
        for name, layer, op, start, end in self._pending:
            self._add(name, (layer, op), cupy.cuda.get_elapsed_time(start, end) / 1000.0)
        self._pending.clear()


# -- ceilings ------------------------------------------------------------------------------------

def cpu_peaks(threads: int | None = None) -> dict:
    """Measured here: numpy float32 matmul GFLOP/s and copy GB/s (read + write)."""
    from bench.engine import matmul_peak_gflops

    gflops = max(matmul_peak_gflops() for _ in range(2))
    n = 64 * 2**20  # 256 MiB of float32
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    one = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        one.append(2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
    threads = threads or os.cpu_count() or 1
    chunks = np.array_split(np.arange(n), threads)
    bounds = [(int(c[0]), int(c[-1]) + 1) for c in chunks if len(c)]
    many = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(3):
            t0 = time.perf_counter()
            list(pool.map(lambda ab: np.copyto(dst[ab[0]:ab[1]], src[ab[0]:ab[1]]), bounds))
            many.append(2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
    return {"gflops": gflops, "gbps": max(max(one), max(many)), "copy_gbps_one_thread": max(one),
            "copy_gbps_all_threads": max(many), "how": "numpy float32 matmul 1024/2048; numpy copy 256 MiB"}


def cuda_peaks(dtype: str) -> dict:
    import cupy

    dt = {"float16": cupy.float16, "bfloat16": cupy.float16, "float32": cupy.float32}[dtype]
    n = 8192
    a = cupy.ones((n, n), dt)
    b = cupy.ones((n, n), dt)
    a @ b
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(5):
        a @ b
    end.record()
    end.synchronize()
    gflops = 5 * 2 * n**3 / (cupy.cuda.get_elapsed_time(start, end) / 1000) / 1e9
    src = cupy.ones(256 * 2**20, cupy.uint8)
    dst = cupy.empty_like(src)
    dst[...] = src
    start.record()
    for _ in range(10):
        dst[...] = src
    end.record()
    end.synchronize()
    gbps = 10 * 2 * src.nbytes / (cupy.cuda.get_elapsed_time(start, end) / 1000) / 1e9
    return {"gflops": gflops, "gbps": gbps, "how": f"cupy {dtype} matmul 8192^3; device copy 256 MiB"}


# -- one batch, profiled --------------------------------------------------------------------------

def make_batch(engine, seq_len: str, batch: int, batch_tokens: int) -> tuple[list[np.ndarray], dict]:
    if seq_len == "mixed":
        seqs, total = [], 0
        for s in engine.tokenizer.encode(mixed_corpus(4 * batch_tokens // 40 + 64), truncate=True):
            if total + len(s) > batch_tokens:
                break
            seqs.append(s)
            total += len(s)
    else:
        n_tokens = int(seq_len)
        if n_tokens > engine.spec.max_seq_length and n_tokens > getattr(engine.spec, "max_position_embeddings", 0):
            raise SystemExit(f"--seq-len {n_tokens}: longer than the model's positions")
        ask = max(batch, -(-batch * n_tokens // 120))
        seqs = [np.asarray(s, np.int32) for s in fixed_length_corpus(engine.tokenizer, n_tokens, ask)
                if len(s) == n_tokens][:batch]
    lengths = [len(s) for s in seqs]
    return seqs, {"sequences": len(seqs), "tokens": int(sum(lengths)), "max_len": int(max(lengths)),
                  "mean_len": round(float(np.mean(lengths)), 1)}


def profile_batch(engine, seqs, repeats: int, clock: str) -> dict:
    batch = engine.pack(seqs)
    inner = engine.model.ops
    engine.model.forward(batch)  # warm-up (allocators, thread pools, caches)
    runs = []
    try:
        for _ in range(repeats):
            prof = LayerProfiler(inner, clock)
            engine.model.ops = prof
            t0 = time.perf_counter()
            engine.model.forward(batch)
            prof.settle()
            total = time.perf_counter() - t0
            runs.append((total, prof))
    finally:
        engine.model.ops = inner
    total = median([r[0] for r in runs])
    ops = {}
    for name in CATEGORIES:
        secs = [r[1].seconds.get(name, 0.0) for r in runs]
        p = runs[0][1]
        if p.calls.get(name):
            ops[name] = {"category": CATEGORIES[name], "calls": p.calls[name] // 1, "seconds": median(secs),
                         "flops": p.flops[name], "bytes": p.bytes[name]}
    cells = {}
    for key in runs[0][1].cells:
        cells[f"{key[0]}|{key[1]}"] = median([r[1].cells.get(key, 0.0) for r in runs])
    # per run, so that it is never negative (a sum of medians is not the median of sums)
    outside = median([r[0] - sum(r[1].seconds.values()) for r in runs])
    return {"total_s": total, "ops": ops, "cells": cells, "outside_ops_s": outside,
            "totals_s": [r[0] for r in runs]}


def analyse(result: dict, peaks: dict) -> None:
    """Adds per-op GFLOP/s, GB/s, intensity, roofline bound and share, in place."""
    total = result["total_s"]
    for row in result["ops"].values():
        s = max(row["seconds"], 1e-12)
        row["share"] = row["seconds"] / total
        row["gflops"] = row["flops"] / s / 1e9
        row["gbps"] = row["bytes"] / s / 1e9
        row["intensity"] = row["flops"] / row["bytes"] if row["bytes"] else 0.0
        if row["flops"]:
            row["bound_gflops"] = min(peaks["gflops"], row["intensity"] * peaks["gbps"])
            row["of_bound"] = row["gflops"] / row["bound_gflops"]
        else:
            row["bound_gbps"] = peaks["gbps"]
            row["of_bound"] = row["gbps"] / peaks["gbps"]
    flops = sum(r["flops"] for r in result["ops"].values())
    result["model_gflops"] = flops / total / 1e9
    result["tokens_per_s"] = result["batch"]["tokens"] / total


def run(model: str = MODEL, seq_lens=("128",), batch: int = 32, batch_tokens: int = 8192, repeats: int = 5,
        device: str = "cpu", dtype: str | None = None, quick: bool = False) -> dict:
    from tinyembed.engine import load_engine

    if quick:
        repeats, batch, batch_tokens = min(repeats, 2), min(batch, 8), min(batch_tokens, 2048)
    settings = {"model": model, "seq_lens": list(seq_lens), "batch": batch, "batch_tokens": batch_tokens,
                "repeats": repeats, "device": device, "dtype": dtype, "quick": quick}
    report = new_report("per-op and per-layer time of one batch, against measured peaks", settings)
    engine = load_engine(model, device=device, dtype=dtype)
    clock = "cuda" if device.startswith("cuda") else "wall"
    report["peaks"] = cuda_peaks(dtype or "float16") if clock == "cuda" else cpu_peaks()
    report["model_shape"] = {"layers": engine.spec.num_layers, "hidden": engine.spec.hidden_size,
                             "heads": engine.spec.num_heads, "family": engine.spec.family}
    report["profiles"] = {}
    for seq_len in seq_lens:
        seqs, info = make_batch(engine, seq_len, batch, batch_tokens)
        result = profile_batch(engine, seqs, repeats, clock)
        result["batch"] = info
        analyse(result, report["peaks"])
        report["profiles"][seq_len] = result
    return report


# -- output ---------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    peaks = report["peaks"]
    out = [f"Ceilings measured in this run: {peaks['gflops']:.0f} GFLOP/s ({peaks['how']}), "
           f"{peaks['gbps']:.1f} GB/s memory copy (read + write)."]
    for seq_len, p in report["profiles"].items():
        b = p["batch"]
        out.append("")
        out.append(f"**{seq_len if seq_len == 'mixed' else seq_len + ' tokens'}**: {b['sequences']} sequences, "
                   f"{b['tokens']:,} tokens; forward {p['total_s'] * 1000:.1f} ms (median of "
                   f"{report['settings']['repeats']}) = {p['tokens_per_s']:.0f} tokens/s, "
                   f"{p['model_gflops']:.0f} GFLOP/s over the whole pass.")
        out.append("")
        rows = []
        for name, r in sorted(p["ops"].items(), key=lambda kv: -kv[1]["seconds"]):
            rows.append([name, r["category"], r["calls"], fmt(r["seconds"] * 1000, ".1f"), fmt(100 * r["share"], ".0f") + "%",
                         fmt(r["flops"] / 1e9, ".2f"), fmt(r["bytes"] / 1e6, ".0f"), fmt(r["intensity"], ".1f"),
                         fmt(r["gflops"], ".0f"), fmt(r["gbps"], ".1f"), fmt(100 * r["of_bound"], ".0f") + "%"])
        rows.append(["(outside ops)", "", "", fmt(p["outside_ops_s"] * 1000, ".1f"),
                     fmt(100 * p["outside_ops_s"] / p["total_s"], ".0f") + "%", "", "", "", "", "", ""])
        out.append(table(["op", "category", "calls", "ms", "share", "GFLOP", "MB moved", "FLOP/B", "GFLOP/s", "GB/s",
                          "of roofline"], rows, "llrrrrrrrrr"))
        out.append("")
        out.append(layer_table(p))
    return "\n".join(out)


def layer_table(p: dict) -> str:
    layers = sorted({k.split("|")[0] for k in p["cells"] if k.startswith("layer ")}, key=lambda s: int(s.split()[1]))
    rows = []
    for layer in layers:
        values = [p["cells"].get(f"{layer}|{op}", 0.0) * 1000 for op in LAYER_OPS]
        rows.append([layer, *(fmt(v, ".2f") for v in values), fmt(sum(values), ".1f")])
    for label, op in (("embeddings", "embed"), ("pooling", "pool_normalize")):
        if f"{label}|{op}" in p["cells"]:
            rows.append([label, *([""] * len(LAYER_OPS)), fmt(p["cells"][f"{label}|{op}"] * 1000, ".2f")])
    return table(["ms", *LAYER_OPS, "total"], rows)


def plot(report: dict, directory: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    paths = []
    peaks = report["peaks"]
    colors = {"GEMM": "tab:blue", "attention": "tab:orange", "GELU": "tab:green", "LayerNorm": "tab:red",
              "other": "tab:gray"}
    # 1. roofline: ops with FLOPs on the roofline; memory-bound ops as GB/s bars
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    xs = np.logspace(-1, 3, 200)
    ax.plot(xs, np.minimum(peaks["gflops"], xs * peaks["gbps"]), color="black", lw=1.5)
    ax.text(xs[-1], peaks["gflops"] * 1.08, f"compute peak {peaks['gflops']:.0f} GFLOP/s", ha="right", fontsize=8)
    ax.text(0.12, 0.12 * peaks["gbps"] * 1.6, f"memory {peaks['gbps']:.0f} GB/s", fontsize=8, rotation=35)
    markers = {"16": "v", "128": "o", "512": "s", "mixed": "D"}
    for seq_len, p in report["profiles"].items():
        groups = {}  # linear + matmul are one point: "GEMM"
        for r in p["ops"].values():
            if r["flops"]:
                g = groups.setdefault(r["category"], [0.0, 0.0, 0.0])
                g[0] += r["flops"]
                g[1] += r["bytes"]
                g[2] += r["seconds"]
        for category, (flops, nbytes, seconds) in groups.items():
            x, y = flops / nbytes, flops / max(seconds, 1e-12) / 1e9
            ax.scatter(x, y, color=colors[category], marker=markers.get(seq_len, "o"), s=40, zorder=3)
            k = list(report["profiles"]).index(seq_len)
            if category == "GEMM":  # the GEMM points sit together under the peak: labels fan out to the left
                ax.annotate(f"GEMM @{seq_len}", (x, y), fontsize=7, xytext=(-95, -16 - 16 * k), textcoords="offset points",
                            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "gray"})
            else:
                ax.annotate(f"{category} @{seq_len}", (x, y), fontsize=7, xytext=(5, -3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("Roofline: GEMMs and attention (marker: tokens per sequence)")
    ax.set_ylim(1, peaks["gflops"] * 3)
    labels, values, cols = [], [], []
    for seq_len, p in report["profiles"].items():
        for name, r in p["ops"].items():
            if not r["flops"]:
                labels.append(f"{name}\n@{seq_len}")
                values.append(r["gbps"])
                cols.append(colors[r["category"]])
    bx.barh(range(len(values)), values, color=cols)
    bx.set_yticks(range(len(values)), labels, fontsize=7)
    bx.axvline(peaks["gbps"], color="black", lw=1.5)
    bx.text(peaks["gbps"], len(values) - 0.5, " copy peak", fontsize=8, va="top")
    bx.invert_yaxis()
    bx.set_xlabel("achieved GB/s")
    bx.set_title("Memory-bound ops")
    for a in (ax, bx):
        a.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path = directory / "profile_roofline.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    # 2. per-layer stacked time, one panel per sequence length
    n = len(report["profiles"])
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), dpi=110, squeeze=False)
    op_colors = {"qkv": "#1f77b4", "attention": "#ff7f0e", "attn_out": "#6baed6", "add_ln1": "#d62728",
                 "ffn_in": "#08519c", "gelu": "#2ca02c", "ffn_out": "#9ecae1", "add_ln2": "#ff9896"}
    for a, (seq_len, p) in zip(axes[0], report["profiles"].items()):
        layers = sorted({k.split("|")[0] for k in p["cells"] if k.startswith("layer ")}, key=lambda s: int(s.split()[1]))
        bottom = np.zeros(len(layers))
        for op in LAYER_OPS:
            vals = np.array([p["cells"].get(f"{layer}|{op}", 0.0) * 1000 for layer in layers])
            a.bar(range(len(layers)), vals, bottom=bottom, color=op_colors[op], label=op)
            bottom += vals
        a.set_xticks(range(len(layers)), [layer.split()[1] for layer in layers])
        a.set_xlabel("layer")
        a.set_ylabel("ms")
        a.set_title(f"{p['batch']['sequences']} x {seq_len} tokens" if seq_len != "mixed" else "mixed batch", fontsize=10)
        a.spines[["top", "right"]].set_visible(False)
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    fig.suptitle(f"Time per layer and op, {report['settings']['model']}", fontsize=11)
    fig.tight_layout()
    path = directory / "profile_layers.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="bundled name, model directory or cached HF id")
    parser.add_argument("--seq-len", default="128", help="comma-separated token counts and/or 'mixed'")
    parser.add_argument("--batch", type=int, default=32, help="sequences per batch (fixed lengths)")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="tokens in the batch (mixed)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default=None, help="GPU storage dtype")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot-dir", type=Path, help="write profile_roofline.png and profile_layers.png here")
    args = parser.parse_args()
    report = run(args.model, [s.strip() for s in args.seq_len.split(",")], args.batch, args.batch_tokens,
                 args.repeats, args.device, args.dtype, args.quick)
    if args.plot_dir:
        args.plot_dir.mkdir(parents=True, exist_ok=True)
        if not plot(report, args.plot_dir):
            print("plots skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else markdown(report))


if __name__ == "__main__":
    main()
