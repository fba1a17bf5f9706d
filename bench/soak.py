"""Question: does one server stay small and correct under hours-like mixed load with hostile
clients mixed in? (issue 14)

One `tinyembed serve` (MiniLM by default, two API keys in two projects, the Files/Batches API
on) gets, for --minutes (default 30; or --duration seconds):
- interactive: clients sending 1-8 texts per request, back to back;
- single: a client sending one text per request;
- bulk: a client sending 256-text requests;
- batch jobs: upload a JSONL file (200 requests), create a batch, poll it, download the output;
- hostile, in between: JSON nested 100k deep, invalid UTF-8, a 1 MiB model name, a non-ASCII
  `limit`, a 15 MB text (truncate on and off), a reader that never reads a 2048-input reply,
  and tenant B trying every files/batches route on tenant A's objects (each must be 404).
The server's RSS is sampled every --sample-every seconds. Reported: peak RSS (the samples and
the kernel's VmHWM since the load began), the slope of RSS after the first 2 minutes and over
the last half (MB/min, least squares), RSS once idle after the load, every status seen (5xx
must be 0, leaks must be 0, 503s are the memory budget or the queue saying no), and what one
15 MB text costs alone (latency, peak RSS above the idle RSS), before and after.

    python -m bench.soak                          # 30 minutes, prints a table
    python -m bench.soak --minutes 5 --json       # a short run, one JSON object
    python -m bench.soak --max-memory 200M        # under a budget: peak < 200 MB, 503s, no death
Goals (issue 27): peak <= 250 MB with MiniLM, slope after 2 minutes <= 0.2 MB/min, idle after
the load <= 170 MB; with --max-memory 200M the peak stays under 200 MB. (Issue 14: zero 5xx, a
15 MB text < 1 s and < 50 MB.) The machine may be shared: the load average is recorded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.common import ROOT, cpu_model, loadavg
from bench.corpus import mixed_corpus

MODEL = "all-MiniLM-L6-v2"
KEY_A, KEY_B = "soak-key-a", "soak-key-b"
BIG_TEXT = ("lorem ipsum dolor sit amet, consectetur adipiscing elit " * 300_000)[:15_000_000]


# -- the server ---------------------------------------------------------------------------------------

class Server:
    def __init__(self, model: str, data_dir: str, log_path: Path, extra: list[str] = ()):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYEMBED_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.log = open(log_path, "wb")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinyembed.cli", "serve", "--host", "127.0.0.1", "--port", "0",
             "--model", model, "--data-dir", data_dir, "--api-key", f"{KEY_A}:alpha", "--api-key", f"{KEY_B}:beta",
             "--no-access-log", *extra], stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 120
        self.port = None
        while time.monotonic() < deadline and self.port is None:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
            self.port = int(found.group(1)) if found else None
            if self.proc.poll() is not None:
                raise RuntimeError(log_path.read_text())
            time.sleep(0.05)
        while time.monotonic() < deadline and call(self.port, "GET", "/ready")[0] != 200:
            time.sleep(0.1)

    def rss_mb(self) -> float:
        return _status_kib(self.proc.pid, "VmRSS") / 1024

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def peak_mb(self) -> float:
        return _status_kib(self.proc.pid, "VmHWM") / 1024

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def call(port: int, method: str, path: str, body=None, key: str | None = KEY_A, headers=None,
         timeout: float = 120) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        if key:
            hdrs["Authorization"] = f"Bearer {key}"
        conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
        reply = conn.getresponse()
        return reply.status, reply.read()
    except (OSError, http.client.HTTPException):
        return 0, b""  # a dropped connection (counted apart from statuses)
    finally:
        conn.close()


# -- the load -----------------------------------------------------------------------------------------

class Load:
    def __init__(self, port: int, model: str, until: float):
        self.port, self.model, self.until = port, model, until
        self.statuses: Counter = Counter()  # (kind, status) -> count
        self.leaks: list[str] = []
        self.notes: list[str] = []  # the first unexpected errors, for the report
        self.lock = threading.Lock()
        self.texts = mixed_corpus(600)

    def count(self, kind: str, status: int, what: str = "") -> None:
        with self.lock:
            self.statuses[(kind, status)] += 1
            if status >= 400 and status != 503 and kind != "hostile" and len(self.notes) < 20:
                self.notes.append(f"{kind} {status} {what}")

    def running(self) -> bool:
        return time.monotonic() < self.until

    def interactive(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running():
            texts = rng.sample(self.texts, rng.randint(1, 8))
            status, _ = call(self.port, "POST", "/v1/embeddings", {"model": self.model, "input": texts,
                                                                    "truncate": True})
            self.count("interactive", status)

    def single(self) -> None:
        rng = random.Random(5)
        while self.running():
            status, _ = call(self.port, "POST", "/v1/embeddings", {"model": self.model, "input": rng.choice(self.texts),
                                                                    "truncate": True})
            self.count("single", status)

    def bulk(self) -> None:
        rng = random.Random(7)
        while self.running():
            texts = [rng.choice(self.texts) for _ in range(256)]
            status, _ = call(self.port, "POST", "/v1/embeddings", {"model": self.model, "input": texts,
                                                                    "encoding_format": "base64", "truncate": True})
            self.count("bulk", status)

    def batches(self) -> None:
        rng = random.Random(11)
        while self.running():
            lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                                 "body": {"model": self.model, "input": rng.sample(self.texts, 4),
                                          "truncate": True}})
                     for i in range(200)]
            status, body = upload(self.port, ("\n".join(lines) + "\n").encode(), KEY_A)
            self.count("batch", status, f"upload {body[:200]!r}")
            if status != 200:
                continue
            file_id = json.loads(body)["id"]
            status, body = call(self.port, "POST", "/v1/batches", {"input_file_id": file_id, "endpoint":
                                                                    "/v1/embeddings", "completion_window": "24h"})
            self.count("batch", status, f"create {body[:200]!r}")
            if status != 200:
                continue
            batch = json.loads(body)
            while batch["status"] not in ("completed", "failed", "cancelled", "expired") and self.running():
                time.sleep(0.5)
                status, body = call(self.port, "GET", f"/v1/batches/{batch['id']}")
                self.count("batch", status)
                batch = json.loads(body) if status == 200 else batch
            if batch.get("output_file_id"):
                status, _ = call(self.port, "GET", f"/v1/files/{batch['output_file_id']}/content")
                self.count("batch", status)
                self.cross_tenant(file_id, batch["id"], batch["output_file_id"])
            for fid in (file_id, batch.get("output_file_id"), batch.get("error_file_id")):
                if fid and batch["status"] in ("completed", "failed", "cancelled", "expired"):
                    status, body = call(self.port, "DELETE", f"/v1/files/{fid}")
                    self.count("batch", status, f"delete {body[:200]!r}")

    def cross_tenant(self, file_id: str, batch_id: str, output_id: str) -> None:
        """Tenant B on tenant A's objects: every route must say 404 (and lists must not show them)."""
        probes = [("GET", f"/v1/files/{file_id}", None), ("GET", f"/v1/files/{output_id}/content", None),
                  ("GET", f"/v1/batches/{batch_id}", None), ("POST", f"/v1/batches/{batch_id}/cancel", None),
                  ("POST", "/v1/batches", {"input_file_id": file_id, "endpoint": "/v1/embeddings",
                                           "completion_window": "24h"})]
        for method, path, body in probes:
            status, _ = call(self.port, method, path, body, key=KEY_B)
            self.count("hostile", status)
            if status != 404:
                self.leaks.append(f"{method} {path} -> {status}")
        for path, object_id in (("/v1/files", file_id), ("/v1/batches", batch_id)):
            status, body = call(self.port, "GET", path, key=KEY_B)
            if status == 200 and object_id.encode() in body:
                self.leaks.append(f"GET {path} lists {object_id}")

    def hostile(self) -> None:
        deep = b'{"model": "m", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        probes = [
            ("POST", "/v1/embeddings", deep),
            ("POST", "/v1/embeddings", b'{"model": "' + self.model.encode() + b'", "input": "\xff\xfe"}'),
            ("POST", "/v1/embeddings", {"model": "m" * (1 << 20), "input": "x"}),
            ("GET", "/v1/files?limit=%D9%A3", None),
            ("POST", "/v1/embeddings", {"model": self.model, "input": BIG_TEXT}),
            ("POST", "/v1/embeddings", {"model": self.model, "input": BIG_TEXT, "truncate": True}),
            ("POST", "/tokenize", {"model": self.model, "input": BIG_TEXT}),
        ]
        reader = None
        while self.running():
            for method, path, body in probes:
                self.count("hostile", call(self.port, method, path, body)[0])
                if not self.running():
                    return
            if reader is None or not reader.is_alive():  # one slow reader at a time
                reader = threading.Thread(target=self.slow_reader, daemon=True)
                reader.start()
            time.sleep(1.0)

    def slow_reader(self) -> None:
        """Ask for ~16 MB of float JSON and never read it; the server must cut us off (its
        write timeout is 30 s); we give up after 45 s either way."""
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        body = json.dumps({"model": self.model, "input": ["slow reader"] * 2048, "encoding_format": "float"}).encode()
        sock.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer {KEY_A}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        sock.settimeout(300.0)
        started = None
        try:
            sock.recv(1, socket.MSG_PEEK)  # the reply began (peeked, never read): the write timeout runs
            started = time.monotonic()
            # until the server closes or resets it (a peek would still see the unread bytes)
            while _tcp_state(sock) == TCP_ESTABLISHED and time.monotonic() - started <= 45.0:
                time.sleep(0.5)
        except OSError:
            pass  # reset by the server: cut off, as it should be
        if started is None:
            outcome = "slow_reader_unanswered"  # the run ended before its reply began
        else:
            outcome = "slow_reader_cut" if time.monotonic() - started <= 45.0 else "slow_reader_kept"
        self.count(outcome, 0)
        sock.close()


TCP_ESTABLISHED = 1


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]  # struct tcp_info: tcpi_state first


def upload(port: int, data: bytes, key: str) -> tuple[int, bytes]:
    boundary = "soakboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"soak.jsonl\"\r\n\r\n"
            ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return call(port, "POST", "/v1/files", body, key=key,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


# -- measuring ----------------------------------------------------------------------------------------

def big_text_cost(server: Server, model: str) -> dict:
    """One 15 MB text alone on an idle server: wall seconds (send included), the server's CPU
    seconds (what it costs whatever the machine's load), and peak RSS above the RSS before it;
    and the same for its first 2000 characters (the same max-length forward pass, without the
    15 MB): the difference is what the size itself costs."""
    control = _cost(server, json.dumps({"model": model, "input": BIG_TEXT[:2000], "truncate": True}).encode())
    big = _cost(server, json.dumps({"model": model, "input": BIG_TEXT, "truncate": True}).encode())
    return {**big, "control_2000_chars": control,
            "size_cost_s": round(big["seconds"] - control["seconds"], 3),
            "size_cost_cpu_s": round(big["server_cpu_s"] - control["server_cpu_s"], 3)}


def _cost(server: Server, body: bytes) -> dict:
    time.sleep(2.0)  # let the last trim run
    before = server.rss_mb()
    server.reset_peak()
    cpu = server.cpu_seconds()
    started = time.perf_counter()
    status, _ = call(server.port, "POST", "/v1/embeddings", body)
    seconds = time.perf_counter() - started
    time.sleep(0.5)  # the trim after it, counted in CPU
    return {"status": status, "seconds": round(seconds, 3), "server_cpu_s": round(server.cpu_seconds() - cpu, 3),
            "rss_before_mb": round(before, 1), "peak_above_mb": round(server.peak_mb() - before, 1)}


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    cov = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return 60.0 * cov / var if var else 0.0


KINDS = ("interactive", "single", "bulk", "batches", "hostile")
WARM_UP_S = 120.0  # the slope is fitted after this: the first minutes fill caches and the arena
IDLE_WAIT_S = 15.0  # after the load: long enough for the periodic trim (server/memory.py)


def run(duration: float, model: str, sample_every: float, server_args: list[str], kinds=KINDS) -> dict:
    with tempfile.TemporaryDirectory(prefix="tinyembed-soak-") as tmp:
        server = Server(model, str(Path(tmp) / "data"), Path(tmp) / "server.log", server_args)
        try:
            idle_rss = server.rss_mb()
            cost_before = big_text_cost(server, model)
            load = Load(server.port, model, time.monotonic() + duration)
            workers = [threading.Thread(target=load.interactive, args=(i,), daemon=True)
                       for i in range(3 if "interactive" in kinds else 0)]
            workers += [threading.Thread(target=getattr(load, kind), daemon=True) for kind in KINDS[1:] if kind in kinds]
            started = time.monotonic()
            server.reset_peak()
            for worker in workers:
                worker.start()
            samples = []
            while load.running():
                samples.append((time.monotonic() - started, server.rss_mb()))
                print(f"  t={samples[-1][0]:6.0f}s rss={samples[-1][1]:7.1f} MB load={loadavg()[:1]}", file=sys.stderr)
                time.sleep(min(sample_every, max(0.0, load.until - time.monotonic())) or 0.01)
            for worker in workers:
                worker.join(180)
            samples.append((time.monotonic() - started, server.rss_mb()))
            hwm = server.peak_mb()
            time.sleep(IDLE_WAIT_S)
            idle_after = server.rss_mb()
            health = call(server.port, "GET", "/health", key=None, timeout=10)[0]
            cost_after = big_text_cost(server, model)
            after_rss = server.rss_mb()
            metrics = call(server.port, "GET", "/metrics", key=None)[1].decode()
            server_5xx = {labels: float(v) for labels, v in re.findall(
                r'^tinyembed_requests_total\{([^}]*status="5\d\d")\} (\S+)$', metrics, re.M)
                if 'route="/ready"' not in labels}  # our own polling before the model loaded
        finally:
            code = server.stop()
            log = server.log_path.read_text(errors="replace")
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    settled = [s for s in samples if s[0] >= WARM_UP_S]
    statuses = Counter()
    for (kind, status), n in load.statuses.items():
        statuses[f"{kind}:{status}"] += n
    return {
        "question": "RSS and correctness of one server under mixed and hostile load (issue 14)",
        "cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_end": loadavg(), "model": model,
        "server_args": server_args,
        "duration_s": duration, "idle_rss_mb": round(idle_rss, 1), "after_rss_mb": round(after_rss, 1),
        "peak_rss_mb": round(max(r for _, r in samples), 1), "peak_hwm_mb": round(hwm, 1),
        "idle_after_load_mb": round(idle_after, 1), "health_after": health,
        "slope_after_2min_mb_per_min": round(slope_mb_per_min(settled), 2) if len(settled) > 2 else None,
        "slope_last_half_mb_per_min": round(slope_mb_per_min(half), 2),
        "refused_503": sum(n for (_, status), n in load.statuses.items() if status == 503),
        "dropped_connections": sum(n for (kind, status), n in load.statuses.items()
                                   if status == 0 and not kind.startswith("slow_reader")),
        "samples": [(round(t), round(r, 1)) for t, r in samples],
        "statuses": dict(sorted(statuses.items())),
        "client_5xx": sum(n for (_, status), n in load.statuses.items() if status >= 500 and status != 503),
        "server_5xx": server_5xx, "leaks": load.leaks, "notes": load.notes,
        "big_text_before": cost_before, "big_text_after": cost_after,
        "tracebacks_in_log": log.count("Traceback"), "exit_code": code,
        "server_cut_slow_readers": log.count("its reply was not read"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of load (default 30)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (overrides --minutes)")
    parser.add_argument("--max-memory", default=None, help="passed to the server, e.g. 200M (unset: its default)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="passed to the server (unset: its default); activations grow with it")
    parser.add_argument("--only", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    args = parser.parse_args(argv)
    extra = ["--max-batch-tokens", str(args.max_batch_tokens)] if args.max_batch_tokens else []
    extra += ["--max-memory", args.max_memory] if args.max_memory else []
    duration = args.duration if args.duration is not None else 60.0 * args.minutes
    report = run(duration, args.model, args.sample_every, extra, tuple(args.only.split(",")))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"soak: {report['model']} for {report['duration_s']:.0f}s on {report['cpu']} ({report['cores']} cores), "
          f"load avg at end {report['loadavg_end']}, server args {report['server_args']}")
    print(f"RSS: idle {report['idle_rss_mb']} MB, peak {report['peak_rss_mb']} MB sampled / {report['peak_hwm_mb']} MB "
          f"VmHWM (goal <= 250, or under --max-memory), idle after the load {report['idle_after_load_mb']} MB "
          f"(goal <= 170), after the last probe {report['after_rss_mb']} MB")
    print(f"slope after the first 2 minutes {report['slope_after_2min_mb_per_min']} MB/min (goal <= 0.2), over the "
          f"last half {report['slope_last_half_mb_per_min']} MB/min; 503s {report['refused_503']}, dropped "
          f"connections {report['dropped_connections']}, /health after: {report['health_after']}")
    print("RSS samples (s, MB): " + ", ".join(f"{t}:{r}" for t, r in report["samples"]))
    for label in ("big_text_before", "big_text_after"):
        cost = report[label]
        print(f"15 MB text ({label[9:]} the load): status {cost['status']}, {cost['seconds']} s wall "
              f"({cost['server_cpu_s']} s server CPU; goal < 1), of which the size itself {cost['size_cost_s']} s "
              f"({cost['size_cost_cpu_s']} s CPU) over a 2000-character text, "
              f"peak +{cost['peak_above_mb']} MB over {cost['rss_before_mb']} MB (goal < 50)")
    print(f"slow readers cut by the server: {report['server_cut_slow_readers']}")
    print(f"5xx: client saw {report['client_5xx']}, server counted {report['server_5xx'] or 0}; tenant leaks: "
          f"{len(report['leaks'])}; tracebacks in the log: {report['tracebacks_in_log']}; exit code {report['exit_code']}")
    print("statuses: " + ", ".join(f"{k}={v}" for k, v in report["statuses"].items()))
    for note in report["notes"]:
        print("  " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
