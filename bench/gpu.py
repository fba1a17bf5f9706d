"""Question: how fast is tinyembed's CUDA path against PyTorch's best on the same GPU, and how
close is each kernel to what the GPU can do?

One run on one GPU, unattended, in well under 8 minutes on an H100:
1. Ceilings, measured: device-to-device copy bandwidth (bytes read + written) and the cuBLAS
   GEMM rate (8192^3, the compute dtype, fp32 accumulation).
2. Kernel table: every kernel, fast and naive, on a bge-base batch of 64 x 512 tokens: achieved
   GB/s (memory-bound ops) or TFLOP/s (attention, GEMMs) against those ceilings.
3. Throughput: tinyembed vs `transformers` (fp16, sdpa attention) and sentence-transformers
   (fp16) on random-initialized bge-base (BERT 12 x 768) and bge-m3 (XLM-R 24 x 1024) shapes,
   at 32, 128, 512 tokens per input and on a mixed-length corpus (bench/corpus.py): tokens/s,
   ratio to tinyembed, and model FLOP utilization against the measured GEMM peak.
4. Latency of a single 16-token request: GPU time (events) and wall time, tinyembed vs transformers.

Every contender gets the same token ids (the BERT tokenizer of the bundled MiniLM package; the
weights are random, so any valid ids will do); each runs in its own subprocess, is warmed up,
then timed over --repeats passes (median). The peer is given its best case: inputs sorted by
length, batches of at most --batch-tokens padded tokens. sentence-transformers is timed through
its public encode(texts), so its row includes its own tokenization (tinyembed's "texts" row does
the same). Random weights and vectors are written to a temporary folder; nothing is downloaded.

    python -m bench.gpu                  # tables
    python -m bench.gpu --json           # one JSON object on the last line
    python -m bench.gpu --smoke          # tiny shapes on the CPU: checks this script, not speed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/gpu.py` as well as `python -m bench.gpu`
    sys.path.insert(0, str(ROOT))

from bench.corpus import mixed_corpus  # noqa: E402
from bench.random_model import SHAPES, flops_per_token, workload_flops, write_random_model  # noqa: E402,F401

LENGTHS = (32, 128, 512)
CONTENDERS = ("tinyembed", "transformers", "sentence-transformers")
CHECK = 32  # vectors of the mixed corpus every contender returns: same weights, so they must agree


# -- workloads ---------------------------------------------------------------------------------
def tokenizer_dir() -> Path:
    """The BERT tokenizer of all-MiniLM-L6-v2: the bundled package, else the local HF cache."""
    from tinyembed.common.errors import TinyEmbedError
    from tinyembed.engine.checkpoints.registry import resolve

    try:
        return resolve("all-MiniLM-L6-v2")
    except TinyEmbedError:
        return resolve("sentence-transformers/all-MiniLM-L6-v2")


def workloads(total_tokens: int, smoke: bool) -> dict[str, dict]:
    """name -> {"ids": token-id lists, "texts": matching texts, "max_len": int}."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir() / "tokenizer.json"))
    tok.no_padding()
    texts = mixed_corpus(400 if smoke else 3000)
    out = {}
    stream = []
    for enc in tok.encode_batch(texts):
        stream.extend(enc.ids[1:-1])
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    for length in LENGTHS:
        n = max(1, total_tokens // length)
        body = length - 2
        starts = [(i * body) % (len(stream) - body) for i in range(n)]
        ids = [[cls_id] + stream[a:a + body] + [sep_id] for a in starts]
        out[f"len{length}"] = {"ids": ids, "texts": [tok.decode(s[1:-1]) for s in ids], "max_len": length}
    tok.enable_truncation(512)
    mixed, budget = [], total_tokens
    for text, enc in zip(texts, tok.encode_batch(texts), strict=True):
        if budget <= 0:
            break
        mixed.append((text, enc.ids))
        budget -= len(enc.ids)
    out["mixed"] = {"ids": [m[1] for m in mixed], "texts": [m[0] for m in mixed], "max_len": 512}
    return out


# -- contenders (each in its own subprocess) -----------------------------------------------------
def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: compilation, cuBLAS heuristics, allocator growth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # every contender returns host arrays: the GPU is done when it returns
        times.append(time.perf_counter() - start)
    return times


def run_tinyembed(model_dir: Path, work: dict, args) -> dict:
    from tinyembed.engine import load_engine

    engine = load_engine(str(model_dir), device=args.device, dtype=args.dtype)
    result = {}
    for name, w in work.items():
        seqs = [np.asarray(s, np.int32) for s in w["ids"]]
        result[name] = _timed(lambda seqs=seqs: engine.embed_sequences(seqs, max_batch_tokens=args.batch_tokens),
                              args.repeats)
    texts = work["mixed"]["texts"]
    result["mixed:texts"] = _timed(lambda: engine.embed_sequences(
        engine.tokenizer.encode(texts, truncate=True), max_batch_tokens=args.batch_tokens), args.repeats)
    clock = cupy_clock(engine.model.ops.stream) if args.device != "cpu" else None
    result["latency16"] = latency(lambda ids: engine.embed(engine.pack([ids])), args, clock)
    checks = check_inputs(work)
    result["check"] = engine.embed_sequences(checks["mixed"]).tolist()
    short = np.concatenate([engine.embed_sequences([q]) for q in checks["short"]])
    if args.device != "cpu":  # the same engine with CUDA graphs and overlapped uploads switched on
        result.update(run_tinyembed_fast_paths(model_dir, work, args, checks,
                                               {"mixed": np.asarray(result["check"]), "short": short}))
    return result


def check_inputs(work: dict) -> dict:
    """The agreement inputs: the first mixed-corpus texts, and 16-token pieces of them sent one at
    a time (each a single-request batch: the CUDA graph path)."""
    mixed = [np.asarray(s, np.int32) for s in work["mixed"]["ids"][:CHECK]]
    return {"mixed": mixed, "short": [s[:16] for s in mixed]}


def run_tinyembed_fast_paths(model_dir: Path, work: dict, args, checks: dict, eager: dict) -> dict:
    """Mixed corpus with overlapped uploads, 16-token latency with CUDA graphs, and the lowest
    cosine to the eager engine's vectors (both are off by default: here is where they are measured)."""
    from tinyembed.engine import load_engine

    os.environ.update(TINYEMBED_CUDA_GRAPHS="1", TINYEMBED_CUDA_OVERLAP="1")
    engine = load_engine(str(model_dir), device=args.device, dtype=args.dtype)
    seqs = [np.asarray(s, np.int32) for s in work["mixed"]["ids"]]
    out = {"mixed+overlap": _timed(lambda: engine.embed_sequences(seqs, max_batch_tokens=args.batch_tokens),
                                   args.repeats)}
    out["latency16:graphs"] = latency(lambda ids: engine.embed(engine.pack([ids])), args,
                                      cupy_clock(engine.model.ops.stream))
    mixed = engine.embed_sequences(checks["mixed"])
    short = np.concatenate([engine.embed_sequences([q]) for q in checks["short"]])
    out["fast_paths_min_cosine"] = float(min((mixed * eager["mixed"]).sum(1).min(), (short * eager["short"]).sum(1).min()))
    out["graph_replays"] = engine.model.graphs.replays if engine.model.graphs is not None else 0
    return out


def _torch_dtype(args):
    import torch

    return torch.float16 if args.device != "cpu" else torch.float32


def run_transformers(model_dir: Path, work: dict, args) -> dict:
    import torch
    from transformers import AutoModel

    device = "cuda" if args.device != "cpu" else "cpu"
    try:
        model = AutoModel.from_pretrained(str(model_dir), dtype=_torch_dtype(args), attn_implementation="sdpa",
                                          add_pooling_layer=False)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = AutoModel.from_pretrained(str(model_dir), torch_dtype=_torch_dtype(args), attn_implementation="sdpa",
                                          add_pooling_layer=False)
    model = model.to(device).eval()
    pad = model.config.pad_token_id or 0

    @torch.inference_mode()
    def embed(seqs: list[list[int]]) -> np.ndarray:
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # the peer's best case
        out = [None] * len(seqs)
        i = 0
        while i < len(order):
            width = len(seqs[order[i]])
            batch = order[i:i + max(1, args.batch_tokens // width)]
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, j in enumerate(batch):
                ids[row, :len(seqs[j])] = torch.tensor(seqs[j])
                mask[row, :len(seqs[j])] = 1
            hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            vectors = torch.nn.functional.normalize(hidden[:, 0].float(), dim=-1).cpu().numpy()  # CLS
            for row, j in enumerate(batch):
                out[j] = vectors[row]
            i += len(batch)
        return np.stack(out)

    result = {name: _timed(lambda ids=w["ids"]: embed(ids), args.repeats) for name, w in work.items()}
    result["check"] = embed(work["mixed"]["ids"][:CHECK]).tolist()
    result["latency16"] = latency(lambda ids: embed([ids.tolist()]), args, torch_clock() if device == "cuda" else None)
    return result


def run_sentence_transformers(model_dir: Path, work: dict, args) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if args.device != "cpu" else "cpu"
    kwargs = {"attn_implementation": "sdpa"}
    try:
        model = SentenceTransformer(str(model_dir), device=device, model_kwargs={"dtype": _torch_dtype(args), **kwargs})
    except TypeError:
        model = SentenceTransformer(str(model_dir), device=device,
                                    model_kwargs={"torch_dtype": _torch_dtype(args), **kwargs})
    del torch
    result = {}
    for name, w in work.items():
        model.max_seq_length = w["max_len"]
        batch = max(1, args.batch_tokens // w["max_len"]) if name != "mixed" else 128
        texts = w["texts"]
        result[name] = _timed(lambda texts=texts, batch=batch: model.encode(
            texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False),
            args.repeats)
        # its tokens: what its own tokenizer makes of the texts, truncated as it truncates
        result[name + ":tokens"] = int(model.tokenize(texts)["attention_mask"].sum())
    model.max_seq_length = 512
    result["check"] = model.encode(work["mixed"]["texts"][:CHECK], normalize_embeddings=True).tolist()
    return result


def latency(fn, args, gpu_clock=None) -> dict:
    """A single 16-token request. Wall time: the caller's view, launches and Python included.
    GPU time: the same request enqueued behind a ~50 ms spinning kernel, so that every launch is
    queued before the first runs and the events around it time the GPU's work alone (plus the
    final copy to the host). `gpu_clock` is (spin(), start_event(), end_event_seconds())."""
    ids = np.arange(1000, 1016, dtype=np.int32)
    for _ in range(10):
        fn(ids)
    walls = []
    for _ in range(args.latency_repeats):
        t0 = time.perf_counter()
        fn(ids)  # returns host vectors: the GPU is done
        walls.append(time.perf_counter() - t0)
    out = {"wall_ms": 1e3 * statistics.median(walls)}
    if gpu_clock is not None:
        spin, start, stop = gpu_clock
        gpus = []
        for _ in range(min(args.latency_repeats, 20)):
            spin()
            begin = start()
            fn(ids)
            gpus.append(stop(begin))
        out["gpu_ms"] = 1e3 * statistics.median(gpus)
    return out


def cupy_clock(stream):
    import cupy as cp

    spin = cp.RawKernel(r"""extern "C" __global__ void spin(long long cycles) {
        long long t0 = clock64(); while (clock64() - t0 < cycles) {} }""", "spin")

    def start():
        event = cp.cuda.Event()
        event.record(stream)
        return event

    def stop(begin):
        end = cp.cuda.Event()
        end.record(stream)
        end.synchronize()
        return cp.cuda.get_elapsed_time(begin, end) / 1e3

    def run_spin():
        with stream:
            spin((1,), (1,), (np.int64(100_000_000),))

    return run_spin, start, stop


def torch_clock():
    import torch

    def start():
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(begin):
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3

    return (lambda: torch.cuda._sleep(100_000_000)), start, stop


RUNNERS = {"tinyembed": run_tinyembed, "transformers": run_transformers, "sentence-transformers": run_sentence_transformers}


def worker(args) -> None:
    """Subprocess entry: one contender on one model; prints one JSON line."""
    work = workloads(args.tokens, args.smoke)
    result = RUNNERS[args.worker](Path(args.model_dir), work, args)
    print(json.dumps(result))


def measure(contender: str, model_dir: Path, args) -> dict:
    cmd = [sys.executable, "-m", "bench.gpu", "--worker", contender, "--model-dir", str(model_dir),
           "--tokens", str(args.tokens), "--repeats", str(args.repeats), "--batch-tokens", str(args.batch_tokens),
           "--device", args.device, "--dtype", args.dtype, "--latency-repeats", str(args.latency_repeats)]
    if args.smoke:
        cmd.append("--smoke")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYEMBED_CUDA_")}  # eager unless asked
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="true")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"[{contender}] stopped after its {args.timeout} s limit", file=sys.stderr)
        return {"error": f"timeout after {args.timeout} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        print(f"[{contender}] failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
        return {"error": tail.strip().splitlines()[-1] if tail.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- ceilings and kernels (CuPy, in this process) -------------------------------------------------
def _gpu_seconds(fn, stream, warmup: int = 3, reps: int = 20) -> float:
    """Median time of fn() between CUDA events on `stream`."""
    import cupy as cp

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return statistics.median(times)


def ceilings(dtype: str) -> tuple[str, dict]:
    """The device's name, its copy bandwidth (GB/s, read + write) and cuBLAS GEMM rate (TFLOP/s)."""
    import cupy as cp

    from tinyembed.engine.ops.cuda_ops import CudaOps

    ops = CudaOps(0, dtype)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    n = 1 << 30
    a, b = cp.ones(n, cp.uint8), cp.empty(n, cp.uint8)
    copy = _gpu_seconds(lambda: cp.cuda.runtime.memcpyAsync(b.data.ptr, a.data.ptr, n, 3, ops.stream.ptr), ops.stream)
    a = b = None  # noqa: F841  (free 2 GiB before the GEMM)
    size = 8192
    x = ops.from_float32(cp.random.standard_normal((size, size), dtype=cp.float32))
    w = ops.from_float32(cp.random.standard_normal((size, size), dtype=cp.float32))
    gemm = _gpu_seconds(lambda: ops.matmul(x, w), ops.stream, reps=10)
    cp.get_default_memory_pool().free_all_blocks()
    return name, {"copy_gbps": 2 * n / copy / 1e9, "gemm_tflops": 2 * size**3 / gemm / 1e12}


def kernel_table(dtype: str, ceiling: dict) -> list[dict]:
    """Each kernel (fast and naive) on a bge-base batch of 64 x 512 tokens, against the ceilings."""
    import cupy as cp

    rows = []
    for version in ("fast", "naive"):
        rows += _kernel_rows(dtype, version, ceiling)
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def _kernel_rows(dtype: str, version: str, ceiling: dict) -> list[dict]:
    import cupy as cp

    from tinyembed.engine.families.bert import Batch
    from tinyembed.engine.ops.cuda_ops import CudaOps

    h, inner, heads, vocab, seqs, length = 768, 3072, 12, 30522, 64, 512
    batch = Batch.pack([np.random.default_rng(i).integers(0, vocab, length) for i in range(seqs)])
    tokens = batch.num_tokens
    ops = CudaOps(0, dtype, kernels=version)
    size = np.dtype(ops.storage).itemsize

    def rand(*shape):
        return ops.from_float32(cp.random.standard_normal(shape, dtype=cp.float32))

    def vec(n, center=0.0):
        return cp.random.standard_normal(n, dtype=cp.float32) * 0.1 + center

    ids, positions, cu = ops.upload_batch(batch)
    word, position, x, x2 = rand(vocab, h), rand(512, h), rand(tokens, h), rand(tokens, h)
    y, qkv = rand(tokens, inner), rand(tokens, 3 * h)
    b, b3, bi, ln_w, ln_b = vec(h), vec(3 * h), vec(inner), vec(h, 1.0), vec(h)
    # (name, call, bytes it must move, FLOPs it must do)
    cases = [
        ("embed (gather + LayerNorm)", lambda: ops.embed(ids, positions, word, position, b, ln_w, ln_b, 1e-12),
         3 * tokens * h * size, None),
        ("bias_gelu (T x 3072)", lambda: ops.bias_gelu(y, bi), 2 * tokens * inner * size, None),
        ("bias_add (T x 2304, linear)", lambda: ops._bias_epilogue("bias_add", qkv, b3), 2 * tokens * 3 * h * size, None),
        ("bias_residual_layernorm (T x 768)", lambda: ops.bias_residual_layernorm(x2, b, x, ln_w, ln_b, 1e-12),
         3 * tokens * h * size, None),
        ("attention (64 x 512, 12 x 64)", lambda: ops.attention(qkv, cu, length, heads), 4 * tokens * h * size,
         4 * seqs * length**2 * h),
        ("pool_normalize mean", lambda: ops.pool_normalize(x, cu, "mean"), tokens * h * size, None),
    ]
    if version == "fast":
        wq, wi, wo = rand(h, 3 * h), rand(h, inner), rand(inner, h)
        cases += [
            ("cuBLAS QKV (T x 768 x 2304)", lambda: ops.matmul(x, wq), None, 2 * tokens * h * 3 * h),
            ("cuBLAS FFN in (T x 768 x 3072)", lambda: ops.matmul(x, wi), None, 2 * tokens * h * inner),
            ("cuBLAS FFN out (T x 3072 x 768)", lambda: ops.matmul(y, wo), None, 2 * tokens * inner * h),
        ]
    rows = []
    for kernel, fn, nbytes, flops in cases:
        seconds = _gpu_seconds(fn, ops.stream, reps=10 if version == "naive" else 20)
        row = {"kernel": kernel, "version": "cuBLAS" if "cuBLAS" in kernel else version, "us": seconds * 1e6}
        if nbytes is not None:
            row["gbps"] = nbytes / seconds / 1e9
            row["fraction"] = row["gbps"] / ceiling["copy_gbps"]
        if flops is not None:  # compute-bound: the fraction is of the GEMM peak
            row["tflops"] = flops / seconds / 1e12
            row["fraction"] = row["tflops"] / ceiling["gemm_tflops"]
        rows.append(row)
    return rows


# -- main ----------------------------------------------------------------------------------------
def throughput_rows(model: str, config: dict, results: dict, work: dict, gemm_peak: float | None) -> list[dict]:
    rows = []
    for name, w in work.items():
        lengths = [len(s) for s in w["ids"]]
        tokens, flops = sum(lengths), workload_flops(config, lengths)
        base = None
        for contender in CONTENDERS:
            times = results.get(contender, {}).get(name)
            if not times:
                continue
            t = statistics.median(times)
            n_tokens = results[contender].get(name + ":tokens", tokens)
            row = {"model": model, "workload": name, "contender": contender, "tokens": n_tokens,
                   "seconds": t, "tokens_per_s": n_tokens / t}
            base = row["tokens_per_s"] if contender == "tinyembed" else base
            row["ratio"] = base / row["tokens_per_s"] if base else None  # tinyembed speed-up over it
            if gemm_peak:
                row["mfu"] = flops / t / gemm_peak
            rows.append(row)
        times = results.get("tinyembed", {}).get(name + "+overlap")
        if times:
            t = statistics.median(times)
            rows.append({"model": model, "workload": name + " (overlap)", "contender": "tinyembed", "tokens": tokens,
                         "seconds": t, "tokens_per_s": tokens / t, "ratio": None})
        times = results.get("tinyembed", {}).get(name + ":texts")
        if times:
            t = statistics.median(times)
            rows.append({"model": model, "workload": name + " (texts)", "contender": "tinyembed", "tokens": tokens,
                         "seconds": t, "tokens_per_s": tokens / t, "ratio": None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--only", default="kernels,models,latency", help="comma list of kernels,models,latency")
    parser.add_argument("--models", default="bge-base,bge-m3")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--tokens", type=int, default=131072, help="tokens per workload pass")
    parser.add_argument("--batch-tokens", type=int, default=32768, help="tokens per batch (padded, for the peers)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-repeats", type=int, default=50)
    parser.add_argument("--timeout", type=int, default=240, help="seconds per contender subprocess")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list (tinyembed first)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script only")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.smoke:
        args.device, args.dtype, args.tokens, args.repeats = "cpu", "float32", 2048, 1
        args.latency_repeats, args.only = 3, "models,latency"
        args.models = ",".join(m for m in args.models.split(",") if m.startswith("smoke-")) or "smoke-bert,smoke-xlmr"
    contenders = [c for c in CONTENDERS if c in args.contenders.split(",")]
    only = set(args.only.split(","))
    report = {"device": None, "dtype": args.dtype, "ceilings": {}, "kernels": [], "throughput": [], "latency": [],
              "agreement": []}
    started = time.perf_counter()

    if args.device != "cpu":
        report["device"], report["ceilings"] = ceilings(args.dtype)
        if "kernels" in only:
            report["kernels"] = kernel_table(args.dtype, report["ceilings"])
    gemm_peak = report["ceilings"].get("gemm_tflops", 0) * 1e12 or None

    if only & {"models", "latency"}:
        work = workloads(args.tokens, args.smoke)
        with tempfile.TemporaryDirectory(prefix="tinyembed-bench-") as tmp:
            for model in args.models.split(","):
                config = SHAPES[model]
                model_dir = write_random_model(Path(tmp) / model, config, tokenizer_dir=tokenizer_dir(),
                                               max_seq_length=512)
                results = {c: measure(c, model_dir, args) for c in contenders}
                report["throughput"] += throughput_rows(model, config, results, work, gemm_peak)
                mine = np.asarray(results.get("tinyembed", {}).get("check", []))
                mine_fast = results.get("tinyembed", {}).get("fast_paths_min_cosine")
                if mine_fast is not None:
                    report["agreement"].append({"model": model, "contender": "tinyembed graphs+overlap",
                                                "min_cosine": mine_fast,
                                                "graph_replays": results.get("tinyembed", {}).get("graph_replays")})
                if "latency16:graphs" in results.get("tinyembed", {}):
                    report["latency"].append({"model": model, "contender": "tinyembed graphs",
                                              **results.get("tinyembed", {})["latency16:graphs"]})
                for c in contenders:
                    theirs = np.asarray(results[c].get("check", []))
                    if c != "tinyembed" and mine.shape == theirs.shape and mine.size:
                        report["agreement"].append({"model": model, "contender": c,
                                                    "min_cosine": float((mine * theirs).sum(1).min())})
                    if "latency16" in results[c]:
                        report["latency"].append({"model": model, "contender": c, **results[c]["latency16"]})
                    if "error" in results[c]:
                        report.setdefault("errors", []).append({"model": model, "contender": c, "error": results[c]["error"]})
                shutil.rmtree(model_dir)
    report["wall_s"] = time.perf_counter() - started
    report["goals"] = goals(report)
    print_report(report)
    if args.json:
        print(json.dumps(report))


def goals(r: dict) -> list[dict]:
    """Issue 16's goals on an H100/H200, bge-base shape, from this run's rows (None: not measured)."""
    def rate(workload, contender="tinyembed"):
        rows = [t for t in r["throughput"] if t["model"] == "bge-base" and t["contender"] == contender
                and t["workload"] == workload]
        return rows[0]["tokens_per_s"] if rows else None

    mine_512, mine_mixed, peer_mixed = rate("len512"), rate("mixed"), rate("mixed", "transformers")
    gpu_ms = [t["gpu_ms"] for t in r["latency"] if t["model"] == "bge-base" and t["contender"].startswith("tinyembed")
              and "gpu_ms" in t]
    out = [("tokens/s at length 512 >= 2.0M", mine_512, mine_512 and mine_512 >= 2.0e6),
           ("tokens/s on the mixed corpus (mean ~54 tokens) >= 1.5M", mine_mixed, mine_mixed and mine_mixed >= 1.5e6),
           ("mixed corpus >= 2x transformers fp16 sdpa", mine_mixed and peer_mixed and mine_mixed / peer_mixed,
            mine_mixed and peer_mixed and mine_mixed / peer_mixed >= 2.0),
           ("16-token request <= 1 ms of GPU time (best of eager, graphs)", min(gpu_ms) if gpu_ms else None,
            bool(gpu_ms) and min(gpu_ms) <= 1.0)]
    return [{"goal": g, "value": v, "met": bool(m) if v is not None else None} for g, v, m in out]


def print_report(r: dict) -> None:
    print(f"device: {r['device'] or 'cpu (smoke)'}   dtype: {r['dtype']}")
    c = r["ceilings"]
    if c:
        print(f"ceilings: copy {c['copy_gbps']:.0f} GB/s (read+write), cuBLAS {r['dtype']} GEMM "
              f"{c['gemm_tflops']:.0f} TFLOP/s (8192^3)")
    if r["kernels"]:
        print(f"\n{'kernel':34} {'version':7} {'time us':>9} {'achieved':>14} {'of ceiling':>10}")
        for k in r["kernels"]:
            unit = f"{k['tflops']:.1f} TFLOP/s" if "tflops" in k else f"{k['gbps']:.0f} GB/s"
            print(f"{k['kernel']:34} {k['version']:7} {k['us']:9.1f} {unit:>14} {k['fraction']:10.0%}")
    if r["throughput"]:
        print(f"\n{'model':9} {'workload':15} {'contender':22} {'tokens/s':>12} {'tinyembed x':>11} {'MFU':>6}")
        for t in r["throughput"]:
            ratio = f"{t['ratio']:.2f}" if t.get("ratio") else ""
            mfu = f"{t['mfu']:.0%}" if t.get("mfu") else ""
            print(f"{t['model']:9} {t['workload']:15} {t['contender']:22} {t['tokens_per_s']:12,.0f} {ratio:>11} {mfu:>6}")
    if r["latency"]:
        print(f"\n16-token single request: {'model':9} {'contender':22} {'wall ms':>8} {'GPU ms':>8}")
        for t in r["latency"]:
            gpu = f"{t['gpu_ms']:.2f}" if "gpu_ms" in t else ""
            print(f"{'':25}{t['model']:9} {t['contender']:22} {t['wall_ms']:8.2f} {gpu:>8}")
    for a in r["agreement"]:
        print(f"same weights, {CHECK} mixed-corpus vectors: tinyembed vs {a['contender']} ({a['model']}): "
              f"min cosine {a['min_cosine']:.6f}")
    for e in r.get("errors", []):
        print(f"ERROR {e['model']} {e['contender']}: {e['error']}")
    for g in r.get("goals", []):
        verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        value = "" if g["value"] is None else f" ({g['value']:,.3f})" if g["value"] < 100 else f" ({g['value']:,.0f})"
        print(f"goal: {g['goal']}: {verdict}{value}")
    print(f"\nwall time {r['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
