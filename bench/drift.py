"""Question: what does each kind of traffic leave behind in the server's memory? (issue 27)

The server runs in this process (its own thread and event loop) so that tracemalloc sees every
Python allocation. For each kind of traffic: a few warm-up rounds (caches, the arena, first-use
buffers), then a tracemalloc snapshot and the RSS, then --rounds more rounds, a malloc_trim,
and the same again. Reported per kind: RSS growth over the measured rounds, Python heap growth,
and the lines that grew most. Growth that keeps up with rounds is drift; a one-time step in the
warm-up is not.

    python -m bench.drift --rounds 20          # prints a table
    python -m bench.drift --rounds 20 --json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
import tempfile
import threading
import time
import tracemalloc

from bench.common import cpu_model, loadavg
from tinyembed.scheduler.memory_budget import process_rss
from tinyembed.server.memory import trim

MODEL = "all-MiniLM-L6-v2"
BIG_TEXT = ("lorem ipsum dolor sit amet " * 600_000)[:15_000_000]


def _server(data_dir: str):
    from tinyembed.jobs import routes as batch_routes
    from tinyembed.server.app import run_server
    from tinyembed.server.config import BatchSettings, ServerConfig

    config = ServerConfig(port=0, access_log=False, batch=BatchSettings(data_dir=data_dir))
    ports, stop, loop_box = [], None, []

    def serve():
        nonlocal stop
        loop = asyncio.new_event_loop()
        loop_box.append(loop)
        stop = asyncio.Event()
        loop.run_until_complete(run_server(config, stop=stop, install_signals=False,
                                           on_listening=lambda a: ports.append(a[0][1]),
                                           mounts=(lambda app: batch_routes.register(app, config.batch),)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    while not ports:
        time.sleep(0.05)
    while _call(ports[0], "GET", "/ready")[0] != 200:
        time.sleep(0.1)
    return ports[0], lambda: (loop_box[0].call_soon_threadsafe(stop.set), thread.join(60))


def _call(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        reply = conn.getresponse()
        return reply.status, reply.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def kinds(port: int) -> dict:
    texts = [f"drift text number {i} with some words" for i in range(2048)]
    deep = b'{"model": "m", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    counter = iter(range(10**9))

    def hostile():
        for body in (deep, b'{"model": "' + MODEL.encode() + b'", "input": "\xff\xfe"}',
                     {"model": "m" * (1 << 20), "input": "x"}, {"model": MODEL, "input": BIG_TEXT, "truncate": True},
                     {"model": MODEL, "input": BIG_TEXT}):
            _call(port, "POST", "/v1/embeddings", body)
        _call(port, "GET", "/v1/files?limit=%D9%A3")

    return {
        "single": lambda: [_call(port, "POST", "/v1/embeddings", {"model": MODEL, "input": f"one {next(counter)}"})
                           for _ in range(20)],
        "bulk_base64": lambda: _call(port, "POST", "/v1/embeddings", {"model": MODEL, "input": texts[:256],
                                                                      "encoding_format": "base64"}),
        "large_float": lambda: _call(port, "POST", "/v1/embeddings", {"model": MODEL, "input": texts[:1024],
                                                                      "encoding_format": "float"}),
        "hostile": hostile,
        "metrics": lambda: _call(port, "GET", "/metrics"),
    }


def measure(name: str, run, warmup: int, rounds: int) -> dict:
    for _ in range(warmup):
        run()
    time.sleep(0.5)
    trim()
    before, rss0 = tracemalloc.take_snapshot(), process_rss()
    for _ in range(rounds):
        run()
    time.sleep(0.5)
    trim()
    after, rss1 = tracemalloc.take_snapshot(), process_rss()
    ours = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    diff = after.filter_traces(ours).compare_to(before.filter_traces(ours), "lineno")
    heap = sum(d.size_diff for d in diff)
    top = [f"{d.traceback[0].filename.rsplit('/', 2)[-1]}:{d.traceback[0].lineno} {d.size_diff / 1024:+.0f} KiB "
           f"({d.count_diff:+d})" for d in diff[:4] if abs(d.size_diff) >= 4096]
    return {"kind": name, "rounds": rounds, "rss_mb": round((rss1 - rss0) / 2**20, 2),
            "heap_kib": round(heap / 1024, 1), "rss_end_mb": round(rss1 / 2**20, 1), "top": top}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tracemalloc.start(1)
    with tempfile.TemporaryDirectory(prefix="tinyembed-drift-") as tmp:
        port, stop = _server(tmp)
        rows = [measure(name, run, args.warmup, args.rounds) for name, run in kinds(port).items()]
        stop()
    report = {"question": "what each kind of traffic leaves in memory (issue 27)", "cpu": cpu_model(),
              "loadavg": loadavg(), "rows": rows}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"drift on {report['cpu']}, load {report['loadavg']}: growth over {args.rounds} rounds after "
          f"{args.warmup} warm-up rounds, after malloc_trim")
    print(f"{'kind':<12} {'RSS MB':>8} {'heap KiB':>9} {'RSS end':>8}  top lines")
    for r in rows:
        print(f"{r['kind']:<12} {r['rss_mb']:>8} {r['heap_kib']:>9} {r['rss_end_mb']:>8}  {'; '.join(r['top'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
