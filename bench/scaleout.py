"""Question: how much faster does a corpus embed on Ray actors than with plain `tinyembed embed`?

Same corpus (bench.corpus.mixed_corpus, one parquet file), same model, same truncation, same
blocks (--chunk-size), one run. Contenders, each a whole command in a fresh subprocess, in
interleaved rounds (plain, ray x1, ray x2, plain, ...), so a change in the machine's load hits
them alike; the median of --repeats counts, and each round's ratio is printed too:

    plain   python -m tinyembed.cli embed corpus.parquet -o out.npy
    ray1    the same with --ray ADDRESS --actors 1   (one engine on one Ray actor)
    ray2    the same with --ray ADDRESS --actors 2   (two actors, one engine each)

ADDRESS is a local Ray cluster this script starts once (ray.init(num_cpus=<cpus>)), so cluster
start-up is not timed; each Ray run still pays for connecting, starting its actors and loading
the model in each, as a user's command does. Every contender is timed from command start to
OUTPUT in place, and tokens/s = the corpus's real tokens (after truncation) / that time.

What to expect: on one 2-core machine, ~1x. One engine already keeps both cores busy (BLAS and
the C kernels use them all), so two actors split the same two cores, and Ray adds per-block
transfer and actor start-up. Ray pays off when the actors are on more cores or more machines:
docs/deploy.md extrapolates from these numbers.

    python -m bench.scaleout                 # table
    python -m bench.scaleout --json          # one JSON object
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

from bench.common import cpu_model, loadavg

MODEL = "all-MiniLM-L6-v2"
CONTENDERS = {"plain": [], "ray1": ["--actors", "1"], "ray2": ["--actors", "2"]}
ROOT = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, n: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.corpus import mixed_corpus

    texts = mixed_corpus(n)
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(n)], "text": texts}), path)
    return texts


def run(name: str, corpus: Path, out: Path, address: str, args) -> float:
    cmd = [sys.executable, "-m", "tinyembed.cli", "embed", str(corpus), "-o", str(out), "--model", MODEL, "--truncate",
           "--quiet", "--restart", "--chunk-size", str(args.chunk_size), *CONTENDERS[name]]
    if name != "plain":
        cmd.append(f"--ray={address}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=100, help="records per block, every contender")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import ray

    from tinyembed.engine import load_engine

    ray.init(num_cpus=args.cpus, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
            workdir = Path(tmp)
            corpus = workdir / "corpus.parquet"
            texts = write_corpus(corpus, args.texts)
            engine = load_engine(MODEL)
            tokens = sum(len(s) for s in engine.tokenizer.encode(texts, truncate=True))
            address = ray.get_runtime_context().gcs_address
            load_before = loadavg()
            times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
            outputs = {}
            for _ in range(args.repeats):
                for name in CONTENDERS:
                    out = workdir / f"{name}.npy"
                    times[name].append(run(name, corpus, out, address, args))
                    outputs[name] = np.load(out)
            load_after = loadavg()
    finally:
        ray.shutdown()
    agree = max(float(np.abs(outputs[n] - outputs["plain"]).max()) for n in CONTENDERS)
    results = {}
    for name, t in times.items():
        results[name] = {"times": t, "median_s": statistics.median(t), "tokens_per_s": tokens / statistics.median(t),
                         "round_ratios": [p / s for p, s in zip(times["plain"], t)]}
        results[name]["ratio"] = statistics.median(times["plain"]) / results[name]["median_s"]
    report = {"question": "tinyembed embed: plain vs Ray with 1 and 2 actors, tokens/s",
              "corpus": {"texts": len(texts), "tokens": tokens}, "cpu": cpu_model(), "cpus": os.cpu_count(),
              "ray_cpus": args.cpus, "loadavg": [load_before, load_after], "chunk_size": args.chunk_size,
              "repeats": args.repeats, "max_abs_diff_vs_plain": agree, "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{cpu_model()}; {os.cpu_count()} cpus (Ray cluster: {args.cpus}); corpus {len(texts)} texts, "
          f"{tokens} tokens; load {load_before} -> {load_after}; {args.repeats} interleaved rounds, median; "
          f"outputs agree within {agree:.1e}")
    print(f"{'contender':<10}{'tokens/s':>10}{'median s':>10}{'vs plain':>10}   per-round vs plain   runs (s)")
    for name, row in results.items():
        rounds = " ".join(f"{r:.2f}" for r in row["round_ratios"])
        runs = " ".join(f"{t:.1f}" for t in row["times"])
        print(f"{name:<10}{row['tokens_per_s']:>10.0f}{row['median_s']:>10.2f}{row['ratio']:>10.2f}   "
              f"{rounds:<20} {runs}")


if __name__ == "__main__":
    main()
