"""Question: how fast is tinyembed's numpy engine on a real-shape decoder embedder (Qwen3-
Embedding-0.6B: H 1024, 28 layers, 16/8 heads, head_dim 128, I 3072, V 151669) against
sentence-transformers (transformers, fp32) on this CPU, and what memory does each hold?

No model hub: the checkpoint is random-initialized by transformers from the real config and
saved (fp32 safetensors, ~2.4 GB) to a temporary directory, with a byte-level BPE tokenizer
trained on the bench corpus (template `$A <|endoftext|>`, like Qwen3-Embedding) and the
sentence-transformers files (last-token pooling, normalize). Random weights cost the same
FLOPs as trained ones. The directory is deleted at the end.

Two workloads, same token ids for both contenders: the mixed corpus (bench/corpus.py, cut at
--max-length tokens) and fixed 512-token inputs. Each timed pass runs in a fresh subprocess
after a warm-up; rounds alternate the contenders; medians and per-round ratios are printed,
with each subprocess's peak RSS and, for tinyembed, the peak RSS while loading against the
size of the float32 weights (the loader converts tensor by tensor).

    python -m bench.decoder                     # ~10 minutes on 2 cores
    python -m bench.decoder --texts 24 --fixed 2 --rounds 2
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

from bench.common import cpu_model
from bench.corpus import mixed_corpus

CONTENDERS = ("tinyembed", "sentence-transformers")
QWEN3_06B = dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                 rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True)


def build_model(directory: Path, max_length: int) -> None:
    """Random Qwen3-Embedding-0.6B-shaped sentence-transformers directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen3Config, Qwen3Model

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=16000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(mixed_corpus(3000, seed=1), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    write(directory / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
                                                "pad_token": "<|endoftext|>", "padding_side": "left"})
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = Qwen3Model(Qwen3Config(**QWEN3_06B))
    model.save_pretrained(directory, safe_serialization=True)
    del model
    write(directory / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    (directory / "1_Pooling").mkdir()
    (directory / "2_Normalize").mkdir()
    write(directory / "1_Pooling" / "config.json", {"word_embedding_dimension": 1024, "pooling_mode_lasttoken": True})
    write(directory / "sentence_bert_config.json", {"max_seq_length": max_length})


def write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def workload(directory: Path, name: str, args) -> list[list[int]]:
    """Token ids (specials included) both contenders run: from tinyembed's tokenizer."""
    from tinyembed.engine.families import read_spec
    from tinyembed.engine.text.tokenize import Tokenizer

    tokenizer = Tokenizer(read_spec(directory))
    if name == "mixed":
        return [s.tolist() for s in tokenizer.encode(mixed_corpus(args.texts), truncate=True)]
    stream = [t for s in tokenizer.encode(mixed_corpus(400), truncate=True) for t in s[:-1].tolist()]
    body = 511
    return [stream[i * body:(i + 1) * body] + [0] for i in range(args.fixed)]


def status_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries that across
    fork/exec, so a worker would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(args) -> None:
    directory = Path(args.dir)
    sequences = json.loads(Path(args.ids).read_text())
    before = status_kib("VmRSS")
    if args.worker == "tinyembed":
        import numpy as np

        from tinyembed.engine import load_engine

        engine = load_engine(str(directory))
        load_peak = status_kib("VmHWM")
        weights = sum(p.nbytes for p in engine.model.p.values())
        arrays = [np.asarray(s, dtype=np.int32) for s in sequences]
        engine.embed_sequences(arrays[:2])  # warm-up
        start = time.perf_counter()
        engine.embed_sequences(arrays, max_batch_tokens=args.batch_tokens)
        seconds = time.perf_counter() - start
        extra = {"load_peak_rss_mib": (load_peak - before) / 1024, "weights_mib": weights / 2**20}
    else:
        import torch
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(directory), device="cpu")
        tok = model.tokenizer
        # the same ids: decode is lossy, so feed ids straight into the model's forward
        features_of = lambda batch: tok.pad({"input_ids": batch}, return_tensors="pt")  # noqa: E731
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # as encode() sorts
        with torch.inference_mode():
            model(features_of(sequences[:2]))  # warm-up
            start = time.perf_counter()
            for i in range(0, len(order), args.st_batch_size):
                model(features_of([sequences[j] for j in order[i:i + args.st_batch_size]]))
            seconds = time.perf_counter() - start
        extra = {}
    peak = status_kib("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak / 1024, **extra}))


def measure_once(name: str, directory: Path, ids_file: Path, args) -> dict:
    cmd = [sys.executable, "-m", "bench.decoder", "--worker", name, "--dir", str(directory), "--ids", str(ids_file),
           "--batch-tokens", str(args.batch_tokens), "--st-batch-size", str(args.st_batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_workload(label: str, sequences: list[list[int]], directory: Path, args) -> dict:
    ids_file = directory / f"ids-{label}.json"
    ids_file.write_text(json.dumps(sequences))
    tokens = sum(map(len, sequences))
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for r in range(args.rounds):
        for name in CONTENDERS:
            result = measure_once(name, directory, ids_file, args)
            runs[name].append(result)
            print(f"  {label} round {r + 1} {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    out = {"texts": len(sequences), "tokens": tokens, "max_tokens": max(map(len, sequences)), "contenders": {}}
    for name, results in runs.items():
        good = [x for x in results if "error" not in x]
        if not good:
            out["contenders"][name] = {"error": results[0]["error"]}
            continue
        median_s = statistics.median(x["seconds"] for x in good)
        out["contenders"][name] = {"median_s": median_s, "tokens_per_s": tokens / median_s,
                                   "peak_rss_mib": max(x["peak_rss_mib"] for x in good),
                                   **{k: good[0][k] for k in ("load_peak_rss_mib", "weights_mib") if k in good[0]}}
    te, st = runs["tinyembed"], runs["sentence-transformers"]
    out["round_ratios"] = [s["seconds"] / t["seconds"] for t, s in zip(te, st) if "error" not in t and "error" not in s]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=48, help="mixed-corpus texts")
    parser.add_argument("--max-length", type=int, default=512, help="truncation of the mixed corpus")
    parser.add_argument("--fixed", type=int, default=4, help="512-token inputs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, default=4096, help="tinyembed tokens per batch")
    parser.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers batch size (its default)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.build:
        return build_model(Path(args.build), args.max_length)

    directory = Path(tempfile.mkdtemp(prefix="tinyembed-qwen3-0.6b-"))
    try:
        started = time.perf_counter()
        # in a subprocess: torch's init would otherwise sit in this process's memory
        subprocess.run([sys.executable, "-m", "bench.decoder", "--build", str(directory),
                        "--max-length", str(args.max_length)], check=True)
        print(f"built {directory} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        report = {"question": "Qwen3-Embedding-0.6B shape, CPU fp32: tinyembed vs sentence-transformers",
                  "cpu": cpu_model(), "settings": vars(args), "workloads": {}}
        for label in ("mixed", "fixed512"):
            report["workloads"][label] = run_workload(label, workload(directory, label if label == "mixed" else "fixed", args),
                                                      directory, args)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def print_report(report: dict) -> None:
    print(f"{report['question']}\nCPU: {report['cpu']}")
    for label, w in report["workloads"].items():
        print(f"\n{label}: {w['texts']} inputs, {w['tokens']} tokens (max {w['max_tokens']})")
        print(f"{'contender':<24}{'tokens/s':>10}{'median s':>10}{'peak RSS MiB':>14}")
        base = w["contenders"]["sentence-transformers"].get("tokens_per_s")
        for name, row in w["contenders"].items():
            if "error" in row:
                print(f"{name:<24}error: {row['error']}")
                continue
            print(f"{name:<24}{row['tokens_per_s']:>10.1f}{row['median_s']:>10.1f}{row['peak_rss_mib']:>14.0f}")
        te = w["contenders"]["tinyembed"]
        if base and "tokens_per_s" in te:
            print(f"ratio tinyembed / sentence-transformers: {te['tokens_per_s'] / base:.2f} (per round: "
                  + ", ".join(f"{x:.2f}" for x in w["round_ratios"]) + ")")
        if "load_peak_rss_mib" in te:
            print(f"tinyembed load: peak RSS {te['load_peak_rss_mib']:.0f} MiB for {te['weights_mib']:.0f} MiB of "
                  f"float32 weights ({te['load_peak_rss_mib'] / te['weights_mib']:.2f}x)")


if __name__ == "__main__":
    main()
