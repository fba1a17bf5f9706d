"""Question: does `tinyembed embed INPUT -o OUTPUT` (bulk mode) run as fast as the engine itself?

Same texts (bench.corpus.mixed_corpus), same model, same truncation (256) and batch tokens,
same machine, one run. Contenders, each run in a fresh subprocess, interleaved
(engine, bulk, cli, engine, bulk, cli, ...) so that a change in the machine's load hits all
of them alike; the median of --repeats counts:

    engine  load_engine; time tokenizer.encode(texts) + embed_sequences(...), as bench/engine.py
    bulk    the same engine; time bulk mode end to end on a text file of the texts -> .npy:
            fingerprint, read, tokenize (a chunk ahead), embed, write, fsync per chunk, rename
    cli     wall time of the whole command `python -m tinyembed.cli embed IN -o OUT.npy`
            (interpreter start and model load included: what a user waits for)

Tokens are the model's real tokens after truncation, counted once. The ratio column is each
contender's tokens/s over the engine's; the goal for bulk is >= 0.95.

    python -m bench.bulk                 # table
    python -m bench.bulk --json          # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "all-MiniLM-L6-v2"
CONTENDERS = ("engine", "bulk", "cli")
ROOT = Path(__file__).resolve().parents[1]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def write_corpus(path: Path, n: int) -> list[str]:
    from bench.corpus import mixed_corpus

    # one text per line: newlines inside a docstring become spaces (the bulk input is lines)
    texts = [" ".join(t.split()) for t in mixed_corpus(n)]
    path.write_text("\n".join(texts) + "\n")
    return texts


def run_engine(corpus: Path, batch_tokens: int) -> float:
    from tinyembed.engine import load_engine

    texts = corpus.read_text().splitlines()
    engine = load_engine(MODEL)
    engine.embed_sequences(engine.tokenizer.encode(texts[:64], truncate=True))  # warm-up
    start = time.perf_counter()
    engine.embed_sequences(engine.tokenizer.encode(texts, truncate=True), max_batch_tokens=batch_tokens)
    return time.perf_counter() - start


def run_bulk(corpus: Path, batch_tokens: int, workdir: Path) -> float:
    from tinyembed.jobs import bulk
    from tinyembed import cli
    from tinyembed.engine import load_engine

    engine = load_engine(MODEL)
    warm = workdir / "warm.txt"
    warm.write_text("\n".join(corpus.read_text().splitlines()[:64]) + "\n")
    parse = cli.build_parser().parse_args
    bulk.run(parse(["embed", str(warm), "-o", str(workdir / "warm.npy"), "--truncate", "--quiet"]), engine)
    args = parse(["embed", str(corpus), "-o", str(workdir / "out.npy"), "--truncate", "--quiet",
                  "--batch-tokens", str(batch_tokens), "--restart"])
    start = time.perf_counter()
    code = bulk.run(args, engine)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"bulk mode exited with {code}")
    return elapsed


def run_cli(corpus: Path, batch_tokens: int, workdir: Path) -> float:
    cmd = [sys.executable, "-m", "tinyembed.cli", "embed", str(corpus), "-o", str(workdir / "cli.npy"), "--truncate",
           "--quiet", "--restart", "--batch-tokens", str(batch_tokens)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def worker(args) -> None:
    corpus, workdir = Path(args.corpus), Path(args.workdir)
    if args.worker == "engine":
        seconds = run_engine(corpus, args.batch_tokens)
    elif args.worker == "bulk":
        seconds = run_bulk(corpus, args.batch_tokens, workdir)
    else:
        seconds = run_cli(corpus, args.batch_tokens, workdir)
    print(json.dumps({"seconds": seconds}))


def measure(name: str, corpus: Path, workdir: Path, args) -> float:
    cmd = [sys.executable, "-m", "bench.bulk", "--worker", name, "--corpus", str(corpus), "--workdir", str(workdir),
           "--batch-tokens", str(args.batch_tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from tinyembed.engine import load_engine

    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        workdir = Path(tmp)
        corpus = workdir / "corpus.txt"
        texts = write_corpus(corpus, args.texts)
        tokens = sum(len(s) for s in load_engine(MODEL).tokenizer.encode(texts, truncate=True))
        load_before = loadavg()
        times = {name: [] for name in CONTENDERS}
        for _ in range(args.repeats):
            for name in CONTENDERS:
                times[name].append(measure(name, corpus, workdir, args))
        load_after = loadavg()
    results = {name: {"times": t, "median_s": statistics.median(t), "tokens_per_s": tokens / statistics.median(t)}
               for name, t in times.items()}
    base = results["engine"]["tokens_per_s"]
    for row in results.values():
        row["ratio"] = row["tokens_per_s"] / base
    report = {"question": "bulk mode (tinyembed embed -o) vs the engine's offline tokens/s",
              "corpus": {"texts": len(texts), "tokens": tokens}, "cpus": os.cpu_count(),
              "loadavg_1min": [load_before, load_after], "batch_tokens": args.batch_tokens,
              "repeats": args.repeats, "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"corpus: {len(texts)} texts, {tokens} tokens; {os.cpu_count()} cpus; load (1 min) "
          f"{load_before:.2f} -> {load_after:.2f}; {args.repeats} interleaved repeats, median")
    print(f"{'contender':<10}{'tokens/s':>10}{'median s':>10}{'ratio':>8}   runs (s)")
    for name, row in results.items():
        runs = " ".join(f"{t:.2f}" for t in row["times"])
        print(f"{name:<10}{row['tokens_per_s']:>10.0f}{row['median_s']:>10.2f}{row['ratio']:>8.3f}   {runs}")


if __name__ == "__main__":
    main()
