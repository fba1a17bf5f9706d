"""Question: how much of the engine's offline throughput does the HTTP server deliver, and at
what latency, as concurrency grows?

A closed-loop load client: C workers, each on its own keep-alive connection, send a request,
wait for the whole response, and send the next (no think time). Each request carries B texts
taken in turn from a mixed-length corpus (bench/corpus.py). Per point (B texts x C workers):
requests, texts/s, tokens/s (the server's own usage.total_tokens), p50/p99 latency, and the
ratio to the engine's offline tokens/s on the same texts (tokenize + embed in 16384-token
batches, as bench/engine.py measures it), measured in a subprocess while the server is idle.

The client runs on the same machine as the server unless --url points elsewhere: on a small
machine it takes some CPU from the server (it is kept cheap: raw asyncio sockets, base64
responses, and msgspec decoding only `usage`).

    python -m bench.server                                   # spawns `tinyembed serve`, points 1x1,1x16,32x4
    python -m bench.server --points 1x1,1x4,1x16,1x32 --json # a concurrency sweep, one JSON object
    python -m bench.server --url http://host:8000 --model text-embedding-3-small --api-key KEY
    python -m bench.server --points 256x2,256x2+1x16,1x16,32x4  # mixed load: bulk alone, then bulk
                                                                # with 16 single-text clients

A mixed point `BxC+bxc` runs both groups at once (all default tier): the bulk group's texts/s,
the interactive group's p50/p99, and the total texts/s against the bulk-only point `BxC` of the
same run ("vs bulk alone"). `--server-pythonpath DIR` runs the spawned server from another
checkout (e.g. main, for a before/after table; bench/mixed_load.py alternates two of them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import msgspec

from bench.corpus import mixed_corpus

MODEL = "all-MiniLM-L6-v2"


class _Usage(msgspec.Struct):
    total_tokens: int


class _Reply(msgspec.Struct):
    data: list[msgspec.Raw]  # left undecoded: the client only counts them
    usage: _Usage


_decode_reply = msgspec.json.Decoder(_Reply).decode


# -- the load client --------------------------------------------------------------------------------

class Worker:
    """One keep-alive connection sending requests back to back."""

    def __init__(self, host: str, port: int, path: str, headers: bytes):
        self.host, self.port, self.path, self.headers = host, port, path, headers
        self.reader = self.writer = None

    async def request(self, body: bytes) -> tuple[int, int, bytes]:
        """-> (status, tokens, body); reconnects when the server closed the connection."""
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%s"
                                  b"Content-Length: %d\r\n\r\n%s" % (self.path.encode(), self.host.encode(),
                                                                    self.headers, len(body), body))
                head = await self.reader.readuntil(b"\r\n\r\n")
                status, length, close = _parse_head(head)
                payload = await self.reader.readexactly(length)
                if close:
                    self.close()
                tokens = _decode_reply(payload).usage.total_tokens if status == 200 else 0
                return status, tokens, payload
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.decode("latin-1").split("\r\n")
    status, length, close = int(lines[0].split()[1]), 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value.strip().lower() == "close"
    return status, length, close


async def run_point(url: str, model: str, api_key: str | None, texts: list[str], batch: int, concurrency: int,
                    duration: float, warmup: float, encoding: str, truncate: bool = False) -> dict:
    parts = urlsplit(url)
    path = (parts.path.rstrip("/") or "") + "/v1/embeddings"
    headers = f"Authorization: Bearer {api_key}\r\n".encode() if api_key else b""
    cursor = [0]
    samples: list[tuple[float, float, int, int]] = []  # (sent, latency, texts, tokens)
    errors: dict[int, int] = {}
    first_error: list[bytes] = []
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    def next_body() -> tuple[bytes, int]:
        i = cursor[0]
        cursor[0] = (i + batch) % len(texts)
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        request = {"model": model, "input": chunk[0] if batch == 1 else chunk, "encoding_format": encoding}
        if truncate:
            request["truncate"] = True
        return msgspec.json.encode(request), len(chunk)

    async def loop_worker():
        worker = Worker(parts.hostname, parts.port or 80, path, headers)
        try:
            while time.perf_counter() < stop_at:
                body, count = next_body()
                sent = time.perf_counter()
                status, tokens, payload = await worker.request(body)
                done = time.perf_counter()
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1
                    if not first_error:
                        first_error.append(payload[:300])
                elif measure_from <= done <= stop_at:  # throughput: completions in the window
                    samples.append((sent, done - sent, count, tokens))
        finally:
            worker.close()

    await asyncio.gather(*(loop_worker() for _ in range(concurrency)))
    # latency: requests sent inside the window too (a large request may span its start)
    latencies = sorted(s[1] for s in samples if s[0] >= measure_from) or sorted(s[1] for s in samples)
    window = duration
    result = {
        "batch": batch, "concurrency": concurrency, "requests": len(samples),
        "errors": errors, "texts_per_s": sum(s[2] for s in samples) / window,
        "tokens_per_s": sum(s[3] for s in samples) / window,
        "p50_ms": _percentile(latencies, 50) * 1000, "p99_ms": _percentile(latencies, 99) * 1000,
    }
    if first_error:
        result["first_error"] = first_error[0].decode(errors="replace")
    return result


async def run_mixed(url: str, model: str, api_key: str | None, texts: list[str], bulk: tuple[int, int],
                    interactive: tuple[int, int], duration: float, warmup: float, encoding: str,
                    truncate: bool = False) -> dict:
    """Bulk and interactive clients at once, measured over the same window."""
    common = (duration, warmup, encoding, truncate)
    bulk_row, inter_row = await asyncio.gather(run_point(url, model, api_key, texts, *bulk, *common),
                                               run_point(url, model, api_key, texts, *interactive, *common))
    return {"batch": f"{bulk[0]}+{interactive[0]}", "concurrency": f"{bulk[1]}+{interactive[1]}", "mixed": True,
            "requests": bulk_row["requests"] + inter_row["requests"],
            "errors": {k: bulk_row["errors"].get(k, 0) + inter_row["errors"].get(k, 0)
                       for k in {*bulk_row["errors"], *inter_row["errors"]}},
            "texts_per_s": bulk_row["texts_per_s"] + inter_row["texts_per_s"],
            "tokens_per_s": bulk_row["tokens_per_s"] + inter_row["tokens_per_s"],
            "p50_ms": inter_row["p50_ms"], "p99_ms": inter_row["p99_ms"],  # the interactive clients'
            "bulk": bulk_row, "interactive": inter_row, "bulk_key": f"{bulk[0]}x{bulk[1]}"}


def run_any(url: str, model: str, api_key: str | None, texts: list[str], point, args) -> dict:
    """One point of --points (BxC, or BxC+bxc for mixed load) on a fresh event loop."""
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    common = (args.duration, args.warmup, args.encoding, args.truncate)
    if isinstance(point[0], tuple):
        work = run_mixed(url, model, api_key, texts, point[0], point[1], *common)
    else:
        work = run_point(url, model, api_key, texts, *point, *common)
    return run(with_server_tokens(url, work, args.warmup, args.duration))


async def with_server_tokens(url: str, work, warmup: float, duration: float) -> dict:
    """The point's result plus the tokens the server computed in the measured window
    (server_tokens_per_s): exact even when single requests take longer than the window."""
    async def sample() -> float:
        await asyncio.sleep(warmup)
        before = await asyncio.to_thread(computed_tokens, url)
        await asyncio.sleep(duration)
        after = await asyncio.to_thread(computed_tokens, url)
        return (after - before) / duration

    row, rate = await asyncio.gather(work, sample())
    row["server_tokens_per_s"] = rate
    return row


def computed_tokens(url: str) -> float:
    """Tokens the server's scheduler has computed so far (/metrics; 0 if it has no scheduler)."""
    return batch_stats(url).get("batch_tokens_sum", 0.0)


def add_bulk_ratios(results: list[dict]) -> None:
    """A mixed point's total throughput over its bulk-only point in the same run: tokens the
    server computed per second (texts/s when that is unknown)."""
    alone = {f"{r['batch']}x{r['concurrency']}": r for r in results if not r.get("mixed")}
    for row in results:
        if row.get("mixed") and row["bulk_key"] in alone:
            key = "server_tokens_per_s" if row.get("server_tokens_per_s") else "texts_per_s"
            row["vs_bulk_alone"] = row[key] / max(alone[row["bulk_key"]].get(key) or 0, 1e-9)


def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


# -- the offline baseline and the spawned server ------------------------------------------------------

def offline_worker(texts_count: int, repeats: int, batch_tokens: int) -> None:
    """In a subprocess: the engine alone on the same corpus; prints one JSON line."""
    from tinyembed.engine import load_engine

    texts = mixed_corpus(texts_count)
    engine = load_engine(MODEL)
    engine.embed_sequences(engine.tokenizer.encode(texts[:64], truncate=True))  # warm-up
    tokens, times = 0, []
    for _ in range(repeats):
        started = time.perf_counter()
        sequences = engine.tokenizer.encode(texts, truncate=True)
        engine.embed_sequences(sequences, max_batch_tokens=batch_tokens)
        times.append(time.perf_counter() - started)
        tokens = sum(len(s) for s in sequences)
    median = statistics.median(times)
    print(json.dumps({"tokens": tokens, "median_s": median, "tokens_per_s": tokens / median}))


def measure_offline(texts_count: int, repeats: int, batch_tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.server", "--offline-worker", "--texts", str(texts_count),
                          "--repeats", str(repeats), "--batch-tokens", str(batch_tokens)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


class SpawnedServer:
    def __init__(self, extra_args: list[str], pythonpath: str | None = None):
        # --auto-truncate: the corpus has texts over 256 tokens, which the offline baseline truncates too
        self.args = [sys.executable, "-m", "tinyembed.cli", "serve", "--port", "0", "--model", MODEL,
                     "--auto-truncate", "--no-access-log", *extra_args]
        env = None
        if pythonpath:  # another checkout's code (the bench itself stays this one)
            env = {**os.environ, "PYTHONPATH": os.path.abspath(pythonpath)}
        self.proc = subprocess.Popen(self.args, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=os.path.abspath(pythonpath) if pythonpath else None)
        self.url = None
        for line in self.proc.stderr:
            if "listening on http://" in line:
                self.url = line.strip().split("listening on ")[1]
                break
        if self.url is None:
            raise RuntimeError(f"server did not start: exit {self.proc.wait()}")
        # keep draining its log so the pipe never fills and blocks it
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import http.client

        parts = urlsplit(self.url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server never became ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


# -- main ---------------------------------------------------------------------------------------------

def batch_stats(url: str) -> dict:
    """The scheduler's batch budget and mean batch time so far, from /metrics (empty if none)."""
    import http.client

    parts = urlsplit(url)
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        for name in ("batch_budget_tokens", "batch_compute_seconds_sum", "batch_compute_seconds_count",
                     "batch_tokens_sum"):
            if line.startswith(f"tinyembed_scheduler_{name}{{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    count = values.get("batch_compute_seconds_count")
    if not count:
        return values
    return {"budget_tokens": values.get("batch_budget_tokens"), "batches": int(count),
            "batch_tokens_sum": values.get("batch_tokens_sum", 0.0),
            "mean_batch_ms": 1000 * values["batch_compute_seconds_sum"] / count,
            "mean_batch_tokens": values.get("batch_tokens_sum", 0) / count}


def parse_points(text: str) -> list:
    """"1x16,256x2+1x16" -> [(1, 16), ((256, 2), (1, 16))]"""
    def one(item: str) -> tuple[int, int]:
        batch, _, concurrency = item.strip().partition("x")
        return int(batch), int(concurrency)

    return [tuple(one(p) for p in item.split("+")) if "+" in item else one(item) for item in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an OpenAI-compatible server (default: spawn `tinyembed serve`)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--points", default="1x1,1x16,32x4", help="BATCHxCONCURRENCY,... (texts per request x workers)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    parser.add_argument("--texts", type=int, default=1200, help="corpus size")
    parser.add_argument("--encoding", choices=("base64", "float"), default="base64")
    parser.add_argument("--truncate", action="store_true",
                        help='send "truncate": true (a tinyembed extension) for a --url server without --auto-truncate')
    parser.add_argument("--repeats", type=int, default=3, help="offline baseline passes (median)")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="offline baseline tokens per batch")
    parser.add_argument("--no-offline", action="store_true", help="skip the engine baseline")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `tinyembed serve` argument")
    parser.add_argument("--server-pythonpath", help="spawn the server from this checkout (a before/after peer)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--offline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline_worker:
        return offline_worker(args.texts, args.repeats, args.batch_tokens)

    texts = mixed_corpus(args.texts)
    offline = None if args.no_offline else measure_offline(args.texts, args.repeats, args.batch_tokens)
    spawned = None if args.url else SpawnedServer(args.server_arg, args.server_pythonpath)
    url = args.url or spawned.url
    try:
        results = []
        for point in parse_points(args.points):
            results.append(run_any(url, args.model, args.api_key, texts, point, args))
            results[-1]["server_batches"] = batch_stats(url)
    finally:
        if spawned is not None:
            spawned.stop()
    add_bulk_ratios(results)
    for row in results:
        row["vs_offline"] = row["tokens_per_s"] / offline["tokens_per_s"] if offline else None
    report = {
        "question": "HTTP server throughput and latency vs the engine alone",
        "server": url, "spawned": spawned.args[1:] if spawned else None, "model": args.model,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "texts": len(texts),
                     "encoding": args.encoding},
        "offline": offline, "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def print_report(r: dict) -> None:
    print(f"server {r['server']} model {r['model']}; {r['machine']['cpus']} CPUs ({r['machine']['processor']}); "
          f"client on {'the same machine' if r['spawned'] else 'this machine'}; "
          f"{r['settings']['duration_s']:.0f}s per point, {r['settings']['encoding']} responses")
    if r["offline"]:
        o = r["offline"]
        print(f"offline engine: {o['tokens_per_s']:.0f} tokens/s ({o['tokens']} tokens, median of passes)")
    print(f"{'texts/req':>9} {'workers':>7} {'requests':>8} {'errors':>6} {'texts/s':>9} {'tokens/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'vs offline':>10}")
    for row in r["results"]:
        ratio = f"{row['vs_offline']:.0%}" if row["vs_offline"] is not None else "-"
        print(f"{row['batch']:>9} {row['concurrency']:>7} {row['requests']:>8} {sum(row['errors'].values()):>6} "
              f"{row['texts_per_s']:>9.1f} {row['tokens_per_s']:>9.0f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
              f"{ratio:>10}")
        if row.get("server_batches"):
            s = row["server_batches"]
            print(f"    server so far: budget {s.get('budget_tokens')} tokens, {s.get('batches')} batches, mean "
                  f"{s.get('mean_batch_ms', 0):.0f} ms / {s.get('mean_batch_tokens', 0):.0f} tokens")
        if row.get("mixed"):
            b = row["bulk"]
            vs = f", total {row['vs_bulk_alone']:.2f}x bulk alone" if "vs_bulk_alone" in row else ""
            print(f"    mixed: p50/p99 are the {row['interactive']['requests']} interactive requests'; bulk "
                  f"{b['texts_per_s']:.1f} texts/s (p50 {b['p50_ms']:.0f} ms){vs}")
        if "first_error" in row:
            print(f"    first error: {row['first_error']}")


if __name__ == "__main__":
    main()
