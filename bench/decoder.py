"""Question: how fast is tinyembed on a real-shape decoder embedder (Qwen3-Embedding-0.6B: H 1024,
28 layers, 16/8 heads, head_dim 128, I 3072, V 151669) on this CPU, in fp32 and with bf16
weights, against transformers fp32 (sdpa) on the same weights; do the bf16 vectors agree; and
what does loading a 4B-shaped bf16 checkpoint cost in memory against its file size?

No model hub: bench/decoder_model.py writes random bf16 checkpoints of the real shapes at bench
time (no torch; the 0.6B one in seconds, the 4B one, 8 GB, in about a minute) with a byte-level
BPE trained on the bench corpus. The three contenders run the very same weights:
  tinyembed-fp32   --precision fp32: the bf16 weights widened to float32 at load, BLAS sgemm
  tinyembed-bf16   --precision bf16: the weights stay memory-mapped, AVX512_BF16 GEMM
  transformers     AutoModel, dtype float32, attn_implementation sdpa, padded batches of 32
                   sorted by length (as sentence-transformers does), last token, normalize

Two workloads, same token ids for all: fixed 512-token inputs (--fixed, default 8) and the
mixed corpus (bench/corpus.py, --texts, cut at --max-length). Each timed pass runs in a fresh
subprocess after a warm-up; rounds alternate the contenders; medians and per-round ratios
against transformers (same round) are printed, with each worker's peak RSS and, for tinyembed,
the peak RSS while loading. Vectors of every pass are kept: min cosine of tinyembed-bf16 and
of transformers against tinyembed-fp32.

    flock /work/bench.lock python -m bench.decoder            # ~30 minutes on 2 busy cores
    python -m bench.decoder --fixed 2 --texts 12 --rounds 1 --no-big   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cpu_model, loadavg
from bench.corpus import mixed_corpus

CONTENDERS = ("tinyembed-fp32", "tinyembed-bf16", "transformers")
BASELINE = "transformers"


def workload(directory: Path, name: str, args) -> list[list[int]]:
    """Token ids (specials included) every contender runs: from tinyembed's tokenizer."""
    from tinyembed.engine.families import read_spec
    from tinyembed.engine.text.tokenize import Tokenizer

    tokenizer = Tokenizer(read_spec(directory))
    if name == "mixed":
        return [s.tolist() for s in tokenizer.encode(mixed_corpus(args.texts), truncate=True)]
    stream = [t for s in tokenizer.encode(mixed_corpus(400), truncate=True) for t in s[:-1].tolist()]
    body = 511
    return [stream[i * body:(i + 1) * body] + [0] for i in range(args.fixed)]  # 0: <|endoftext|>


def status_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries that across
    fork/exec, so a worker would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def load_model(directory: Path, precision: str):
    """The model alone: load_engine would also run the int8 calibration forward (engine/quantize.py,
    ~3000 tokens on a new model), which is neither the load nor the timed pass measured here."""
    from tinyembed.engine import Engine, make_ops
    from tinyembed.engine.families import read_spec

    return Engine(directory.name, read_spec(directory), make_ops("cpu"), precision)


def worker(args) -> None:
    import numpy as np

    directory = Path(args.dir)
    before = status_kib("VmRSS")
    if args.worker == "load":  # the 4B memory check: load, then one short input
        engine = load_model(directory, "bf16")
        load_peak = status_kib("VmHWM")
        vector = engine.embed_sequences([np.arange(5, 21, dtype=np.int32)])[0]
        print(json.dumps({"load_peak_rss_mib": (load_peak - before) / 1024, "peak_rss_mib": (status_kib("VmHWM") - before) / 1024,
                          "vector_norm": float(np.linalg.norm(vector)), "finite": bool(np.isfinite(vector).all())}))
        return
    sequences = json.loads(Path(args.ids).read_text())
    if args.worker.startswith("tinyembed"):
        engine = load_model(directory, args.worker.split("-")[1])
        load_peak = status_kib("VmHWM")
        arrays = [np.asarray(s, dtype=np.int32) for s in sequences]
        engine.embed_sequences(arrays[:1])  # warm-up
        start = time.perf_counter()
        vectors = engine.embed_sequences(arrays, max_batch_tokens=args.batch_tokens)
        seconds = time.perf_counter() - start
        extra = {"load_peak_rss_mib": (load_peak - before) / 1024, "kernels": engine.info.kernels}
    else:
        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="sdpa").eval()
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # as sentence-transformers sorts
        vectors = np.zeros((len(sequences), model.config.hidden_size), np.float32)

        def run(indices):
            longest = max(len(sequences[i]) for i in indices)
            ids = torch.zeros((len(indices), longest), dtype=torch.long)
            mask = torch.zeros((len(indices), longest), dtype=torch.long)
            for row, i in enumerate(indices):
                ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, :len(sequences[i])] = 1
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(indices)), mask.sum(1) - 1]
            vectors[indices] = torch.nn.functional.normalize(last, dim=-1).numpy()

        with torch.inference_mode():
            run(order[:1])  # warm-up
            start = time.perf_counter()
            for i in range(0, len(order), args.hf_batch_size):
                run(order[i:i + args.hf_batch_size])
            seconds = time.perf_counter() - start
        extra = {"torch_threads": torch.get_num_threads()}
    np.save(args.out, vectors)
    peak = status_kib("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak / 1024, **extra}))


def run_worker(name: str, directory: Path, args, ids_file: Path | None = None, out: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "bench.decoder", "--worker", name, "--dir", str(directory),
           "--batch-tokens", str(args.batch_tokens), "--hf-batch-size", str(args.hf_batch_size)]
    if ids_file is not None:
        cmd += ["--ids", str(ids_file), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def min_cosine(a, b) -> float:
    import numpy as np

    return float(np.min(np.sum(np.load(a) * np.load(b), axis=1)))


def run_workload(label: str, sequences: list[list[int]], directory: Path, args) -> dict:
    ids_file = directory / f"ids-{label}.json"
    ids_file.write_text(json.dumps(sequences))
    tokens = sum(map(len, sequences))
    contenders = [c for c in CONTENDERS if c in args.contenders.split(",")]
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    cosines: dict[str, list[float]] = {}
    for r in range(args.rounds):
        outs = {}
        for name in (contenders if r % 2 == 0 else contenders[::-1]):  # alternate who goes first
            outs[name] = directory / f"vectors-{label}-{name}.npy"
            result = run_worker(name, directory, args, ids_file, outs[name])
            result["loadavg"] = loadavg()[0]
            runs[name].append(result)
            print(f"  {label} round {r + 1} {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
        for name in contenders:
            if name != "tinyembed-fp32" and "tinyembed-fp32" in outs and "error" not in runs[name][-1]:
                cosines.setdefault(name, []).append(min_cosine(outs[name], outs["tinyembed-fp32"]))
    out = {"texts": len(sequences), "tokens": tokens, "max_tokens": max(map(len, sequences)), "contenders": {},
           "min_cosine_vs_tinyembed_fp32": {k: min(v) for k, v in cosines.items()}, "round_ratios": {}}
    for name, results in runs.items():
        good = [x for x in results if "error" not in x]
        if not good:
            out["contenders"][name] = {"error": results[0]["error"]}
            continue
        median_s = statistics.median(x["seconds"] for x in good)
        out["contenders"][name] = {"median_s": median_s, "tokens_per_s": tokens / median_s,
                                   "per_round_tokens_per_s": [tokens / x["seconds"] for x in good],
                                   "peak_rss_mib": max(x["peak_rss_mib"] for x in good),
                                   **{k: good[0][k] for k in ("load_peak_rss_mib", "kernels") if k in good[0]}}
        if name != BASELINE and BASELINE in runs:
            out["round_ratios"][name] = [b["seconds"] / t["seconds"] for t, b in zip(results, runs[BASELINE])
                                         if "error" not in t and "error" not in b]
    return out


def big_load(args) -> dict:
    """A 4B-shaped bf16 checkpoint: load peak RSS against the file's size (written lazily)."""
    from bench.decoder_model import write_model

    directory = Path(args.big_dir) if args.big_dir else Path(tempfile.mkdtemp(prefix="tinyembed-qwen3-4b-"))
    try:
        if not (directory / "model.safetensors").is_file():
            started = time.perf_counter()
            write_model(directory, "4B")
            print(f"wrote the 4B checkpoint in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        size = (directory / "model.safetensors").stat().st_size
        result = run_worker("load", directory, args)
        result["file_mib"] = size / 2**20
        if "load_peak_rss_mib" in result:
            result["load_peak_over_file"] = result["load_peak_rss_mib"] / result["file_mib"]
            result["peak_over_file"] = result["peak_rss_mib"] / result["file_mib"]
        return result
    finally:
        if not args.big_dir:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=48, help="mixed-corpus texts")
    parser.add_argument("--max-length", type=int, default=512, help="truncation of the mixed corpus")
    parser.add_argument("--fixed", type=int, default=8, help="512-token inputs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--batch-tokens", type=int, default=4096, help="tinyembed tokens per batch")
    parser.add_argument("--hf-batch-size", type=int, default=32, help="transformers batch size (sentence-transformers' default)")
    parser.add_argument("--no-big", action="store_true", help="skip the 4B-shaped bf16 load check")
    parser.add_argument("--big-dir", help="keep the 4B checkpoint here (written when absent) instead of a temp dir")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=(*CONTENDERS, "load"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from bench.decoder_model import write_model

    directory = Path(tempfile.mkdtemp(prefix="tinyembed-qwen3-0.6b-"))
    report = {"question": "Qwen3-Embedding-0.6B shape on the CPU: tinyembed fp32 / bf16 vs transformers fp32 (sdpa)",
              "cpu": cpu_model(), "settings": vars(args), "workloads": {}, "loadavg_before": loadavg()}
    try:
        started = time.perf_counter()
        write_model(directory, "0.6B", args.max_length)
        report["file_mib"] = (directory / "model.safetensors").stat().st_size / 2**20
        print(f"wrote {directory} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        for label in ("fixed512", "mixed"):
            ids = workload(directory, "fixed" if label == "fixed512" else "mixed", args)
            report["workloads"][label] = run_workload(label, ids, directory, args)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if not args.no_big:
        report["big_4b_bf16"] = big_load(args)
    report["loadavg_after"] = loadavg()
    print(json.dumps(report, indent=2) if args.json else render(report))


def render(report: dict) -> str:
    lines = [report["question"], f"CPU: {report['cpu']}; loadavg before {report['loadavg_before']}, "
             f"after {report['loadavg_after']}; 0.6B bf16 file {report['file_mib']:.0f} MiB"]
    for label, w in report["workloads"].items():
        lines += ["", f"{label}: {w['texts']} inputs, {w['tokens']} tokens (max {w['max_tokens']})",
                  f"{'contender':<18}{'tokens/s':>10}{'median s':>10}{'peak RSS MiB':>14}{'load RSS MiB':>14}  per round tok/s"]
        for name, row in w["contenders"].items():
            if "error" in row:
                lines.append(f"{name:<18}error: {row['error']}")
                continue
            load = f"{row['load_peak_rss_mib']:.0f}" if "load_peak_rss_mib" in row else "-"
            lines.append(f"{name:<18}{row['tokens_per_s']:>10.1f}{row['median_s']:>10.1f}{row['peak_rss_mib']:>14.0f}"
                         f"{load:>14}  " + ", ".join(f"{x:.1f}" for x in row["per_round_tokens_per_s"]))
        for name, ratios in w["round_ratios"].items():
            if ratios:
                lines.append(f"{name} / {BASELINE}: median {statistics.median(ratios):.2f} (per round: "
                             + ", ".join(f"{x:.2f}" for x in ratios) + ")")
        for name, cos in w["min_cosine_vs_tinyembed_fp32"].items():
            lines.append(f"min cosine {name} vs tinyembed-fp32: {cos:.6f}")
    big = report.get("big_4b_bf16")
    if big:
        if "error" in big:
            lines += ["", f"4B bf16 load: error: {big['error']}"]
        else:
            lines += ["", f"4B bf16 load: file {big['file_mib']:.0f} MiB; load peak RSS {big['load_peak_rss_mib']:.0f} MiB "
                      f"({big['load_peak_over_file']:.3f}x the file); peak after one 16-token input "
                      f"{big['peak_rss_mib']:.0f} MiB ({big['peak_over_file']:.2f}x); vector finite {big['finite']}, "
                      f"norm {big['vector_norm']:.6f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
