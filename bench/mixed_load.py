"""Question: do single-text requests stay fast while bulk requests run, and what does that cost
the bulk throughput? Two servers (this checkout and another, e.g. main = "before") measured in
the same run, alternating, each through the same points of bench/server.py:

    BULKxC          bulk alone (e.g. 256 texts per request x 2 clients)
    BULKxC+1xN      the same bulk clients plus N single-text clients, at once, all default tier
    1xN, 32x4       single texts alone vs 32-text batches (the cost of serving one text at a time)

Per contender and round: interactive p50/p99 under bulk load, total throughput under mixed load
over bulk alone, 1xN over 32x4 (throughput = tokens the server computed in the measured window,
from its /metrics: exact even when one 256-text request outlasts the window), 1xN's own p50/p99,
and what the server's histograms say (single texts' batches waited, bound violations). Then
medians over rounds and the per-round after/before ratios. The goals (issue 23, 2-core CPU,
MiniLM, quiet machine): under 256x2+1x16 interactive p99 <= 200 ms and p50 <= 60 ms, total >=
0.9x bulk alone; 1x16 alone p99 <= 3x its p50; bulk alone no more than 5% below "before".

    flock /work/bench.lock python -m bench.mixed_load --before /work/main --rounds 3 --duration 20 --wait-idle 1.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess

from bench.common import wait_for_idle
from bench.corpus import mixed_corpus
from bench.server import SpawnedServer, add_bulk_ratios, batch_stats, parse_points, run_any

MODEL = "all-MiniLM-L6-v2"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def measure(path: str | None, points: str, texts: list[str], args, server_args: list[str]) -> dict:
    """One contender, one round: spawn its server, run the points, summarise."""
    server = SpawnedServer(server_args, path)
    waited: dict = {}
    try:
        rows = []
        for point in parse_points(points):
            before = batch_stats(server.url)
            rows.append(run_any(server.url, MODEL, None, texts, point, args))
            if rows[-1].get("mixed"):  # the server's own view of the mixed point
                waited = {**server_counts(server.url), **batch_delta(before, batch_stats(server.url))}
    finally:
        server.stop()
    add_bulk_ratios(rows)
    by_key = {f"{r['batch']}x{r['concurrency']}": r for r in rows}
    mixed = next(r for r in rows if r.get("mixed"))
    single, batched = by_key[f"1x{args.interactive}"], by_key["32x4"]
    return {"interactive_p50_ms": mixed["interactive"]["p50_ms"], "interactive_p99_ms": mixed["interactive"]["p99_ms"],
            "interactive_requests": mixed["interactive"]["requests"],
            # throughput: tokens the server computed in the window (a 256-text request may outlast it)
            "bulk_alone_tokens_per_s": by_key[mixed["bulk_key"]]["server_tokens_per_s"],
            "mixed_total_tokens_per_s": mixed["server_tokens_per_s"], "mixed_vs_bulk_alone": mixed.get("vs_bulk_alone"),
            "mixed_total_texts_per_s": mixed["texts_per_s"],
            "single_tokens_per_s": single["server_tokens_per_s"], "batched_tokens_per_s": batched["server_tokens_per_s"],
            "single_vs_batched": single["server_tokens_per_s"] / max(batched["server_tokens_per_s"], 1e-9),
            "single_alone_p50_ms": single["p50_ms"], "single_alone_p99_ms": single["p99_ms"],
            "bulk_alone_texts_per_s": by_key[mixed["bulk_key"]]["texts_per_s"],
            "mixed_texts_vs_bulk_alone": mixed["texts_per_s"] / max(by_key[mixed["bulk_key"]]["texts_per_s"], 1e-9),
            **waited,
            "errors": sum(sum(r["errors"].values()) for r in rows), "load_after": os.getloadavg()[0]}


def batch_delta(before: dict, after: dict) -> dict:
    """Budget at the end, mean batch size and time over the point (the counters' difference)."""
    batches = after.get("batches", 0) - before.get("batches", 0)
    if batches <= 0:
        return {}
    tokens = after["batch_tokens_sum"] - before.get("batch_tokens_sum", 0.0)
    ms = after["mean_batch_ms"] * after["batches"] - before.get("mean_batch_ms", 0.0) * before.get("batches", 0)
    return {"mixed_budget_tokens": after.get("budget_tokens"), "mixed_batches": batches,
            "mixed_mean_batch_tokens": tokens / batches, "mixed_mean_batch_ms": ms / batches}


def server_counts(url: str) -> dict:
    """From /metrics: single texts' most batches waited (histogram's upper bucket bound) and the
    bound violations counted so far (absent on a server without the counter: None)."""
    import http.client
    import re
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    buckets = [(m.group(1), float(m.group(2))) for m in re.finditer(
        r'tinyembed_scheduler_request_batches_waited_bucket\{[^}]*size="1",le="([^"]+)"\} (\S+)', text)]
    total = next((count for le, count in buckets if le == "+Inf"), 0.0)
    most = next((le for le, count in buckets if count == total), None) if total else None
    violations = [float(v) for v in re.findall(r"tinyembed_scheduler_bound_violations_total\{[^}]*\} (\S+)", text)]
    return {"single_max_batches_waited": most, "bound_violations": sum(violations) if violations else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the other checkout (its server is 'before')")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--bulk", default="256x2", help="texts per bulk request x bulk clients")
    parser.add_argument("--interactive", type=int, default=16, help="single-text clients")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `tinyembed serve` argument (both)")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--wait-idle", type=float, metavar="LOAD", help="before each round, wait for the 1-min load below LOAD")
    parser.add_argument("--wait-timeout", type=float, default=300.0, help="seconds to wait for --wait-idle (then run anyway)")
    args = parser.parse_args()
    args.encoding, args.truncate = "base64", False
    points = f"{args.bulk},{args.bulk}+1x{args.interactive},1x{args.interactive},32x4"
    texts = mixed_corpus(1200)
    contenders = {"before": os.path.abspath(args.before), "after": None}
    rounds = []
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; load before: {os.getloadavg()}")
    for r in range(args.rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))  # alternate who goes first
        result = {}
        if args.wait_idle:
            print(f"round {r + 1}: " + json.dumps(wait_for_idle(args.wait_idle, args.wait_timeout)), flush=True)
        for name in order:
            result[name] = measure(contenders[name], points, texts, args, args.server_arg)
            print(f"round {r + 1} {name}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                          for k, v in result[name].items()}), flush=True)
            print(f"  uptime load: {os.getloadavg()}", flush=True)
        rounds.append(result)
    report(rounds, args)


def report(rounds: list[dict], args) -> None:
    keys = ("interactive_p50_ms", "interactive_p99_ms", "mixed_total_tokens_per_s", "bulk_alone_tokens_per_s",
            "mixed_vs_bulk_alone", "bulk_alone_texts_per_s", "mixed_texts_vs_bulk_alone", "single_alone_p50_ms",
            "single_alone_p99_ms", "single_tokens_per_s", "batched_tokens_per_s", "single_vs_batched")
    print(f"\n{'median over ' + str(len(rounds)) + ' rounds':<28} {'before':>10} {'after':>10}   per-round after/before")
    summary = {}
    for key in keys:
        before = statistics.median(r["before"][key] for r in rounds)
        after = statistics.median(r["after"][key] for r in rounds)
        ratios = [r["after"][key] / r["before"][key] if r["before"][key] else float("nan") for r in rounds]
        summary[key] = {"before": before, "after": after, "ratios": ratios}
        print(f"{key:<28} {before:>10.2f} {after:>10.2f}   {', '.join(f'{x:.2f}' for x in ratios)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "rounds": rounds, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
